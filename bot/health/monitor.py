"""Running the checks: one connection per round, scheduled per stage and check group.

Each group has its own interval (activity every minute, slow queries every five, catalog
checks hourly and daily) and runs as a scheduler job, so every run happens once across
replicas. A round opens one read-only connection under the stage's `mcp-ops/health/<stage>`
application name; a stage that cannot be reached feeds the unreachable alert instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from bot.audit import AuditLog
from bot.config import Settings
from bot.errors import UserFacingError
from bot.health import statements
from bot.health.alerts import UNREACHABLE_CHECK, AlertBook, AlertView
from bot.health.checks import (
    ACTIVITY_CHECKS,
    FK_CHECKS,
    MAINTENANCE_CHECKS,
    CheckContext,
    CheckReport,
    CheckSpec,
    Finding,
)
from bot.scheduler import JobScheduler
from bot.stages import Stage, StageRegistry, describe_db_error

log = logging.getLogger(__name__)

COMPONENT = "health"


@dataclass(frozen=True)
class Group:
    name: str
    checks: Sequence[CheckSpec]
    statements: bool = False
    connectivity: bool = False


GROUPS: dict[str, Group] = {
    "activity": Group("activity", ACTIVITY_CHECKS, connectivity=True),
    "statements": Group("statements", (), statements=True),
    "maintenance": Group("maintenance", MAINTENANCE_CHECKS),
    "fk_indexes": Group("fk_indexes", FK_CHECKS),
}


@dataclass
class Round:
    stage: str
    reachable: bool
    reason: str | None = None
    latency_ms: float | None = None
    reports: list[CheckReport] = field(default_factory=list)
    snapshot: statements.Snapshot | None = None
    interval: statements.Interval | None = None
    texts: dict[int, str] = field(default_factory=dict)

    @property
    def findings(self) -> list[Finding]:
        return [f for r in self.reports for f in r.findings]

    @property
    def covers(self) -> set[str]:
        return {c for r in self.reports for c in r.covers or ()}


@dataclass(frozen=True)
class HealthSummary:
    stage: str
    checked_at: datetime
    round: Round
    open_alerts: list[AlertView]


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

    def _run_check(self, conn: Connection, spec: CheckSpec, ctx: CheckContext) -> CheckReport:
        try:
            with conn.begin_nested():
                return spec.run(conn, ctx)
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            friendly = describe_db_error(exc, ctx.stage)
            reason = friendly.message if friendly else f"failed ({type(exc.orig).__name__})"
            log.warning("health check failed", extra={"stage": ctx.stage, "check": spec.name, "reason": reason})
            return CheckReport(spec.name, spec.label, "error", reason)

    def round(
        self,
        stage: Stage,
        checks: Sequence[CheckSpec],
        *,
        slow_queries: bool = False,
        previous: statements.Stored | None = None,
    ) -> Round:
        """Run `checks`, and the slow-query check against `previous` if asked, in one connection."""
        ctx = CheckContext(stage=stage.name, settings=self.settings.health)
        started = time.perf_counter()
        result = Round(stage=stage.name, reachable=True)
        try:
            with stage.read(
                statement_timeout_ms=self.settings.health.statement_timeout_ms, component=COMPONENT
            ) as conn:
                conn.execute(text("SELECT 1"))
                result.latency_ms = (time.perf_counter() - started) * 1000
                for spec in checks:
                    result.reports.append(self._run_check(conn, spec, ctx))
                if slow_queries:
                    found = statements.check_slow_queries(conn, ctx, previous)
                    result.reports += found.reports
                    result.snapshot, result.interval, result.texts = found.snapshot, found.interval, found.texts
        except UserFacingError as exc:  # StageUnavailable, or a timeout of SELECT 1 itself
            return Round(stage=stage.name, reachable=False, reason=exc.message)
        return result

    def _previous_snapshot(self, stage: str) -> statements.Stored | None:
        with self.bot_engine.connect() as conn:
            return statements.load(conn, stage)

    # -- scheduled ---------------------------------------------------------------------------

    def run_group(self, stage_name: str, group_name: str) -> Round:
        """One scheduled run: check, record findings, send what Slack needs to hear."""
        group = GROUPS[group_name]
        stage = self.stages.get(stage_name)
        previous = self._previous_snapshot(stage_name) if group.statements else None
        result = self.round(stage, group.checks, slow_queries=group.statements, previous=previous)
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
            covers = result.covers | ({UNREACHABLE_CHECK} if group.connectivity else set())
            snapshot, interval, texts = result.snapshot, result.interval, result.texts

            def keep_snapshot(conn: Connection) -> None:
                if snapshot is not None:
                    statements.store(conn, stage_name, snapshot, interval, texts)

            self.book.apply(stage_name, covers, result.findings, also=keep_snapshot)
        self.book.sync()
        return result

    # -- on demand ---------------------------------------------------------------------------

    def run_now(self, stage: Stage) -> HealthSummary:
        """Every check now, in one connection, for `/mcp health`: nothing is recorded or posted."""
        checks = [spec for group in GROUPS.values() for spec in group.checks]
        result = self.round(stage, checks, slow_queries=True, previous=self._previous_snapshot(stage.name))
        return HealthSummary(
            stage=stage.name,
            checked_at=datetime.now(UTC),
            round=result,
            open_alerts=self.book.open_alerts(stage.name),
        )


def unreachable_finding(stage: str, reason: str) -> Finding:
    return Finding(
        check=UNREACHABLE_CHECK,
        object="stage",
        severity="critical",
        title=f"stage {stage} is unreachable",
        detail=f"{reason}. Commands on this stage fail until it answers; its other alerts are held meanwhile.",
        advice=(
            "Check the database server (RDS console, events and status), the network path and the credentials "
            f"in DATABASE_URL_{stage.upper()}. The alert resolves by itself when the stage answers again."
        ),
    )
