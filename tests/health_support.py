"""Shared helpers for the health tests: a runtime whose health jobs run only when a test says so.

`health_factory` yields `make(stages, **env)`; a test module wraps it in its own `make_health` fixture.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from sqlalchemy import text

from bot.config import load_settings
from bot.console.localslack import LocalSlack, SlackCall
from bot.health.monitor import job_name
from bot.runtime import Runtime
from handlers import render_alerts
from tests.conftest import ALERT_CHANNEL, base_env

T0 = 1_900_000_000.0  # slot times are ours to choose; they only have to move forward


class Health:
    """A runtime with health jobs registered but no background workers: every run is explicit."""

    def __init__(self, runtime: Runtime, slack: LocalSlack) -> None:
        self.runtime = runtime
        self.slack = slack
        self.slots: dict[str, int] = {}

    def run(self, group: str, stage: str = "dev", *, slot: int | None = None) -> bool:
        """Run `group` on `stage` in its next slot (or slot number `slot`), then deliver what it queued."""
        name = job_name(stage, group)
        index = self.slots.get(name, 0) if slot is None else slot
        self.slots[name] = index + 1
        interval = self.runtime.scheduler.jobs[name].interval_s
        ran = self.runtime.scheduler.run_slot(name, now=T0 + index * interval)
        self.deliver()
        return ran

    def deliver(self) -> None:
        self.runtime.outbox.drain()

    def sync(self) -> None:
        self.runtime.health.book.sync()
        self.deliver()

    def posts(self, channel: str = ALERT_CHANNEL) -> list[SlackCall]:
        return [
            c
            for c in self.slack.calls_to("chat.postMessage")
            if c.payload.get("channel") == channel and not c.payload.get("thread_ts")
        ]

    def replies(self) -> list[SlackCall]:
        return [c for c in self.slack.calls_to("chat.postMessage") if c.payload.get("thread_ts")]

    def updates(self) -> list[SlackCall]:
        return self.slack.calls_to("chat.update")

    def alert_rows(self) -> list[Any]:
        with self.runtime.bot_engine.connect() as conn:
            return list(conn.execute(text("SELECT * FROM alerts ORDER BY id")))

    def audit(self, command: str = "alert") -> list[Any]:
        with self.runtime.bot_engine.connect() as conn:
            return list(conn.execute(text("SELECT * FROM audit_log WHERE command = :c ORDER BY id"), {"c": command}))


def health_factory(bot_db_url: str, fake_slack: LocalSlack) -> Iterator[Callable[..., Health]]:
    """Yields `make(stages, **env)`: a Health on a runtime with health jobs on; closes them all after."""
    runtimes: list[Runtime] = []

    def make(stages: dict[str, str], **overrides: str) -> Health:
        env = base_env(bot_db_url=bot_db_url, stages=stages, slack=fake_slack)
        env.update({"HEALTH_CHECKS": "on", **overrides})
        runtime = Runtime(load_settings(env))
        render_alerts.install(runtime)  # no Bolt app here: the alert book is given its drawing directly
        runtime.start(workers=False)
        runtimes.append(runtime)
        return Health(runtime, fake_slack)

    yield make
    for runtime in runtimes:
        runtime.close()


def posted_texts(calls: list[SlackCall]) -> list[str]:
    out = []
    for call in calls:
        parts = [str(call.payload.get("text", ""))]
        for block in call.payload.get("blocks") or []:
            if "text" in block:
                parts.append(block["text"]["text"])
            for element in block.get("elements", []):
                label = element.get("text", "")
                parts.append(label if isinstance(label, str) else label.get("text", ""))
        out.append("\n".join(parts))
    return out


def sleep_statements(url: str, count: int, seconds: float = 0.05) -> None:
    with psycopg.connect(url, autocommit=True, application_name="platform-api") as conn:
        for _ in range(count):
            conn.execute(f"SELECT pg_sleep({seconds})")


SLOW = {"SLOW_QUERY_MS": "30", "SLOW_QUERY_MIN_CALLS": "3"}
