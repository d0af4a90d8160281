"""Prometheus metrics: counters defined once for every module that counts something, and
gauges read at scrape time from the bot database and the connection pools.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401 - the type /metrics answers with
from prometheus_client.exposition import generate_latest
from sqlalchemy import Connection, Engine, column, func, inspect, select, table
from sqlalchemy.exc import SQLAlchemyError

from bot.botdb import reading

log = logging.getLogger(__name__)

registry = CollectorRegistry(auto_describe=True)

commands_total = Counter(
    "mcp_ops_commands_total", "Slash commands handled, by verb and outcome", ["verb", "outcome"], registry=registry
)
ack_latency_seconds = Histogram(
    "mcp_ops_ack_latency_seconds",
    "Time from receiving a Slack request to acknowledging it",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0),
    registry=registry,
)
command_duration_seconds = Histogram(
    "mcp_ops_command_duration_seconds", "Time to complete a command after its ack", ["verb"], registry=registry
)
http_refused_total = Counter(
    "mcp_ops_http_refused_total",
    "Slack requests refused before any listener ran, by HTTP status",
    ["status"],
    registry=registry,
)

stage_latency_seconds = Gauge(
    "mcp_ops_stage_latency_seconds",
    "Round trip of SELECT 1 on an open stage connection, as this process's latest health check measured it",
    ["stage"],
    registry=registry,
)


@dataclass(frozen=True)
class PoolUsage:
    checked_out: int
    open: int
    capacity: int


def pool_usage(engine: Engine | None) -> PoolUsage:
    """Connections in use, open, and the most the pool may open; zeros for an engine not created yet."""
    if engine is None:
        return PoolUsage(0, 0, 0)
    pool = engine.pool
    checked_out = int(getattr(pool, "checkedout", lambda: 0)())
    checked_in = int(getattr(pool, "checkedin", lambda: 0)())
    capacity = int(getattr(pool, "size", lambda: 0)()) + max(int(getattr(pool, "_max_overflow", 0)), 0)
    return PoolUsage(checked_out, checked_out + checked_in, capacity)


# Bot-database tables owned by other modules, counted by state at scrape time. Approvals are the
# two-person requests of bot/requests/store.py (deletes, and restores on protected stages);
# alerts are the health checks' lifecycle rows (bot/health/alerts.py). Both are created by the
# start-up migration; the has_table checks only keep a scrape harmless before it has run.
APPROVAL_TABLE = "delete_requests"
APPROVAL_STATE_COLUMN = "state"
ALERT_TABLE = "alerts"
ALERT_STATE_COLUMN = "state"
ALERT_STAGE_COLUMN = "stage"
ALERT_FIRING_STATE = "firing"


def approval_and_alert_gauges(conn: Connection) -> Iterator[Metric]:
    """Approvals by state and firing alerts per stage, read from the bot database if the tables exist."""
    inspector = inspect(conn)
    if inspector.has_table(APPROVAL_TABLE):
        from bot.requests.store import STATES

        approvals = table(APPROVAL_TABLE, column(APPROVAL_STATE_COLUMN))
        state = approvals.c[APPROVAL_STATE_COLUMN]
        gauge = GaugeMetricFamily(
            "mcp_ops_approvals", "Delete and restore requests by state (every state, 0 included)", labels=["state"]
        )
        # Every known state is exported, 0 included, so a series does not vanish when its last
        # request moves on (pending 1 -> 0 when it is cancelled, rather than no sample at all).
        counts = dict.fromkeys(STATES, 0)
        for value, count in conn.execute(select(state, func.count()).group_by(state)):
            counts[str(value)] = count
        for name, count in counts.items():
            gauge.add_metric([name], count)
        yield gauge
    if inspector.has_table(ALERT_TABLE):
        columns = {c["name"] for c in inspector.get_columns(ALERT_TABLE)}
        stage_col = ALERT_STAGE_COLUMN if ALERT_STAGE_COLUMN in columns else None
        alerts = table(ALERT_TABLE, *(column(c) for c in (ALERT_STATE_COLUMN, stage_col) if c))
        firing = alerts.c[ALERT_STATE_COLUMN] == ALERT_FIRING_STATE
        gauge = GaugeMetricFamily("mcp_ops_alerts_firing", "Alerts currently firing, by stage", labels=["stage"])
        if stage_col:
            stage = alerts.c[stage_col]
            for value, count in conn.execute(select(stage, func.count()).where(firing).group_by(stage)):
                gauge.add_metric([str(value or "")], count)
        else:
            gauge.add_metric([""], conn.execute(select(func.count()).select_from(alerts).where(firing)).scalar_one())
        yield gauge


def outbox_backlog(conn: Connection) -> int:
    from bot.outbox import outbox

    pending = outbox.c.delivered_at.is_(None) & outbox.c.dead_at.is_(None)
    return int(conn.execute(select(func.count()).select_from(outbox).where(pending)).scalar_one())


class BotDatabaseGauges:
    """The metrics read from the bot database (outbox backlog, approvals, alerts), refreshed by a
    background thread every `interval_s` and soon after a change is published, never by a scrape:
    a scrape costs no query, however often it comes, and a slow bot database cannot slow it."""

    def __init__(self, engine: Engine, interval_s: float, *, min_gap_s: float = 1.0) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self.min_gap_s = min(min_gap_s, interval_s)
        self._families: list[Metric] = []
        self._up = 0
        self._refreshed_at: float | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        try:
            with reading(self.engine) as conn:
                families = [
                    GaugeMetricFamily(
                        "mcp_ops_outbox_backlog", "Slack posts waiting in the outbox", value=outbox_backlog(conn)
                    ),
                    *approval_and_alert_gauges(conn),
                ]
        except SQLAlchemyError as exc:
            log.warning("metrics: bot database unavailable", extra={"error": type(exc).__name__})
            with self._lock:
                self._up, self._refreshed_at = 0, time.monotonic()
            return
        with self._lock:
            self._families, self._up, self._refreshed_at = families, 1, time.monotonic()

    def nudge(self, *_: object) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.min_gap_s)  # a burst of changes costs one refresh a gap
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            families, up, refreshed_at = list(self._families), self._up, self._refreshed_at
        yield GaugeMetricFamily("mcp_ops_bot_database_up", "1 if the latest refresh could read the bot database", up)
        age = time.monotonic() - refreshed_at if refreshed_at is not None else -1.0
        yield GaugeMetricFamily(
            "mcp_ops_metrics_age_seconds", "Age of the values read from the bot database (-1: not read yet)", age
        )
        yield from families


class ScrapeCollector:
    """What one scrape shows: counters, pools (in memory) and the cached bot-database gauges."""

    def __init__(
        self,
        cached: BotDatabaseGauges,
        stage_engines: Mapping[str, Engine | None],
        *,
        draining: bool,
        lanes: Mapping[str, int] | None = None,
    ) -> None:
        self.cached = cached
        self.stage_engines = stage_engines
        self.draining = draining
        self.lanes = lanes or {}  # jobs running or waiting, per work lane

    def collect(self) -> Iterable[Metric]:
        yield from registry.collect()
        checked_out = GaugeMetricFamily(
            "mcp_ops_db_pool_checked_out", "Database connections in use, per database", labels=["database"]
        )
        opened = GaugeMetricFamily(
            "mcp_ops_db_pool_open", "Database connections open, per database", labels=["database"]
        )
        capacity = GaugeMetricFamily(
            "mcp_ops_db_pool_size", "Most connections the pool may open, per database", labels=["database"]
        )
        engines: dict[str, Engine | None] = {"bot": self.cached.engine}
        engines.update({f"stage:{name}": engine for name, engine in self.stage_engines.items()})
        for label, engine in engines.items():
            usage = pool_usage(engine)
            checked_out.add_metric([label], usage.checked_out)
            opened.add_metric([label], usage.open)
            capacity.add_metric([label], usage.capacity)
        yield from (checked_out, opened, capacity)
        yield GaugeMetricFamily("mcp_ops_draining", "1 while the process drains before exit", value=int(self.draining))
        held = GaugeMetricFamily("mcp_ops_lane_jobs", "Jobs running or waiting, per work lane", labels=["lane"])
        for lane, count in sorted(self.lanes.items()):
            held.add_metric([lane], count)
        yield held
        yield from self.cached.collect()


def exposition(collector: ScrapeCollector) -> bytes:
    return generate_latest(collector)  # type: ignore[arg-type]
