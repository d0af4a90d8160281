"""The health verbs: `/mcp health`, `/mcp slow-queries`, `/mcp alerts`; results are plain data."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bot.botdb import reading
from bot.health import explain, statement_store, statements
from bot.health.alerts import AlertView
from bot.health.monitor import HealthSummary
from bot.runtime import Runtime
from bot.service import CommandRequest, operation


@dataclass(frozen=True)
class SlowQueryRow:
    queryid: int
    calls: int
    total_ms: float
    mean_ms: float
    slow: bool
    text: str


@dataclass(frozen=True)
class SlowQueriesResult:
    stage: str
    interval_start: datetime | None
    interval_end: datetime | None
    statements: int  # how many distinct statements ran in the interval (of those kept)
    rows: list[SlowQueryRow]
    threshold_ms: int
    min_calls: int
    snapshot_every_s: int  # 0: the scheduled checks are off, `/mcp health` takes the snapshots
    note: str | None = None


@dataclass(frozen=True)
class AlertsResult:
    stage: str | None
    alerts: list[AlertView]


@operation("health")
def run_health(runtime: Runtime, request: CommandRequest) -> HealthSummary:
    assert request.stage is not None
    return runtime.health.run_now(request.stage)


@operation("slow-queries")
def run_slow_queries(runtime: Runtime, request: CommandRequest) -> SlowQueriesResult:
    stage = request.stage
    assert stage is not None
    h = runtime.settings.health
    with reading(runtime.bot_engine) as conn:
        stored = statement_store.load(conn, stage.name)
    interval = stored.interval if stored else None
    top = interval.queries[: request.parsed.flags["limit"]] if interval else []
    with stage.read() as conn:
        missing = statements.unavailable(conn)
        texts = statements.query_texts(conn, [q.queryid for q in top]) if top and not missing else {}
    note = None
    if missing:
        note = "pg_stat_statements is unavailable on this stage. " + statements.unavailable_advice(
            missing.kind, missing.version
        )
    elif stored is None:
        note = (
            "No snapshot yet: the scheduled slow-query check takes the first, and measures from the next."
            if h.enabled
            else "No snapshot yet: the scheduled checks are off (HEALTH_CHECKS=off), so `/mcp health` takes the "
            "snapshots; the interval between two of them is measured."
        )
    elif interval is None:
        taker = "" if h.enabled else " (scheduled checks are off: the next `/mcp health` takes it)"
        note = (
            f"One snapshot so far ({stored.snapshot.taken_at:%H:%M UTC}); the first interval ends with the next{taker}."
        )
    rows = [
        SlowQueryRow(
            queryid=q.queryid,
            calls=q.calls,
            total_ms=q.total_ms,
            mean_ms=q.mean_ms,
            slow=q.calls >= h.slow_query_min_calls and q.mean_ms > h.slow_query_ms,
            text=texts.get(q.queryid, "(query text not available)"),
        )
        for q in top
    ]
    return SlowQueriesResult(
        stage=stage.name,
        interval_start=interval.start if interval else None,
        interval_end=interval.end if interval else None,
        statements=len(interval.queries) if interval else 0,
        rows=rows,
        threshold_ms=h.slow_query_ms,
        min_calls=h.slow_query_min_calls,
        snapshot_every_s=h.slow_query_interval_s if h.enabled else 0,
        note=note,
    )


@operation("alerts")
def run_alerts(runtime: Runtime, request: CommandRequest) -> AlertsResult:
    stage = request.stage.name if request.stage else None
    return AlertsResult(stage=stage, alerts=runtime.health.book.open_alerts(stage))


@operation("explain")
def run_explain(runtime: Runtime, request: CommandRequest) -> explain.ExplainResult:
    assert request.stage is not None
    queryid = explain.parse_queryid(request.parsed.args["queryid"])
    return explain.explain(request.stage, runtime.settings, queryid)
