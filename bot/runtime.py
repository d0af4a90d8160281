"""The composition root of the domain: settings, databases, audit, outbox, policy.

Handlers receive one Runtime and reach everything through it; tests build one per test.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sqlalchemy.exc import OperationalError

from bot.access import AccessPolicy
from bot.audit import AuditLog
from bot.botdb import create_bot_engine, migrate
from bot.config import Settings
from bot.health.monitor import HealthMonitor
from bot.outbox import Outbox, OutboxWorker
from bot.ratelimit import RateLimiter
from bot.scheduler import JobScheduler
from bot.slack_client import make_web_client
from bot.stages import StageRegistry

log = logging.getLogger(__name__)


class BotDatabaseUnavailable(RuntimeError):
    pass


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stages = StageRegistry(settings)
        self.bot_engine = create_bot_engine(settings.bot_database_url)
        self.policy = AccessPolicy(settings)
        self.rate_limiter = RateLimiter(self.bot_engine, settings.rate_limit_per_minute)
        self.slack = make_web_client(settings)
        self.outbox = Outbox(self.bot_engine, self.slack)
        self.outbox_worker = OutboxWorker(self.outbox, settings.outbox_interval_s)
        self.audit = AuditLog(self.bot_engine, settings.audit_channel, on_enqueue=self.outbox_worker.notify)
        # Jobs register here before start(); each runs once per slot across replicas.
        self.scheduler = JobScheduler(self.bot_engine)
        self.health = HealthMonitor(settings, self.stages, self.bot_engine, self.audit, self.outbox_worker.notify)
        # Slow work runs here, after the Slack ack, so listener threads are free to ack the next request.
        self._jobs = ThreadPoolExecutor(max_workers=16, thread_name_prefix="job")
        self._accepting = threading.Event()
        self._accepting.set()
        self._started = False

    @property
    def accepting(self) -> bool:
        return self._accepting.is_set()

    def submit(self, func: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run `func` after the ack; exceptions are logged, never lost silently."""

        def guarded() -> Any:
            try:
                return func(*args)
            except Exception:
                log.exception("background job failed", extra={"job": getattr(func, "__name__", "?")})
                raise

        return self._jobs.submit(contextvars.copy_context().run, guarded)

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
        if workers:
            self.outbox_worker.start()
            self.scheduler.start()
        self._started = True

    def drain(self) -> None:
        """Stop taking work and wait for what is running (deletes finish or roll back)."""
        self._accepting.clear()
        self._jobs.shutdown(wait=True)

    def close(self) -> None:
        self.scheduler.shutdown(wait=True)
        self.drain()
        self.outbox_worker.stop(flush=self._started)
        self.stages.dispose()
        self.bot_engine.dispose()
