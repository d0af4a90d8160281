"""Database and table size growth over GROWTH_WINDOW_DAYS, from size samples kept in the bot database.

Each run samples the database's size and its largest tables' (bot/health/history.py keeps at most
one sample per half hour); growth is measured against the oldest sample inside the window, so
the first report comes one run after the bot starts watching. Growth below GROWTH_MIN_MB is
never reported, whatever its share: a small database doubling is not news.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, text

from bot.health.checks.base import MB, CheckContext, CheckReport, Finding, check, duration, ignored, size
from bot.health.history import Point, Sample

LABEL = "Size growth"
DATABASE_KIND = "database_size"
TABLE_KIND = "table_size"
SAMPLED_TABLES = 20
SHOWN_TABLES = 5


def _growth(now: int, then: Point) -> tuple[int, float]:
    grown = now - then.value
    return grown, 100.0 * grown / max(then.value, 1)


@check("size_growth", LABEL, group="fk_indexes")
def check_size_growth(conn: Connection, ctx: CheckContext) -> CheckReport:
    t = ctx.settings.checks
    database = int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
    tables = conn.execute(
        text(
            "SELECT format('%I.%I', n.nspname, c.relname) AS name, pg_total_relation_size(c.oid) AS bytes"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'm', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND n.nspname !~ '^pg_toast' AND " + ignored("n.nspname", "c.relname") + " ORDER BY 2 DESC LIMIT :n"
        ),
        {"n": SAMPLED_TABLES, **ctx.ignore},
    ).all()
    sizes = {r.name: int(r.bytes) for r in tables}
    samples = [Sample(DATABASE_KIND, "database", database)] + [Sample(TABLE_KIND, n, b) for n, b in sizes.items()]
    window = timedelta(days=t.growth_window_days)
    then = ctx.past.oldest(DATABASE_KIND, ["database"], within=window).get("database")
    if then is None:
        summary = f"database {size(database)}; growth is measured from the next run (no earlier sample)"
        return CheckReport("size_growth", LABEL, "ok", summary, samples=samples)
    span = duration((datetime.now(UTC) - then.taken_at).total_seconds())
    grown, pct = _growth(database, then)
    floor = t.growth_min_mb * MB
    past_tables = ctx.past.oldest(TABLE_KIND, list(sizes), within=window)
    table_growth = sorted(
        ((name, *_growth(sizes[name], point), point.value) for name, point in past_tables.items()),
        key=lambda g: g[1],
        reverse=True,
    )
    fast_tables = [g for g in table_growth if g[1] >= floor and g[2] > t.growth_warn_pct]
    summary = f"database {size(database)}, {pct:+.0f}% in {span}"
    database_fast = grown >= floor and pct > t.growth_warn_pct
    if not database_fast and not fast_tables:
        return CheckReport("size_growth", LABEL, "ok", summary, samples=samples)
    top = "; ".join(
        f"{name} {size(before)} → {size(before + g)} ({p:+.0f}%)"
        for name, g, p, before in table_growth[:SHOWN_TABLES]
        if g > 0
    )
    # Measured over the span the samples cover (the oldest inside the window), which is said as it is.
    title = (
        f"database grew {pct:.0f}% in {span}"
        if database_fast
        else f"table {fast_tables[0][0]} grew {fast_tables[0][2]:.0f}% in {span}"
    )
    finding = Finding(
        check="size_growth",
        object="size",
        severity="warning",
        title=title,
        detail=(
            f"The database went from {size(then.value)} to {size(database)} ({pct:+.0f}%, {size(grown)}) in {span}. "
            f"Fastest-growing tables: {top or 'none measured yet'}. Threshold: {t.growth_warn_pct}% in "
            f"{t.growth_window_days} days, at least {size(floor)}."
        ),
        advice=(
            "Is it expected (a launch, a backfill)? If not: look for bloat (the vacuum checks), a table that keeps "
            "everything (tool-call logs, job history: add retention), or a runaway writer. Check the disk headroom "
            "(on RDS: FreeStorageSpace, storage autoscaling)."
        ),
    )
    return CheckReport("size_growth", LABEL, "findings", summary, [finding], samples=samples)
