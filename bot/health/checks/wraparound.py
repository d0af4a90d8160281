"""Wraparound: how close the database's transaction IDs and MultiXact IDs are to the age at which
PostgreSQL must stop accepting writes until it is vacuumed."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

from bot.health.checks.base import CheckContext, CheckReport, Finding, check, ignored

WRAPAROUND_LIMIT = 2**31  # transaction IDs (and multixacts) a database can age before it must stop


@dataclass(frozen=True)
class Counter:
    check: str
    label: str
    database_age: str  # SQL over pg_database
    table_age: str  # SQL over pg_class
    noun: str
    advice: str


XID = Counter(
    "wraparound",
    "Wraparound",
    "age(datfrozenxid)",
    "age(c.relfrozenxid)",
    "transaction ID",
    "Run `VACUUM (FREEZE, VERBOSE)` on the oldest tables, and find what holds the xmin horizon back "
    "(the vacuum horizon check): long transactions, idle-in-transaction sessions, abandoned replication "
    "slots, prepared transactions.",
)
MULTIXACT = Counter(
    "multixact",
    "MultiXact age",
    "mxid_age(datminmxid)",
    "mxid_age(c.relminmxid)",
    "MultiXact ID",
    "Run `VACUUM (FREEZE, VERBOSE)` on the oldest tables. MultiXacts come from row locks shared by several "
    "transactions (foreign-key checks, `SELECT ... FOR SHARE`/`FOR KEY SHARE`); a lower "
    "`autovacuum_multixact_freeze_max_age` makes autovacuum freeze them sooner. Whatever holds the xmin horizon "
    "back (the vacuum horizon check) holds these back too.",
)


def _age_report(conn: Connection, ctx: CheckContext, counter: Counter, warn: int) -> CheckReport:
    age = int(
        conn.execute(
            text(f"SELECT {counter.database_age} FROM pg_database WHERE datname = current_database()")
        ).scalar_one()
    )
    pct = 100.0 * age / WRAPAROUND_LIMIT
    summary = f"oldest {counter.noun} age {age:,} ({pct:.1f}% of the limit)"
    if pct < warn:
        return CheckReport(counter.check, counter.label, "ok", summary)
    # A TOAST table is vacuumed with its table: it counts as that table (named, and ignored, as it is).
    oldest = conn.execute(
        text(
            f"SELECT format('%I.%I', n.nspname, c.relname) AS name,"
            f" greatest({counter.table_age}, {counter.table_age.replace('c.', 'toast.')}) AS age"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " LEFT JOIN pg_class toast ON toast.oid = c.reltoastrelid"
            " WHERE c.relkind IN ('r', 'm') AND " + ignored("n.nspname", "c.relname") + " ORDER BY 2 DESC LIMIT 3"
        ),
        ctx.ignore,
    ).all()
    tables = ", ".join(f"{t.name} ({t.age:,})" for t in oldest)
    finding = Finding(
        check=counter.check,
        object="database",
        severity="critical" if pct >= (warn + 100) / 2 else "warning",
        title=f"{counter.noun} wraparound: {pct:.0f}% of the limit used",
        detail=(
            f"Database {counter.noun} age {age:,} of {WRAPAROUND_LIMIT:,}; warning at {warn}%. Oldest tables: {tables}."
        ),
        advice=counter.advice,
    )
    return CheckReport(counter.check, counter.label, "findings", summary, [finding])


@check("wraparound", "Wraparound", group="maintenance")
def check_wraparound(conn: Connection, ctx: CheckContext) -> CheckReport:
    return _age_report(conn, ctx, XID, ctx.settings.wraparound_warn_pct)


@check("multixact", "MultiXact age", group="maintenance")
def check_multixact(conn: Connection, ctx: CheckContext) -> CheckReport:
    return _age_report(conn, ctx, MULTIXACT, ctx.settings.checks.multixact_warn_pct)
