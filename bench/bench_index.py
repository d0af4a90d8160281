"""Create index on the 1,000,000-tool-call server, the schema as it is (its two foreign-key indexes missing).

The impact report's predicted delete time before, the bot's own `CREATE INDEX CONCURRENTLY` of every
foreign key the delete scans without an index (bot/indexes/build.py: the Create index button's code),
the predicted time after, and the delete measured for real after (on a throwaway copy).
"""

from __future__ import annotations

import time

from bench.common import BenchContext, bench_stage
from bot.deletion.execute import execute_delete
from bot.deletion.impact import ImpactReport, plan_and_measure
from bot.indexes.build import BuildProgress, build
from bot.indexes.naming import index_name
from bot.platform.demo_data import BENCH_SPEC
from bot.stages import Stage

SLUG = BENCH_SPEC.big_slug
LOCK_TIMEOUT_MS = 3_000
BUILD_TIMEOUT_MS = 3_600_000


def duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _impact(stage: Stage) -> ImpactReport:
    with stage.read() as conn:
        return plan_and_measure(conn, SLUG)[1]


def run(ctx: BenchContext) -> None:
    url = ctx.clone("index")
    stage = bench_stage(ctx, url)
    before = _impact(stage)
    keys = ", ".join(f"{k.table}({', '.join(k.columns)}) ~{duration(k.estimated_s)}" for k in before.slow_keys)
    print(f"predicted delete, schema as it is: {duration(before.estimated_s)} (unindexed: {keys})", flush=True)
    for key in before.slow_keys:
        updates: list[BuildProgress] = []
        name = index_name(key.name, key.columns)
        built = build(
            stage,
            key.schema,
            key.name,
            key.columns,
            name,
            lock_timeout_ms=LOCK_TIMEOUT_MS,
            statement_timeout_ms=BUILD_TIMEOUT_MS,
            work_name=stage.work_name("bench-index"),
            progress=updates.append,
        )
        phases = sorted({u.phase for u in updates})
        print(
            f"built {built.name} (CREATE INDEX CONCURRENTLY) in {duration(built.seconds)}, "
            f"{built.bytes / 2**20:.1f} MB; "
            f"{len(updates)} progress reads ({', '.join(phases) or 'too quick to see'})",
            flush=True,
        )
    after = _impact(stage)
    print(
        f"predicted delete with the bot-built indexes: {duration(after.estimated_s)} "
        f"({before.estimated_s / max(after.estimated_s, 1e-9):,.0f}x less); unindexed keys left in its scope: "
        f"{len(after.slow_keys)}",
        flush=True,
    )
    started = time.perf_counter()
    result = execute_delete(
        stage,
        SLUG,
        server_key=after.server_key,
        expected=after.snapshot,
        budget_s=3600,
        lock_timeout_ms=LOCK_TIMEOUT_MS,
    )
    measured = time.perf_counter() - started
    stage.dispose()
    ratio = measured / max(after.estimated_s, 1e-9)
    verdict = "met" if 0.5 <= ratio <= 2 else "MISSED"
    print(
        f"measured delete after: {result.total_rows:,} rows in {duration(measured)} "
        f"(predicted {duration(after.estimated_s)}: ratio {ratio:.2f}x, target within 2x: {verdict})",
        flush=True,
    )
