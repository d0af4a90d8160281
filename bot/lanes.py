"""Work lanes: bounded thread pools, and caps on heavy reads per person and per stage.

Reads, changing commands and other clicks, clicks on request messages, and approved executions
run on separate lanes (bot/runtime.py), so no flood of the others can delay an approved delete. Each lane holds at
most `workers + queue` jobs; past that, and past the heavy-read caps, work is refused with
`Busy`, which says when to try again (estimated from how long such work has been taking).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bot.errors import UserFacingError

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 300


class Busy(UserFacingError):
    """Refused for load: the person is told to try again in `retry_after_s` seconds."""

    outcome = "busy"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def _seconds(value: float) -> int:
    return max(1, min(MAX_RETRY_AFTER_S, math.ceil(value)))


class Durations:
    """A moving average of how long each kind of job takes (seconds)."""

    def __init__(self, initial_s: float = 2.0, weight: float = 0.3) -> None:
        self.initial_s = initial_s
        self.weight = weight
        self._mean: dict[str, float] = {}
        self._lock = threading.Lock()

    def record(self, kind: str, seconds: float) -> None:
        with self._lock:
            old = self._mean.get(kind)
            self._mean[kind] = seconds if old is None else old + self.weight * (seconds - old)

    def mean(self, kind: str) -> float:
        with self._lock:
            return self._mean.get(kind, self.initial_s)


class Lane:
    def __init__(self, name: str, workers: int, queue: int) -> None:
        self.name = name
        self.workers = workers
        self.capacity = workers + queue
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._held = 0
        self._lock = threading.Lock()
        self._durations = Durations()

    @property
    def held(self) -> int:
        with self._lock:
            return self._held

    def submit(self, func: Callable[[], Any]) -> Future[Any]:
        """Queue `func`, or raise Busy when the lane is full (RuntimeError once shut down)."""
        with self._lock:
            if self._held >= self.capacity:
                wait = self._durations.mean("job") * self._held / self.workers
                raise Busy(f"the bot is busy right now; try again in {_seconds(wait)} s", _seconds(wait))
            self._held += 1

        def timed() -> Any:
            started = time.monotonic()
            try:
                return func()
            finally:
                self._durations.record("job", time.monotonic() - started)

        try:
            future = self._pool.submit(timed)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._release)
        return future

    def _release(self, *_: Any) -> None:
        with self._lock:
            self._held -= 1

    def shutdown(self, *, wait: bool) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)


@dataclass
class _Running:
    user: str
    stage: str
    verb: str
    started: float


class HeavyReads:
    """At most `per_user` heavy reads running (or queued) for one person and `per_stage` on one stage."""

    def __init__(self, per_user: int, per_stage: int) -> None:
        self.per_user = per_user
        self.per_stage = per_stage
        self._running: dict[int, _Running] = {}
        self._by_user: dict[str, int] = defaultdict(int)
        self._by_stage: dict[str, int] = defaultdict(int)
        self._ids = iter(range(1, 1 << 62))
        self._lock = threading.Lock()
        self.durations = Durations()

    def acquire(self, user: str, stage: str, verb: str) -> Callable[[], None]:
        """Take a place or raise Busy; returns the function that gives the place back (call it once)."""
        now = time.monotonic()
        with self._lock:
            if self._by_user[user] >= self.per_user:
                wait = self._soonest(lambda r: r.user == user, now)
                raise Busy(
                    f"busy: you already have {self._by_user[user]} heavy commands running "
                    f"(at most {self.per_user}); try again in {wait} s",
                    wait,
                )
            if self._by_stage[stage] >= self.per_stage:
                wait = self._soonest(lambda r: r.stage == stage, now)
                raise Busy(
                    f"busy: {self._by_stage[stage]} heavy commands are running on {stage} "
                    f"(at most {self.per_stage}); try again in {wait} s",
                    wait,
                )
            key = next(self._ids)
            self._running[key] = _Running(user, stage, verb, now)
            self._by_user[user] += 1
            self._by_stage[stage] += 1
        released = threading.Event()

        def release() -> None:
            if released.is_set():
                return
            released.set()
            with self._lock:
                run = self._running.pop(key)
                self._by_user[user] -= 1
                self._by_stage[stage] -= 1
            self.durations.record(verb, time.monotonic() - run.started)

        return release

    def _soonest(self, match: Callable[[_Running], bool], now: float) -> int:
        """Seconds until the first matching run is expected to end (its verb's usual duration)."""
        ends = [r.started + self.durations.mean(r.verb) - now for r in self._running.values() if match(r)]
        return _seconds(min(ends, default=1.0))
