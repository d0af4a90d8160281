"""The composition root of the domain: settings, databases, audit, outbox, policy.

Handlers receive one Runtime and reach everything through it; tests build one per test.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

from sqlalchemy.exc import OperationalError

from bot import deliveries
from bot.access import AccessPolicy
from bot.approvers import ApproverDirectory
from bot.audit import AuditLog
from bot.backups.service import Backups
from bot.botdb import create_bot_engine, migrate
from bot.changes import ChangeFeed
from bot.config import Settings
from bot.erasure.ledger import ErasureLedger
from bot.erasure.service import Erasures
from bot.health.monitor import HealthMonitor
from bot.home import Home
from bot.lanes import HeavyReads, Lane
from bot.metrics import BotDatabaseGauges
from bot.outbox import Outbox, OutboxWorker
from bot.ratelimit import RateLimiter
from bot.readiness import ReadinessProbe
from bot.requests.machine import Requests
from bot.scheduler import JobScheduler
from bot.schema.watch import MigrationWatch
from bot.slack_client import make_web_client
from bot.stages import StageRegistry

log = logging.getLogger(__name__)


# A background job waits until no Slack request has been in flight for ACK_QUIET_S, or at
# most ACK_PRIORITY_WAIT_S, so that acks in a burst are not slowed by the work they started.
ACK_PRIORITY_WAIT_S = 2.0
ACK_QUIET_S = 0.005


class BotDatabaseUnavailable(RuntimeError):
    pass


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stages = StageRegistry(settings)
        self.bot_engine = create_bot_engine(settings.bot_database_url)
        self.slack = make_web_client(settings)
        self.approvers = ApproverDirectory(settings.approvers, self.slack)
        self.policy = AccessPolicy(settings, self.approvers)
        self.rate_limiter = RateLimiter(self.bot_engine, settings.rate_limit_per_minute)
        self.outbox = Outbox(self.bot_engine, self.slack)
        self.outbox_worker = OutboxWorker(self.outbox, settings.outbox_interval_s)
        # Committed changes people look at: queued Slack posts go out, App Home tabs refresh.
        self.changes = ChangeFeed()
        self.audit = AuditLog(
            self.bot_engine,
            settings.audit_channel,
            on_enqueue=self._changed("audit"),
            coalesce_s=settings.edge.audit_coalesce_s,
        )
        # Jobs register here before start(); each runs once per slot across replicas.
        self.scheduler = JobScheduler(self.bot_engine)
        self.health = HealthMonitor(settings, self.stages, self.bot_engine, self.audit, self._changed("alerts"))
        self.migration_watch = MigrationWatch(settings, self.stages, self.health.book)
        self.home = Home(self.bot_engine, self.policy, self.audit, self.health.book)
        self.backups = Backups(settings, self.bot_engine, self.audit)
        if settings.backup.retention_days and settings.backup.directory is not None:
            self.scheduler.add("backups:retention", self.backups.prune_local, 3600)
        # Forget-user: the erasure ledger, and restores that apply erasures again (a hook on backups).
        self.erasures = Erasures(settings, ErasureLedger(self.bot_engine), self.backups, self.audit)
        # Requests of every kind (delete, restore, cancel, ...), their clicks, runs and jobs (rendered
        # through what the Slack layer injects). `deletion` is its former name.
        self.requests = Requests(self)
        self.deletion = self.requests
        # Slow work runs on lanes, after the Slack ack, so listener threads are free to ack the next request:
        # reads on one, changing commands and other clicks on another; clicks on request messages and
        # approved executions on two of their own, so no flood of reads, clicks or refusals delays an approval.
        edge = settings.edge
        self.lanes = {
            "read": Lane("read", edge.read_workers, edge.read_queue),
            "work": Lane("work", edge.work_workers, edge.work_queue),
            "approvals": Lane("approvals", edge.approval_workers, edge.approval_queue),
            "exec": Lane("exec", edge.exec_workers, edge.exec_queue),
            # Audit rows of refusals: short inserts, kept off the other two lanes.
            "audit": Lane("audit", 2, edge.read_queue + edge.work_queue),
        }
        self.heavy_reads = HeavyReads(edge.heavy_reads_per_user, edge.heavy_reads_per_stage)
        # Bot-database gauges for /metrics, refreshed in the background (and soon after a change).
        self.gauges = BotDatabaseGauges(self.bot_engine, edge.metrics_refresh_s)
        self.changes.subscribe(self.gauges.nudge)
        self.outbox_worker.on_delivered = self.gauges.nudge
        self.readiness = ReadinessProbe(
            self.bot_engine, self.stages.all, timeout_s=settings.connect_timeout_s, draining=lambda: not self.accepting
        )
        self._accepting = threading.Event()
        self._accepting.set()
        # Requests being handled plus jobs queued or running: draining waits for zero.
        self._busy = 0
        self._idle = threading.Condition()
        # Requests being handled right now: jobs hold back while there are any (see submit).
        self._requests = 0
        self._last_request = 0.0
        self._quiet = threading.Condition()
        self._started = False
        self._closed = False
        self._drained = False
        self._close_lock = threading.Lock()

    def _changed(self, kind: str) -> Callable[[], None]:
        def notify() -> None:
            self.outbox_worker.notify()
            self.changes.publish(kind)

        return notify

    @property
    def accepting(self) -> bool:
        return self._accepting.is_set()

    @property
    def in_flight(self) -> int:
        """Requests being handled plus jobs queued or running (the console waits for zero)."""
        return self._busy

    def _enter(self) -> None:
        with self._idle:
            self._busy += 1

    def _leave(self, *_: Any) -> None:
        with self._idle:
            self._busy -= 1
            if self._busy == 0:
                self._idle.notify_all()

    @contextmanager
    def handling_request(self) -> Iterator[bool]:
        """Count a request while it is handled; yields False once draining has begun (refuse it)."""
        self._enter()  # before looking at `accepting`, so drain() either waits for us or we see it
        with self._quiet:
            self._requests += 1
        try:
            yield self.accepting
        finally:
            with self._quiet:
                self._requests -= 1
                self._last_request = time.monotonic()
                if self._requests == 0:
                    self._quiet.notify_all()
            self._leave()

    def _yield_to_acks(self) -> None:
        """Let requests being acknowledged go first, for a moment at most.

        Slack gives an ack 3 seconds and a reply 30 minutes; in a burst of commands, jobs that
        start at once would compete with the acks for the interpreter and make them late.
        """
        deadline = time.monotonic() + ACK_PRIORITY_WAIT_S
        with self._quiet:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    return
                if self._requests == 0:
                    calm = now - self._last_request
                    if calm >= ACK_QUIET_S:
                        return
                    self._quiet.wait(min(ACK_QUIET_S - calm, deadline - now))
                else:
                    self._quiet.wait(deadline - now)

    def submit(self, func: Callable[..., Any], *args: Any, lane: str = "work") -> Future[Any]:
        """Run `func` after the ack on `lane` (a key of `lanes`); exceptions are logged, never lost silently.

        Raises `bot.lanes.Busy` when the lane is full, RuntimeError once drained.
        """

        def guarded() -> Any:
            self._yield_to_acks()
            try:
                return func(*args)
            except Exception:
                log.exception("background job failed", extra={"job": getattr(func, "__name__", "?")})
                raise

        self._enter()
        try:
            context = contextvars.copy_context()  # the request id of the request that queued it
            future = self.lanes[lane].submit(lambda: context.run(guarded))
        except BaseException:
            self._leave()
            raise
        future.add_done_callback(self._leave)
        return future

    def start(self, *, wait_for_bot_db: float = 30.0, workers: bool = True) -> None:
        """Migrate the bot database (waiting a while for it) and start background workers."""
        deadline = time.monotonic() + wait_for_bot_db
        while True:
            try:
                migrate(self.bot_engine)
                break
            except OperationalError:
                if time.monotonic() >= deadline:
                    raise BotDatabaseUnavailable("BOT_DATABASE_URL is unreachable") from None
                time.sleep(1)
        if self.settings.health.enabled:
            self.health.register_jobs(self.scheduler)
            self.migration_watch.register(self.scheduler)  # daily, and once after start
        # Every scheduled run leaves a row in job_runs (about 1,750 a stage a day with health checks on).
        self.scheduler.add_pruning()
        self.scheduler.add("deliveries:prune", lambda: deliveries.prune(self.bot_engine), 3600)
        if self.settings.edge.audit_coalesce_s:
            self.scheduler.add(
                "audit:held-refusals", self.audit.post_held_refusals, self.settings.edge.audit_coalesce_s
            )
        if workers:
            self.outbox_worker.start()
            self.scheduler.start()
            self.gauges.start()
        self._started = True

    def drain(self, timeout: float | None = None) -> bool:
        """Stop taking work and wait for what was accepted (a delete finishes or rolls back).

        True if everything finished within `timeout`; what is still running then is cut off
        when the process exits, and its open transactions roll back in PostgreSQL.
        """
        self._accepting.clear()
        log.info("draining: refusing new work", extra={"in_flight": self._busy})
        with self._idle:
            finished = self._idle.wait_for(lambda: self._busy == 0, timeout)
        for lane in self.lanes.values():
            lane.shutdown(wait=finished)
        if not finished:
            log.warning("drain timed out; unfinished work will roll back", extra={"busy": self._busy})
        return finished

    def close(self, timeout: float | None = None) -> bool:
        """Drain, flush the outbox and release connections; safe to call twice.

        True if the accepted work finished within `timeout` (the first call's answer, every time).
        """
        with self._close_lock:
            if self._closed:
                return self._drained
            self._closed = True
            self._accepting.clear()
            self.scheduler.shutdown(wait=True)
            self.changes.close()
            self._drained = self.drain(timeout)
            self.outbox_worker.stop(flush=self._started)
            self.gauges.stop()
            self.stages.dispose()
            self.bot_engine.dispose()
            log.info("drained and closed")
            return self._drained
