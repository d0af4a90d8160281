"""Charts: render time per chart (target <= 300 ms) and the daily-usage query behind /mcp stats' chart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine

from bench.common import BenchContext, best_of
from bot.charts import daily_usage_chart, mean_time_chart
from bot.config import parse_database_url
from bot.platform.servers import daily_usage

DAYS = 30
INTERVALS = 48  # bot/health/statement_history.py: SERIES_POINTS
TARGET_MS = 300.0


def _verdict(seconds: float) -> str:
    return (
        f"{seconds * 1000:.0f} ms (target <= {TARGET_MS:.0f} ms: {'met' if seconds * 1000 <= TARGET_MS else 'MISSED'})"
    )


def run(ctx: BenchContext) -> None:
    url = ctx.clone("charts")
    engine = create_engine(parse_database_url("bench", url))
    try:
        with engine.connect() as conn:
            query = best_of(lambda: daily_usage(conn, ctx.spec.big_slug, days=DAYS), repeat=3)
            usage = daily_usage(conn, ctx.spec.big_slug, days=DAYS)
    finally:
        engine.dispose()
    print(f"daily usage query ({DAYS} days, {sum(usage.tool_calls):,} tool calls): {query * 1000:.1f} ms")

    def stats() -> None:
        daily_usage_chart(usage.slug, "bench", usage.days, usage.tool_calls, usage.sessions)

    start = datetime.now(UTC) - timedelta(minutes=5 * INTERVALS)
    points = [(start + timedelta(minutes=5 * i), 40.0 + (i * 37) % 90) for i in range(INTERVALS)]

    def slow() -> None:
        mean_time_chart("queryid 1234567890", "bench", points)

    chart = daily_usage_chart(usage.slug, "bench", usage.days, usage.tool_calls, usage.sessions)
    print(f"stats chart ({len(usage.days)} days, {len(chart.png):,} bytes PNG): render {_verdict(best_of(stats))}")
    print(f"slow-query chart ({INTERVALS} intervals): render {_verdict(best_of(slow))}")
