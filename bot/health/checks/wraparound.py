"""Transaction-ID wraparound: how close the database is to the age at which PostgreSQL must stop."""

from __future__ import annotations

from sqlalchemy import Connection, text

from bot.health.checks.base import CheckContext, CheckReport, Finding, check

WRAPAROUND_LIMIT = 2**31  # transaction IDs (and multixacts) a database can age before it must stop


@check("wraparound", "Wraparound", group="maintenance")
def check_wraparound(conn: Connection, ctx: CheckContext) -> CheckReport:
    row = conn.execute(
        text(
            "SELECT datname, age(datfrozenxid) AS xid_age, mxid_age(datminmxid) AS mxid_age"
            " FROM pg_database WHERE datname = current_database()"
        )
    ).one()
    worst = max(row.xid_age, row.mxid_age)
    pct = 100.0 * worst / WRAPAROUND_LIMIT
    summary = f"oldest transaction ID age {row.xid_age:,}, multixact age {row.mxid_age:,} ({pct:.1f}% of the limit)"
    warn = ctx.settings.wraparound_warn_pct
    if pct < warn:
        return CheckReport("wraparound", "Wraparound", "ok", summary)
    oldest = conn.execute(
        text(
            "SELECT format('%I.%I', n.nspname, c.relname) AS name, age(c.relfrozenxid) AS age"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'm', 't') ORDER BY age(c.relfrozenxid) DESC LIMIT 3"
        )
    ).all()
    tables = ", ".join(f"{t.name} ({t.age:,})" for t in oldest)
    finding = Finding(
        check="wraparound",
        object="database",
        severity="critical" if pct >= (warn + 100) / 2 else "warning",
        title=f"transaction ID wraparound: {pct:.0f}% of the limit used",
        detail=(
            f"Database age {row.xid_age:,} transactions, {row.mxid_age:,} multixacts, of {WRAPAROUND_LIMIT:,}; "
            f"warning at {warn}%. Oldest tables: {tables}."
        ),
        advice=(
            "Run `VACUUM (FREEZE, VERBOSE)` on the oldest tables, and find what holds the xmin horizon back: "
            "long transactions, idle-in-transaction sessions, abandoned replication slots, prepared transactions."
        ),
    )
    return CheckReport("wraparound", "Wraparound", "findings", summary, [finding])
