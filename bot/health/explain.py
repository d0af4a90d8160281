"""Explain a query from pg_stat_statements: its generic plan, never executed, and what a DBA reads first.

The statement is the extension's normalised text (constants as `$1`, `$2`, ...), so there are no
values to plan with: PostgreSQL 16+ plans it with `EXPLAIN (GENERIC_PLAN)`; before 16, it is
`PREPARE`d with parameters of unknown type (the server infers them) and `EXPLAIN EXECUTE`d with
NULLs under `plan_cache_mode = force_generic_plan`, so the NULLs play no part in the plan. Never
`ANALYZE`: nothing runs. It happens on a connection of its own (`mcp-ops/explain/<stage>`), in a
read-only transaction with the health checks' short statement timeout, rolled back, and the
connection is closed after (taking any prepared statement with it).

What cannot be planned says so: utility statements and DDL, text that PostgreSQL cannot parse
(normalisation can produce such text, e.g. `interval $1`), and text cut short by
`track_activity_query_size`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from bot.config import Settings
from bot.errors import CommandError, NotFound, UserFacingError
from bot.health import statements
from bot.health.checks.base import CheckContext, safe_query_text
from bot.health.checks.foreign_keys import unindexed_foreign_keys
from bot.stages import Stage

COMPONENT = "explain"
LARGE_TABLE_ROWS = 10_000  # a sequential scan of a table this large is worth a look
MAX_SEQ_SCANS = 5
PREPARED_NAME = "mcp_ops_explain"
GENERIC_PLAN_VERSION = 160000
EXPLAINABLE = ("select", "insert", "update", "delete", "merge", "values", "table", "with")
_COMMENTS = re.compile(r"\A(?:\s+|--[^\n]*\n?|/\*.*?\*/)*", re.DOTALL)
_FIRST_WORD = re.compile(r"\(*\s*([A-Za-z]+)")


class CannotExplain(UserFacingError):
    """The statement cannot be planned: the message says why."""

    outcome = "refused"


@dataclass(frozen=True)
class SeqScan:
    table: str
    table_rows: int  # pg_class.reltuples
    plan_rows: int  # estimated rows out of the scan
    filter: str | None


@dataclass(frozen=True)
class Costliest:
    node: str
    on: str | None
    cost: float  # its own, without its children's
    share: float  # of the plan's total cost, in percent


@dataclass(frozen=True)
class IndexHint:
    table: str
    columns: str
    constraint: str
    create: str


@dataclass(frozen=True)
class ExplainResult:
    stage: str
    queryid: int
    query: str  # shown: literals blanked, scrubbed, short
    method: str
    server_version: str
    total_cost: float
    plan_rows: int
    seq_scans: list[SeqScan]
    costliest: Costliest | None
    hints: list[IndexHint]
    plan: Any = field(repr=False)  # EXPLAIN (FORMAT JSON)'s document

    def plan_json(self) -> str:
        """The whole plan, as EXPLAIN (VERBOSE, FORMAT JSON) gave it (explain.dalibo.com and others read it)."""
        return json.dumps(self.plan, indent=2) + "\n"


def parse_queryid(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not -(2**63) <= value < 2**63:
        raise CommandError(
            f"`{raw[:30]}` is not a queryid: use the number `/mcp slow-queries` shows", usage="/mcp explain <queryid>"
        )
    return value


def refusal(statement: str) -> str | None:
    """Why `statement` cannot be planned without running anything, or None when it may be tried."""
    body = _COMMENTS.sub("", statement)
    match = _FIRST_WORD.match(body)
    word = match.group(1).lower() if match else ""
    if word not in EXPLAINABLE:
        shown = word.upper() or "this statement"
        return (
            f"`{shown}` is a utility statement or DDL: only SELECT, INSERT, UPDATE, DELETE, MERGE and VALUES "
            "have a plan"
        )
    return None


def _statement(conn: Connection, queryid: int) -> str:
    missing = statements.unavailable(conn)
    if missing is not None:
        raise CannotExplain(
            "pg_stat_statements is unavailable on this stage: "
            + statements.unavailable_advice(missing.kind, missing.version)
        )
    row = conn.execute(
        text(
            "SELECT query FROM pg_stat_statements(true) WHERE queryid = :q AND toplevel"
            " AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) LIMIT 1"
        ),
        {"q": queryid},
    ).first()
    if row is None or not row.query or row.query == "<insufficient privilege>":
        raise NotFound(
            f"queryid {queryid} is not in pg_stat_statements of this database (evicted, reset, another "
            "database, or hidden from this role without pg_read_all_stats)"
        )
    return str(row.query).strip().rstrip(";")


def _driver(conn: Connection, sql: str) -> Any:
    """Run `sql` as given: the statement's own text must not go through any parameter parsing."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql)
        return cursor.fetchone() if cursor.description else None
    except psycopg.Error as exc:  # as SQLAlchemy would have wrapped it, for the callers and the stage's deadline
        raise DBAPIError.instance(sql, None, exc, psycopg.Error) from exc
    finally:
        cursor.close()


def _plan(conn: Connection, statement: str, version: int) -> tuple[Any, str]:
    if version >= GENERIC_PLAN_VERSION:
        row = _driver(conn, "EXPLAIN (GENERIC_PLAN, VERBOSE, FORMAT JSON) " + statement)
        return row[0], "EXPLAIN (GENERIC_PLAN)"
    _driver(conn, "SET LOCAL plan_cache_mode = force_generic_plan")
    _driver(conn, f"PREPARE {PREPARED_NAME} AS " + statement)
    params = conn.execute(
        text("SELECT cardinality(parameter_types) FROM pg_prepared_statements WHERE name = :n"), {"n": PREPARED_NAME}
    ).scalar_one()
    nulls = f"({', '.join(['NULL'] * params)})" if params else ""
    row = _driver(conn, f"EXPLAIN (VERBOSE, FORMAT JSON) EXECUTE {PREPARED_NAME}{nulls}")
    return row[0], "PREPARE and EXPLAIN EXECUTE under plan_cache_mode = force_generic_plan"


def _nodes(node: dict[str, Any], parent: dict[str, Any] | None = None) -> Iterator[tuple[dict[str, Any], Any]]:
    yield node, parent
    for child in node.get("Plans", []):
        yield from _nodes(child, node)


def _qualified(node: dict[str, Any]) -> str | None:
    relation = node.get("Relation Name")
    if relation is None:
        return None
    schema = node.get("Schema")
    return f"{schema}.{relation}" if schema else relation


def _costliest(root: dict[str, Any]) -> Costliest | None:
    total = float(root.get("Total Cost") or 0)
    best: tuple[float, dict[str, Any]] | None = None
    for node, _ in _nodes(root):
        own = float(node.get("Total Cost") or 0) - sum(float(c.get("Total Cost") or 0) for c in node.get("Plans", []))
        if best is None or own > best[0]:
            best = (own, node)
    if best is None:
        return None
    own, node = best
    on = _qualified(node) or node.get("Index Name")
    return Costliest(node["Node Type"], on, round(max(own, 0.0), 2), round(100.0 * own / total, 1) if total else 0.0)


def _conditions(node: dict[str, Any], parent: dict[str, Any] | None) -> str:
    """The conditions a scan is asked to meet: its own filter, and the join condition it feeds."""
    keys = ("Filter", "Index Cond", "Recheck Cond", "Hash Cond", "Merge Cond", "Join Filter")
    parts = [str(node.get(k)) for k in keys if node.get(k)]
    if parent is not None:
        parts += [str(parent.get(k)) for k in keys if parent.get(k)]
    return " ".join(parts)


def summarise(
    conn: Connection, ctx: CheckContext, plan: Any
) -> tuple[list[SeqScan], Costliest | None, list[IndexHint]]:
    root = plan[0]["Plan"]
    scans = [(node, parent) for node, parent in _nodes(root) if node.get("Node Type") == "Seq Scan"]
    tables = sorted({name for node, _ in scans if (name := _qualified(node))})
    sizes: dict[str, int] = {}
    if tables:
        sizes = {
            r.name: int(max(r.reltuples, 0))
            for r in conn.execute(
                text(
                    "SELECT n.nspname || '.' || c.relname AS name, c.reltuples FROM pg_class c"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname || '.' || c.relname = ANY (CAST(:tables AS text[]))"
                ),
                {"tables": tables},
            )
        }
    seq_scans = sorted(
        (
            SeqScan(name, sizes.get(name, 0), int(node.get("Plan Rows") or 0), node.get("Filter"))
            for node, _ in scans
            if (name := _qualified(node)) and sizes.get(name, 0) >= LARGE_TABLE_ROWS
        ),
        key=lambda s: s.table_rows,
        reverse=True,
    )[:MAX_SEQ_SCANS]
    hints: list[IndexHint] = []
    if scans:
        missing = unindexed_foreign_keys(conn, ctx)
        for node, parent in scans:
            name = _qualified(node)
            conditions = _conditions(node, parent)
            for fk in missing:
                if f"{fk.child_schema}.{fk.child_table}" != name or any(h.constraint == fk.conname for h in hints):
                    continue
                columns = [c.strip().strip('"') for c in fk.columns.split(",")]
                if all(re.search(rf"\b{re.escape(c)}\b", conditions) for c in columns):
                    hints.append(
                        IndexHint(
                            fk.child,
                            fk.columns,
                            fk.conname,
                            f"CREATE INDEX CONCURRENTLY ON {fk.child} ({fk.columns});",
                        )
                    )
    return seq_scans, _costliest(root), hints


def explain(stage: Stage, settings: Settings, queryid: int) -> ExplainResult:
    """The generic plan of pg_stat_statements entry `queryid` on `stage`; raises CannotExplain, NotFound."""
    ctx = CheckContext(stage=stage.name, settings=settings.health)
    with stage.read(statement_timeout_ms=settings.health.statement_timeout_ms, component=COMPONENT) as conn:
        statement = _statement(conn, queryid)
        reason = refusal(statement)
        if reason is not None:
            raise CannotExplain(f"queryid {queryid} cannot be explained: {reason}.")
        version = ctx.server_version(conn)
        shown_version = str(conn.execute(text("SHOW server_version")).scalar_one()).split()[0]
        try:
            with conn.begin_nested():
                plan, method = _plan(conn, statement, version)
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            limit = int(
                conn.execute(
                    text("SELECT setting::int FROM pg_settings WHERE name = 'track_activity_query_size'")
                ).scalar_one()
            )
            raise CannotExplain(_planning_error(queryid, exc, statement, limit)) from None
        seq_scans, costliest, hints = summarise(conn, ctx, plan)
        conn.rollback()  # nothing was written; nothing is kept
    root = plan[0]["Plan"]
    return ExplainResult(
        stage=stage.name,
        queryid=queryid,
        query=safe_query_text(statement, 500),
        method=method,
        server_version=shown_version,
        total_cost=float(root.get("Total Cost") or 0),
        plan_rows=int(root.get("Plan Rows") or 0),
        seq_scans=seq_scans,
        costliest=costliest,
        hints=hints,
        plan=plan,
    )


def _planning_error(queryid: int, exc: DBAPIError, statement: str, limit_bytes: int) -> str:
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    primary = (getattr(getattr(exc.orig, "diag", None), "message_primary", None) or "").strip()
    # pg_stat_activity keeps at most track_activity_query_size - 1 bytes, cut on a character boundary (up to 4
    # bytes earlier); a statement of any other length that does not parse is not cut short, only unparsable.
    if sqlstate == "42601" and limit_bytes - 4 <= len(statement.encode()) <= limit_bytes - 1:
        return (
            f"queryid {queryid} cannot be prepared: its text is cut short at {limit_bytes - 1:,} bytes "
            "(`track_activity_query_size`); raise that setting (it needs a restart) to keep whole statements"
        )
    if sqlstate == "57014":
        return f"planning queryid {queryid} ran past the time limit; nothing was run"
    if sqlstate == "55P03":
        return f"queryid {queryid} could not be planned: a table it reads is locked (lock timeout); try again"
    if sqlstate == "42601":
        return (
            f"queryid {queryid} cannot be prepared: {primary or 'syntax error'}. pg_stat_statements' normalised "
            "text is not always valid SQL (a constant of a typed literal such as `interval '1 day'` becomes "
            "`interval $1`)"
        )
    if sqlstate in ("42883", "42725", "42804"):  # no such operator or function, ambiguous, mismatched types
        return (
            f"queryid {queryid} cannot be prepared: {primary or 'its types do not fit'}. pg_stat_statements' "
            "normalised text keeps no type for its constants (`$1`, `$2`, ...): PostgreSQL infers them from their "
            "use, and here its guess does not fit (`$1 + $2` has no known type; `ARRAY[$1, $2]` becomes `text[]`)"
        )
    if sqlstate == "42P18":
        return f"queryid {queryid} cannot be prepared: {primary} (a parameter's type cannot be inferred from its use)"
    return f"queryid {queryid} cannot be prepared: {primary or 'PostgreSQL refused it'} (SQLSTATE {sqlstate or '?'})"
