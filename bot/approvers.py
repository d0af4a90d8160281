"""Who is in APPROVERS right now: user IDs as configured, user-group IDs (S...) expanded.

Groups are resolved through `usergroups.users.list` and cached briefly, so a click is not a
Slack round trip each time yet someone removed from a group stops approving within a minute.
A group that cannot be resolved counts as empty (fail closed) and is not cached.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

CACHE_SECONDS = 60.0


@dataclass(frozen=True)
class Membership:
    is_approver: bool
    unresolved: tuple[str, ...] = ()  # groups that could not be read just now


class ApproverDirectory:
    def __init__(
        self,
        configured: frozenset[str],
        client: Any,
        *,
        ttl_s: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.users = frozenset(i for i in configured if not i.startswith("S"))
        self.groups = tuple(sorted(i for i in configured if i.startswith("S")))
        self.client = client
        self.ttl_s = ttl_s
        self.clock = clock
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

    def _members(self, group: str) -> frozenset[str] | None:
        now = self.clock()
        with self._lock:
            cached = self._cache.get(group)
            if cached and now - cached[0] < self.ttl_s:
                return cached[1]
        try:
            response = self.client.usergroups_users_list(usergroup=group)
            members = frozenset(str(u) for u in (response.get("users") or []))
        except Exception as exc:  # SlackApiError or a transport error: unknown membership
            log.warning("user group could not be resolved", extra={"group": group, "error": type(exc).__name__})
            return None
        with self._lock:
            self._cache[group] = (now, members)
        return members

    def membership(self, user_id: str) -> Membership:
        if user_id in self.users:
            return Membership(True)
        unresolved: list[str] = []
        for group in self.groups:
            members = self._members(group)
            if members is None:
                unresolved.append(group)
            elif user_id in members:
                return Membership(True)
        return Membership(False, tuple(unresolved))
