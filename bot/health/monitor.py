"""Running the checks: one connection per round, scheduled per stage and check group.

Each group has its own interval (activity every minute, slow queries every five, catalog
checks hourly and daily) and runs as a scheduler job, so every run happens once across
replicas. A round opens one read-only connection under the stage's `mcp-ops/health/<stage>`
application name, with TCP keepalives and a client-side deadline (bot/deadline.py);
a stage that cannot be reached, or stops answering mid-round, feeds the unreachable alert
instead. A check that fails (a timeout, a permission) reports an error that covers nothing,
so its alerts stay as they are; failing run after run raises a "check failing" alert.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from bot import deadline
from bot.audit import AuditLog
from bot.botdb import reading
from bot.config import Settings
from bot.deletion import dberrors
from bot.errors import UserFacingError
from bot.health import history, statement_store, statements
from bot.health.alerts import UNREACHABLE_CHECK, AlertBook, AlertView
from bot.health.checks import (
    CheckContext,
    CheckReport,
    CheckSpec,
    Finding,
    checks_in,
    denied_report,
    distinct,
    duration,
    latency_report,
)
from bot.health.run_findings import CLEAR_AT_ONCE as CLEAR_AT_ONCE  # re-exported: callers import them from here
from bot.health.run_findings import FAILING_PREFIX as FAILING_PREFIX
from bot.health.run_findings import clears_at_once, failing_check, failing_finding, unreachable_finding
from bot.metrics import stage_latency_seconds
from bot.scheduler import JobScheduler
from bot.stage_errors import describe_db_error
from bot.stages import Stage, StageRegistry

log = logging.getLogger(__name__)

COMPONENT = "health"


@dataclass(frozen=True)
class Group:
    name: str
    checks: Sequence[CheckSpec]
    statements: bool = False
    connectivity: bool = False


GROUPS: dict[str, Group] = {
    "activity": Group("activity", checks_in("activity"), connectivity=True),
    "statements": Group("statements", (), statements=True),
    "maintenance": Group("maintenance", checks_in("maintenance")),
    "fk_indexes": Group("fk_indexes", checks_in("fk_indexes")),
}


@dataclass
class Round:
    stage: str
    reachable: bool
    reason: str | None = None
    latency_ms: float | None = None  # `SELECT 1` on the open connection
    connect_ms: float | None = None  # connecting and starting the read-only transaction
    reports: list[CheckReport] = field(default_factory=list)
    snapshot: statements.Snapshot | None = None
    interval: statements.Interval | None = None
    texts: dict[int, str] = field(default_factory=dict)

    @property
    def findings(self) -> list[Finding]:
        return distinct(f for r in self.reports for f in r.findings)

    @property
    def covers(self) -> set[str]:
        return {c for r in self.reports for c in r.covers or ()}

    @property
    def holds(self) -> set[tuple[str, str]]:
        return {h for r in self.reports for h in r.holds}

    @property
    def samples(self) -> list[history.Sample]:
        return [s for r in self.reports for s in r.samples]


@dataclass(frozen=True)
class HealthSummary:
    stage: str
    checked_at: datetime
    round: Round
    open_alerts: list[AlertView]
    scheduled: bool = True  # HEALTH_CHECKS: whether scheduled checks raise alerts


def job_name(stage: str, group: str) -> str:
    return f"health:{stage}:{group}"


class HealthMonitor:
    def __init__(
        self,
        settings: Settings,
        stages: StageRegistry,
        bot_engine: Engine,
        audit: AuditLog,
        notify: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.stages = stages
        self.bot_engine = bot_engine
        self.book = AlertBook(bot_engine, settings, audit, notify)

    def intervals(self) -> dict[str, int]:
        h = self.settings.health
        return {
            "activity": h.interval_s,
            "statements": h.slow_query_interval_s,
            "maintenance": h.maintenance_interval_s,
            "fk_indexes": h.fk_index_interval_s,
        }

    def register_jobs(self, scheduler: JobScheduler) -> None:
        for stage in self.stages.names:
            for group, interval in self.intervals().items():
                scheduler.add(job_name(stage, group), partial(self.run_group, stage, group), interval)

    # -- a round -----------------------------------------------------------------------------

    @property
    def statement_budget_s(self) -> float:
        """How long a statement may go unanswered: a live server has cancelled it by then."""
        return self.settings.health.statement_timeout_ms / 1000 + self.settings.connect_timeout_s

    def connect_args(self) -> dict[str, int]:
        """libpq TCP settings: a peer that vanished (network drop, host gone) is noticed within seconds."""
        timeout_s = self.settings.connect_timeout_s
        return {
            "keepalives": 1,
            "keepalives_idle": timeout_s,
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "tcp_user_timeout": timeout_s * 1000,
        }

    def engine(self, stage: Stage) -> Engine:
        """The stage's health engine: its own application_name, TCP keepalives, round deadlines."""
        engine = stage.component_engine(COMPONENT, connect_args=self.connect_args())
        deadline.install(engine)
        return engine

    def _run_check(self, conn: Connection, spec: CheckSpec, ctx: CheckContext, limit: deadline.Deadline) -> CheckReport:
        try:
            with conn.begin_nested():
                return spec.run(conn, ctx)
        except DBAPIError as exc:
            if exc.connection_invalidated or limit.expired:
                raise
            sqlstate = getattr(exc.orig, "sqlstate", None) or ""
            if sqlstate in ("42501", "0A000"):  # not allowed to this role, or not offered here: said once
                diag = getattr(exc.orig, "diag", None)
                message = getattr(diag, "message_primary", None) or str(exc.orig)
                return denied_report(spec.name, spec.label, message, sqlstate=sqlstate)
            return self._error_report(spec.name, spec.label, ctx, exc)

    def _run_slow_queries(
        self,
        conn: Connection,
        ctx: CheckContext,
        previous: statements.Stored | None,
        baseline: str,
        limit: deadline.Deadline,
    ) -> statements.StatementsResult:
        """The slow-query check, guarded like the others: a failure is its own error, not the round's."""
        try:
            with conn.begin_nested():
                return statements.check_slow_queries(conn, ctx, previous, baseline=baseline)
        except DBAPIError as exc:
            if exc.connection_invalidated or limit.expired:
                raise
            return statements.StatementsResult(
                [self._error_report("slow_queries", "Slow queries", ctx, exc)], None, None, {}
            )

    @staticmethod
    def _error_report(check: str, label: str, ctx: CheckContext, exc: DBAPIError) -> CheckReport:
        friendly = describe_db_error(exc, ctx.stage)
        reason = friendly.message if friendly else f"failed: {dberrors.describe(exc)}"  # what, not a class name
        log.warning("health check failed", extra={"stage": ctx.stage, "check": check, "reason": reason})
        return CheckReport(check, label, "error", reason)  # covers nothing: its alerts stay as they are

    def round(
        self,
        stage: Stage,
        checks: Sequence[CheckSpec],
        *,
        slow_queries: bool = False,
        previous: statements.Stored | None = None,
        latency: bool = False,
        baseline: str = statements.BASELINE,
    ) -> Round:
        """Run `checks`, and the slow-query check against `previous` if asked, in one connection.

        The round trip of `SELECT 1` is measured every time (and exported); `latency` adds its report.
        """
        ctx = CheckContext(
            stage=stage.name, settings=self.settings.health, history=history.History(self.bot_engine, stage.name)
        )
        result = Round(stage=stage.name, reachable=True)
        self.engine(stage)
        budget = self.statement_budget_s
        limit = deadline.Deadline(
            statement_timeout_s=self.settings.health.statement_timeout_ms / 1000,
            grace_s=self.settings.connect_timeout_s,
        )
        started = time.perf_counter()
        try:
            with (
                limit,
                stage.read(statement_timeout_ms=self.settings.health.statement_timeout_ms, component=COMPONENT) as conn,
            ):
                connected = time.perf_counter()
                conn.execute(text("SELECT 1"))
                result.latency_ms = (time.perf_counter() - connected) * 1000
                result.connect_ms = (connected - started) * 1000
                if latency:
                    result.reports.append(latency_report(result.latency_ms, ctx))
                for spec in checks:
                    result.reports.append(self._run_check(conn, spec, ctx, limit))
                if slow_queries:
                    found = self._run_slow_queries(conn, ctx, previous, baseline, limit)
                    result.reports += found.reports
                    result.snapshot, result.interval, result.texts = found.snapshot, found.interval, found.texts
        except Exception as exc:
            if limit.expired:  # whatever the driver made of the severed connection
                reason = f"stage {stage.name} is unreachable (it stopped answering: nothing for {duration(budget)})"
            elif isinstance(exc, UserFacingError):  # StageUnavailable, or a timeout of SELECT 1 itself
                reason = exc.message
            else:
                raise
            with suppress(KeyError):
                stage_latency_seconds.remove(stage.name)  # no answer, no round trip to show
            return Round(stage=stage.name, reachable=False, reason=reason)
        stage_latency_seconds.labels(stage=stage.name).set(result.latency_ms / 1000)
        return result

    def _previous_snapshot(self, stage: str) -> statements.Stored | None:
        with reading(self.bot_engine) as conn:
            return statement_store.load(conn, stage)

    # -- scheduled ---------------------------------------------------------------------------

    def run_group(self, stage_name: str, group_name: str) -> Round:
        """One scheduled run: check, record findings, send what Slack needs to hear."""
        group = GROUPS[group_name]
        stage = self.stages.get(stage_name)
        previous = self._previous_snapshot(stage_name) if group.statements else None
        result = self.round(
            stage, group.checks, slow_queries=group.statements, previous=previous, latency=group.connectivity
        )
        if not result.reachable:
            if group.connectivity:
                self.book.apply(
                    stage_name,
                    {UNREACHABLE_CHECK},
                    [unreachable_finding(stage_name, result.reason or "unreachable")],
                    fire_after={UNREACHABLE_CHECK: self.settings.health.unreachable_after},
                )
            else:
                log.warning("health round skipped: stage unreachable", extra={"stage": stage_name, "group": group_name})
        else:
            h = self.settings.health
            covers = result.covers | ({UNREACHABLE_CHECK} if group.connectivity else set())
            # Each check that ran speaks for its "check failing" alert: present while it errs, gone when it works.
            failing = {failing_check(r.check): r for r in result.reports}
            covers |= set(failing)
            findings = result.findings + [
                failing_finding(stage_name, r, h.failing_after_runs) for r in failing.values() if r.status == "error"
            ]
            clear_after = {
                check: 1 if clears_at_once(check) or check in failing else h.clear_after_runs for check in covers
            }
            snapshot, interval, texts = result.snapshot, result.interval, result.texts

            def keep_snapshot(conn: Connection) -> None:
                if snapshot is not None:
                    statement_store.store(conn, stage_name, snapshot, interval, texts)
                history.store(conn, stage_name, result.samples)

            self.book.apply(
                stage_name,
                covers,
                findings,
                fire_after=dict.fromkeys(failing, h.failing_after_runs),
                clear_after=clear_after,
                holds=result.holds,
                also=keep_snapshot,
            )
        self.book.sync()
        return result

    # -- on demand ---------------------------------------------------------------------------

    def run_now(self, stage: Stage) -> HealthSummary:
        """Every check now, in one connection, for `/mcp health`: no alert is raised or posted.

        With the scheduled checks off, nothing else takes pg_stat_statements snapshots, so this
        one is stored: the next `/mcp health` measures slow queries since. With them on, the
        schedule's snapshots are left alone (this would shorten their interval).
        """
        checks = [spec for group in GROUPS.values() for spec in group.checks]
        keeps = not self.settings.health.enabled
        baseline = (
            "scheduled checks are off (HEALTH_CHECKS=off), so the next `/mcp health` measures from this one"
            if keeps
            else "the scheduled slow-query check has not stored one yet; it measures from its second"
        )
        result = self.round(
            stage,
            checks,
            slow_queries=True,
            previous=self._previous_snapshot(stage.name),
            latency=True,
            baseline=baseline,
        )
        if keeps and result.reachable:
            with self.bot_engine.begin() as conn:
                if result.snapshot is not None:
                    statement_store.store(conn, stage.name, result.snapshot, result.interval, result.texts)
                history.store(conn, stage.name, result.samples)
        return HealthSummary(
            stage=stage.name,
            checked_at=datetime.now(UTC),
            round=result,
            open_alerts=self.book.open_alerts(stage.name),
            scheduled=not keeps,
        )
