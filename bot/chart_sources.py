"""Which chart goes with which answer: `/mcp stats`, `/mcp health`, a slow-query alert's thread.

Each function reads the points (the stage in a read-only transaction, or the bot database) and
renders them; None means there is nothing worth drawing (fewer than MIN_POINTS intervals). They run
after the numbers have been posted, never on the ack path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bot.botdb import reading
from bot.charts import Chart, daily_usage_chart, mean_time_chart
from bot.health import statement_history
from bot.health.monitor import HealthSummary
from bot.platform import servers
from bot.runtime import Runtime
from bot.service import CommandRequest

SLOW_QUERY_CHECK = "slow_queries"
ChartSource = Callable[[Runtime, CommandRequest, Any], Chart | None]
CHARTS: dict[str, ChartSource] = {}


def chart_source(verb: str) -> Callable[[ChartSource], ChartSource]:
    def register(func: ChartSource) -> ChartSource:
        CHARTS[verb] = func
        return func

    return register


@chart_source("stats")
def stats_chart(runtime: Runtime, request: CommandRequest, stats: servers.ServerStats) -> Chart | None:
    assert request.stage is not None
    # The window the numbers were counted in, not one a moment later: the bars add up to the same totals.
    now_ms = round(stats.since.timestamp() * 1000) + stats.days * servers.DAY_MS
    with request.stage.read() as conn:
        usage = servers.daily_usage(conn, stats.server.slug, days=stats.days, now_ms=now_ms)
    return daily_usage_chart(usage.slug, request.stage.name, usage.days, usage.tool_calls, usage.sessions)


def queryid_of(alert_object: str) -> int | None:
    """The queryid of a slow-query finding's object (`queryid 123`)."""
    word, _, number = alert_object.partition(" ")
    return int(number) if word == "queryid" and number.lstrip("-").isdigit() else None


def slow_query_chart(runtime: Runtime, stage: str, queryid: int) -> Chart | None:
    with reading(runtime.bot_engine) as conn:
        points = statement_history.mean_series(conn, stage, queryid)
    return mean_time_chart(f"queryid {queryid}", stage, points)


@chart_source("health")
def health_chart(runtime: Runtime, request: CommandRequest, summary: HealthSummary) -> Chart | None:
    """The slowest query of the round (the first slow-query finding, critical before warning)."""
    slow = [f for f in summary.round.findings if f.check == SLOW_QUERY_CHECK]
    slow.sort(key=lambda f: f.severity != "critical")
    for finding in slow:
        queryid = queryid_of(finding.object)
        if queryid is not None:
            return slow_query_chart(runtime, summary.stage, queryid)
    return None
