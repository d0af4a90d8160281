"""How long work reports while it runs, without knowing about Slack.

A handler passes a `Progress` (one that posts and edits a Slack message); the domain calls
`start` once, `update` as work advances (throttled here), and hands the final edit back as
an outbox call so it is written in the same transaction as the outcome it reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class MessageRef:
    channel: str
    ts: str


class Progress(Protocol):
    def start(self, state: Any) -> MessageRef | None:
        """Post the status message; None if it could not be posted (the work goes on regardless)."""
        ...

    def update(self, state: Any) -> None:
        """Edit the status message; best effort."""
        ...

    def final_call(self, state: Any) -> tuple[str, dict[str, Any]] | None:
        """The Web API call (method, payload) that shows the final state, for the durable outbox."""
        ...


class NullProgress:
    def start(self, state: Any) -> MessageRef | None:
        return None

    def update(self, state: Any) -> None:
        return None

    def final_call(self, state: Any) -> tuple[str, dict[str, Any]] | None:
        return None


class Throttle:
    """Calls `func` at most once per `interval_s`; the first call goes through at once."""

    def __init__(
        self, func: Callable[[], None], interval_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.func = func
        self.interval_s = interval_s
        self.clock = clock
        self._last = float("-inf")
        self.calls = 0

    def __call__(self) -> None:
        now = self.clock()
        if now - self._last >= self.interval_s:
            self._last = now
            self.calls += 1
            self.func()
