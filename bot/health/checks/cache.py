"""Buffer cache hit ratio of the large tables: reads that had to go to disk (or the OS cache).

Small tables are always cached and would hide the large ones, so only tables over
CACHE_HIT_MIN_TABLE_MB count, their heap and index blocks together, since the statistics were reset.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

from bot.health.checks.base import MB, CheckContext, CheckReport, Finding, check, ignored, size

LABEL = "Cache hit ratio"
MAX_TABLES = 5


@check("cache_hit", LABEL, group="maintenance")
def check_cache_hit(conn: Connection, ctx: CheckContext) -> CheckReport:
    t = ctx.settings.checks
    rows = conn.execute(
        text(
            # relpages (as of the last VACUUM or ANALYZE) rather than pg_relation_size: no file is looked at.
            "SELECT format('%I.%I', s.schemaname, s.relname) AS name,"
            " c.relpages::bigint * current_setting('block_size')::int AS bytes,"
            " coalesce(s.heap_blks_hit, 0) + coalesce(s.idx_blks_hit, 0) AS hit,"
            " coalesce(s.heap_blks_read, 0) + coalesce(s.idx_blks_read, 0) AS read"
            " FROM pg_statio_user_tables s JOIN pg_class c ON c.oid = s.relid"
            " WHERE c.relpages::bigint * current_setting('block_size')::int >= :min_bytes AND "
            + ignored("s.schemaname", "s.relname")
            + " ORDER BY bytes DESC"
        ),
        {"min_bytes": t.cache_hit_min_table_mb * MB, **ctx.ignore},
    ).all()
    hit = sum(int(r.hit) for r in rows)
    read = sum(int(r.read) for r in rows)
    over = f"tables over {size(t.cache_hit_min_table_mb * MB)}"
    if not rows or hit + read == 0:
        return CheckReport("cache_hit", LABEL, "ok", f"no reads of {over} yet" if rows else f"no {over}")
    ratio = 100.0 * hit / (hit + read)
    summary = f"{ratio:.2f}% of block reads of {len(rows)} {over} found in shared buffers"
    if ratio >= t.cache_hit_warn_pct:
        return CheckReport("cache_hit", LABEL, "ok", summary)
    largest = "; ".join(
        f"{r.name} {size(r.bytes)}: {100.0 * r.hit / max(r.hit + r.read, 1):.1f}%" for r in rows[:MAX_TABLES]
    )
    finding = Finding(
        check="cache_hit",
        object="tables",
        severity="warning",
        title=f"cache hit ratio {ratio:.1f}% on the {over}",
        detail=(
            f"{read:,} of {hit + read:,} block reads of the {over} missed shared buffers since the statistics were "
            f"reset (threshold {t.cache_hit_warn_pct:g}%). Largest: {largest}."
        ),
        advice=(
            "The working set does not fit in memory: look at the slow queries for sequential scans of these tables "
            "(a missing index reads the whole table), archive or partition old rows, or give the server more memory "
            "(`shared_buffers` is about 25% of RAM; on RDS, a larger instance class)."
        ),
    )
    return CheckReport("cache_hit", LABEL, "findings", summary, [finding])
