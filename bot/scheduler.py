"""Scheduled jobs that run once per time slot, however many replicas are running.

Each run takes `pg_try_advisory_lock` in the bot database on a dedicated connection for
its whole duration, then records its slot in `job_runs`; a second replica finds the lock
taken or the slot already recorded, and does nothing. Only the current slot is ever
claimed, so rows older than KEEP_RUNS_DAYS serve nobody and `prune_runs` deletes them.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Column, DateTime, Engine, PrimaryKeyConstraint, Table, Text, delete, func, text, update
from sqlalchemy.dialects.postgresql import insert

from bot.botdb import metadata

log = logging.getLogger(__name__)

job_runs = Table(
    "job_runs",
    metadata,
    Column("job", Text, nullable=False),
    Column("slot", DateTime(timezone=True), nullable=False),
    Column("owner", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True)),
    Column("outcome", Text),
    PrimaryKeyConstraint("job", "slot"),
)

OWNER = f"{socket.gethostname()}:{os.getpid()}"
KEEP_RUNS_DAYS = 7
PRUNE_JOB = "job_runs:prune"
PRUNE_INTERVAL_S = 3600


@dataclass(frozen=True)
class Job:
    name: str
    func: Callable[[], None]
    interval_s: float


def slot_start(now: float, interval_s: float) -> datetime:
    return datetime.fromtimestamp(math.floor(now / interval_s) * interval_s, tz=UTC)


class JobScheduler:
    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock
        self.jobs: dict[str, Job] = {}
        self._scheduler: BackgroundScheduler | None = None

    def add(self, name: str, func: Callable[[], None], interval_s: float) -> None:
        self.jobs[name] = Job(name, func, interval_s)

    def run_slot(self, name: str, *, now: float | None = None) -> bool:
        """Run job `name` for the slot containing `now` unless another process has; True if it ran here."""
        job = self.jobs[name]
        slot = slot_start(self.clock() if now is None else now, job.interval_s)
        with self.engine.connect() as lock_conn:
            locked = lock_conn.execute(
                text("SELECT pg_try_advisory_lock(hashtext('mcp-ops job:' || :name))"), {"name": name}
            ).scalar_one()
            lock_conn.commit()
            if not locked:
                return False
            try:
                with self.engine.begin() as conn:
                    claimed = conn.execute(
                        insert(job_runs)
                        .values(job=name, slot=slot, owner=OWNER)
                        .on_conflict_do_nothing()
                        .returning(job_runs.c.job)
                    ).first()
                if claimed is None:
                    return False
                outcome = "ok"
                try:
                    job.func()
                except Exception:
                    outcome = "error"
                    log.exception("scheduled job failed", extra={"job": name})
                with self.engine.begin() as conn:
                    conn.execute(
                        update(job_runs)
                        .where(job_runs.c.job == name, job_runs.c.slot == slot)
                        .values(finished_at=func.now(), outcome=outcome)
                    )
                return True
            finally:
                lock_conn.execute(text("SELECT pg_advisory_unlock(hashtext('mcp-ops job:' || :name))"), {"name": name})
                lock_conn.commit()

    def add_pruning(self, interval_s: float = PRUNE_INTERVAL_S, keep_days: int = KEEP_RUNS_DAYS) -> None:
        """A job of its own (once per slot like the others) that keeps `job_runs` from growing forever."""

        def prune() -> None:
            self.prune_runs(keep_days)

        self.add(PRUNE_JOB, prune, interval_s)

    def prune_runs(self, keep_days: int = KEEP_RUNS_DAYS) -> int:
        """Delete the records of runs started more than `keep_days` ago; returns how many."""
        with self.engine.begin() as conn:
            result = conn.execute(
                delete(job_runs).where(job_runs.c.started_at < func.now() - timedelta(days=keep_days))
            )
        if result.rowcount:
            log.info("job runs pruned", extra={"rows": result.rowcount, "keep_days": keep_days})
        return int(result.rowcount)

    def _safe_run(self, name: str) -> None:
        try:
            self.run_slot(name)
        except Exception:
            # The bot database may be restarting; the next tick tries again.
            log.warning("scheduled job skipped", extra={"job": name}, exc_info=True)

    def start(self) -> None:
        if self._scheduler is not None or not self.jobs:
            return
        self._scheduler = BackgroundScheduler(timezone=UTC)
        for job in self.jobs.values():
            self._scheduler.add_job(
                self._safe_run,
                IntervalTrigger(seconds=job.interval_s),
                args=[job.name],
                id=job.name,
                max_instances=1,
                coalesce=True,
                next_run_time=datetime.now(UTC),
            )
        self._scheduler.start()

    def shutdown(self, wait: bool = True) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=wait)
            self._scheduler = None
