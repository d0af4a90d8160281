"""An in-process feed of "something people look at has changed", debounced.

Alerts, approvals and the audit trail publish their kind here after they commit; listeners
(the App Home refresher) get the set of kinds at most once per `delay`, so a burst of
changes costs one refresh. Each replica refreshes from the database, so they agree.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

Listener = Callable[[frozenset[str]], None]


class ChangeFeed:
    def __init__(self, delay: float = 2.0) -> None:
        self.delay = delay
        self._listeners: list[Listener] = []
        self._pending: set[str] = set()
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._closed = False

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def publish(self, kind: str) -> None:
        with self._lock:
            if self._closed or not self._listeners:
                return
            self._pending.add(kind)
            if self._timer is None:
                self._timer = threading.Timer(self.delay, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        with self._lock:
            kinds = frozenset(self._pending)
            self._pending.clear()
            self._timer = None
        if not kinds:
            return
        for listener in list(self._listeners):
            try:
                listener(kinds)
            except Exception:
                log.exception("change listener failed", extra={"kinds": sorted(kinds)})

    def close(self) -> None:
        with self._lock:
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
