"""A database error in words: which constraint, table, privilege or trigger message, never a bare SQLSTATE.

Only the parts of the server's diagnostics that name schema objects (constraint, table, column) or
that a schema's own code wrote (a trigger's RAISE text) are shown, scrubbed; the server's full
message can name hosts and roles and is not.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from bot.deletion.catalog import Catalog, TableRef
from bot.errors import QueryTimeout
from bot.pii import scrub
from bot.stage_errors import lock_wait_table

MAX_TEXT = 300


def _diag(exc: BaseException) -> tuple[str, Any]:
    orig = getattr(exc, "orig", None) or exc
    return getattr(orig, "sqlstate", None) or "", getattr(orig, "diag", None)


def _field(diag: Any, name: str) -> str:
    value = getattr(diag, name, None) if diag is not None else None
    return scrub(str(value))[:MAX_TEXT] if value else ""


def _where(table: str, schema: str) -> str:
    if not table:
        return ""
    return f" on `{table}`" if schema in ("", "public") else f" on `{schema}.{table}`"


def describe(exc: BaseException, *, at_commit: bool = False) -> str:
    """What the database refused, in words (for a delete, a dry run or a restore)."""
    sqlstate, diag = _diag(exc)
    constraint = _field(diag, "constraint_name")
    table = _where(_field(diag, "table_name"), _field(diag, "schema_name"))
    column = _field(diag, "column_name")
    primary = _field(diag, "message_primary")
    when = " when committing (a deferred constraint)" if at_commit else ""
    if sqlstate == "23503":
        detail = _field(diag, "message_detail")
        return f"the database refused{when}: foreign key `{constraint}`{table} would be violated" + (
            f" ({detail})" if detail else ""
        )
    if sqlstate == "23502":
        return f"the database refused{when}: column `{column}`{table} may not be NULL"
    if sqlstate == "23505":
        return f"the database refused{when}: unique constraint `{constraint}`{table} would be violated"
    if sqlstate == "23514":
        return f"the database refused{when}: check constraint `{constraint}`{table} would be violated"
    if sqlstate == "23P01":
        return f"the database refused{when}: exclusion constraint `{constraint}`{table} would be violated"
    if sqlstate.startswith("23"):
        return f"the database refused{when}: constraint `{constraint}`{table} would be violated"
    if sqlstate.startswith("P0"):
        context = _field(diag, "context").splitlines()
        source = f" ({context[0]})" if context else ""
        return f"a trigger or function refused{when}: {primary or 'no message'}{source}"
    if sqlstate == "42501":
        return f"the database refused: {primary or 'permission denied'} (the bot's role lacks a privilege)"
    if sqlstate in ("40001", "40P01"):
        return "the data changed while it ran (a concurrent write or deadlock); nothing was changed"
    if sqlstate == "55P03":
        locked = lock_wait_table(_field(diag, "context"))
        where = f" on `{locked}`" if locked else ""
        return f"a lock{where} could not be taken within lock_timeout (another session holds it)"
    if sqlstate == "57014":
        return "a statement ran past its time limit and was cancelled; nothing was changed"
    if sqlstate.startswith("22"):
        return f"the database rejected a value{table}: {primary or 'invalid data'}"
    return f"the database reported an error{table}: {primary or 'no message'}"


def rolled_back(exc: QueryTimeout, stage: str) -> QueryTimeout:
    """A delete that waited past lock_timeout or ran out of its budget: the stage's words, plus what it means."""
    sqlstate, _ = _diag(exc.__cause__ or exc)
    hint = (
        f"; try again once it is released (`/mcp sessions --stage {stage}` shows long and idle-in-transaction sessions)"
        if sqlstate == "55P03"
        else ""
    )
    return QueryTimeout(f"{exc.message}; nothing was deleted (the transaction was rolled back){hint}")


def short_count_causes(conn: Connection, catalog: Catalog, table: TableRef, action: str) -> str:
    """What can make a row count short: BEFORE row triggers that return NULL, and rules (DO INSTEAD)."""
    event = "DELETE" if action == "delete" else "UPDATE"
    relations = catalog.relations(table)
    triggers = [
        f"{t.name} on {t.table}" for t in catalog.firing(table, (event,)) if t.timing == "BEFORE" and t.level == "ROW"
    ]
    rules = conn.execute(
        text(
            "SELECT r.rulename, n.nspname, c.relname FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE r.ev_type = :ev AND r.is_instead"
            " AND (n.nspname, c.relname) IN (SELECT * FROM unnest(CAST(:schemas AS text[]), CAST(:names AS text[])))"
            " ORDER BY 2, 3, 1"
        ),
        {
            "ev": "4" if event == "DELETE" else "2",
            "schemas": [r.schema for r in relations],
            "names": [r.name for r in relations],
        },
    ).all()
    causes = []
    if triggers:
        causes.append(f"a BEFORE {event} trigger that returns NULL skips its row: {', '.join(triggers)}")
    if rules:
        names = ", ".join(f"{r[0]} on {TableRef(r[1], r[2])}" for r in rules)
        causes.append(f"a rule ON {event} DO INSTEAD replaces the statement: {names}")
    return f" ({'; '.join(causes)})" if causes else ""
