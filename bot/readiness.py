"""Readiness of the bot's dependencies for a load balancer: the bot database and each stage.

Every dependency is pinged at once, each bounded by the stage connect timeout, so several
dead stages cost one timeout rather than one each; the report is cached for a moment so a
burst of probes does not become a burst of connections.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from sqlalchemy import Engine, text

from bot.botdb import reading
from bot.errors import UserFacingError
from bot.stages import Stage

CACHE_SECONDS = 2.0


@dataclass(frozen=True)
class Readiness:
    bot_database: str
    stages: dict[str, str] = field(default_factory=dict)
    draining: bool = False

    @property
    def ready(self) -> bool:
        return self.bot_database == "ok" and not self.draining

    def as_dict(self) -> dict[str, object]:
        status = "draining" if self.draining else ("ready" if self.ready else "not ready")
        return {"status": status, "bot_database": self.bot_database, "stages": dict(self.stages)}


def _ping_bot(engine: Engine) -> str:
    try:
        with reading(engine) as conn:
            conn.execute(text("SELECT 1"))
    except Exception:
        return "unreachable"
    return "ok"


def _ping_stage(stage: Stage) -> str:
    try:
        return f"ok ({stage.ping():.0f} ms)"
    except UserFacingError:
        return "unreachable"
    except Exception:
        return "error"


class ReadinessProbe:
    def __init__(
        self,
        bot_engine: Engine,
        stages: Mapping[str, Stage],
        *,
        timeout_s: float,
        draining: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bot_engine = bot_engine
        self.stages = stages
        self.timeout_s = timeout_s
        self.draining = draining
        self.clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, Readiness] | None = None

    def check(self) -> Readiness:
        draining = self.draining()
        with self._lock:
            if self._cached is not None and self.clock() - self._cached[0] < CACHE_SECONDS:
                cached = self._cached[1]
                return Readiness(cached.bot_database, cached.stages, draining)
            report = self._probe()
            self._cached = (self.clock(), report)
            return Readiness(report.bot_database, report.stages, draining)

    def _probe(self) -> Readiness:
        pool = ThreadPoolExecutor(max_workers=len(self.stages) + 1, thread_name_prefix="readyz")
        try:
            bot: Future[str] = pool.submit(_ping_bot, self.bot_engine)
            stages = {name: pool.submit(_ping_stage, stage) for name, stage in self.stages.items()}
            wait([bot, *stages.values()], timeout=self.timeout_s + 1)
            return Readiness(
                bot_database=bot.result() if bot.done() else "unreachable (timed out)",
                stages={name: f.result() if f.done() else "unreachable (timed out)" for name, f in stages.items()},
            )
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
