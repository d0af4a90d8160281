"""Indexes: invalid ones left behind by a failed `CREATE INDEX CONCURRENTLY`."""

from __future__ import annotations

from sqlalchemy import Connection, text

from bot.health.checks.base import CheckContext, CheckReport, Finding, check, safe_query_text


@check("invalid_index", "Invalid indexes", group="maintenance", clear_at_once=True)
def check_invalid_indexes(conn: Connection, ctx: CheckContext) -> CheckReport:
    rows = conn.execute(
        text(
            "SELECT format('%I.%I', n.nspname, c.relname) AS name, pg_get_indexdef(c.oid) AS definition,"
            " pg_relation_size(c.oid) AS bytes"
            " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE NOT i.indisvalid"
            " AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = i.indexrelid)"
            " ORDER BY 1"
        )
    ).all()
    findings = [
        Finding(
            check="invalid_index",
            object=r.name,
            severity="warning",
            title=f"invalid index {r.name}",
            detail=(
                f"`{safe_query_text(r.definition, 250)}` ({r.bytes:,} bytes): a failed `CREATE INDEX CONCURRENTLY` "
                "left it behind; it is maintained on every write but never used."
            ),
            advice=(
                f"`REINDEX INDEX CONCURRENTLY {r.name};`, or `DROP INDEX CONCURRENTLY {r.name};` and create it again."
            ),
            remind=False,
        )
        for r in rows
    ]
    summary = f"{len(rows)} invalid" if rows else "none"
    return CheckReport("invalid_index", "Invalid indexes", "findings" if rows else "ok", summary, findings)
