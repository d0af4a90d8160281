"""Foreign keys whose referencing columns have no index: what makes deletes of parents slow."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from bot.health.checks.base import CheckContext, CheckReport, Finding, check, ignored
from bot.indexes.catalog import covers
from bot.indexes.targets import create_index_action
from bot.slacktext.words import plural

MAX_FK_LINES = 15


DELETE_RULES = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}


def covers_foreign_key(index: str, constraint: str) -> str:
    """SQL: index `index` (a pg_index row) leads with the columns of foreign key `constraint` (pg_constraint),
    by the rule Create index uses for "an equivalent index exists" (bot/indexes/catalog.py)."""
    return f"{index}.indrelid = {constraint}.conrelid AND " + covers(index, f"{constraint}.conkey")


def unindexed_foreign_keys(conn: Connection, ctx: CheckContext) -> list[Any]:
    """Foreign keys whose columns lead no valid index, largest referencing tables first.

    Rows: child, conname, on_delete, parent, child_rows, columns (quoted, comma-separated),
    child_schema, child_table (raw names).
    """
    return conn.execute(
        text(
            "SELECT format('%I.%I', n.nspname, t.relname) AS child, con.conname, con.confdeltype AS on_delete,"
            " ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)"
            "   JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum ORDER BY k.ord)"
            " AS column_names,"
            " n.nspname AS child_schema, t.relname AS child_table,"
            " format('%I.%I', pn.nspname, p.relname) AS parent, greatest(t.reltuples, 0)::bigint AS child_rows,"
            " (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.ord)"
            "    FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)"
            "    JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum) AS columns"
            " FROM pg_constraint con"
            " JOIN pg_class t ON t.oid = con.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace"
            " JOIN pg_class p ON p.oid = con.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace"
            " WHERE con.contype = 'f' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND " + ignored("n.nspname", "t.relname") + " AND NOT EXISTS ("
            "   SELECT 1 FROM pg_index i WHERE " + covers_foreign_key("i", "con") + ")"
            " ORDER BY t.reltuples DESC, 1, 2"
        ),
        ctx.ignore,
    ).all()


@check("fk_without_index", "Foreign keys without an index", group="fk_indexes", clear_at_once=True)
def check_fk_without_index(conn: Connection, ctx: CheckContext) -> CheckReport:
    rows = unindexed_foreign_keys(conn, ctx)
    summary = f"{plural(len(rows), 'foreign key')} without an index" if rows else "every foreign key has an index"
    if not rows:
        return CheckReport("fk_without_index", "Foreign keys without an index", "ok", summary)
    # One alert per stage, not one per key: a schema can lack dozens, and they are fixed together.
    lines = [
        f"• `CREATE INDEX CONCURRENTLY ON {r.child} ({r.columns});` for `{r.conname}` → {r.parent} "
        f"(ON DELETE {DELETE_RULES.get(r.on_delete, r.on_delete)}, ~{plural(r.child_rows, 'row')})"
        for r in rows[:MAX_FK_LINES]
    ]
    if len(rows) > MAX_FK_LINES:
        lines.append(f"• … and {len(rows) - MAX_FK_LINES} more on smaller tables")
    finding = Finding(
        check="fk_without_index",
        object="database",
        severity="warning",
        title=f"{len(rows)} foreign key{'s' if len(rows) != 1 else ''} without an index",
        detail="Largest tables first:\n" + "\n".join(lines),
        advice=(
            "Every row deleted from the parent scans the child table on its key; without an index that is a "
            "sequential scan per row, which is what makes deletes slow. Create the indexes above, outside any "
            "transaction, largest tables first."
        ),
        remind=False,
        actions=tuple(
            create_index_action(
                r.child_schema, r.child_table, r.column_names, label=f"Create index: {r.child} ({r.columns})"
            )
            for r in rows[:MAX_FK_LINES]
        ),
    )
    return CheckReport("fk_without_index", "Foreign keys without an index", "findings", summary, [finding])
