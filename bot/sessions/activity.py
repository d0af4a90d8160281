"""What the session checks see, from pg_stat_activity: long-running queries, sessions idle in a
transaction, and queries waiting on a lock with the sessions that block them (`/mcp sessions`).

Only client backends of the stage's database, never the bot's own sessions (application_name
`mcp-ops...`): the same sessions and thresholds as the health checks (LONG_QUERY_SECONDS,
IDLE_IN_TRANSACTION_SECONDS, BLOCKED_QUERY_SECONDS).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from bot.config import HealthSettings
from bot.health.checks.base import NOT_OURS, OUR_SESSIONS, safe_query_text, session_label
from bot.health.checks.sessions import PREPARED, head_of_chain
from bot.sessions.targets import ACTIVE, BLOCKING, IDLE_IN_TRANSACTION, session_actions

MAX_LISTED = 15

_BACKENDS = text(
    "SELECT pid, usename, application_name, backend_start, xact_start, query_start, state, wait_event_type,"
    " left(query, 1000) AS query, pg_blocking_pids(pid) AS blockers,"
    " extract(epoch FROM now() - query_start) AS query_s, extract(epoch FROM now() - state_change) AS state_s,"
    " extract(epoch FROM now() - xact_start) AS xact_s"
    " FROM pg_stat_activity"
    " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND datname = current_database()"
    " AND " + NOT_OURS + " ORDER BY coalesce(xact_start, query_start, backend_start)"
)


@dataclass(frozen=True)
class Backend:
    """One session as the listing shows it, with the buttons that act on it (or on its blocker)."""

    category: str  # long | idle | blocked
    label: str  # pid, application, user
    state: str
    seconds: float  # running / idle / waiting for so long
    query: str  # literals blanked, secrets and emails scrubbed
    pid: int
    backend_start: datetime
    blocked_by: list[str] = field(default_factory=list)  # labels of the sessions it waits for
    actions: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class SessionList:
    stage: str
    which: tuple[str, ...]
    backends: list[Backend]
    total: int
    thresholds: dict[str, int]
    sees_all: bool = True  # False: the stage's role lacks pg_read_all_stats and sees only its own sessions


def list_sessions(conn: Connection, stage: str, settings: HealthSettings, which: tuple[str, ...]) -> SessionList:
    """The sessions of the categories in `which` (long, idle, blocked), oldest first."""
    rows = conn.execute(_BACKENDS, {"ours": OUR_SESSIONS}).all()
    by_pid = {r.pid: r for r in rows}
    found: list[Backend] = []
    for r in rows:
        state = r.state or ""
        waiting = r.wait_event_type == "Lock" and (r.query_s or 0) > settings.blocked_s
        # As the checks see it: a query waiting on a lock that long is blocked, not also long-running.
        if "long" in which and state == ACTIVE and (r.query_s or 0) > settings.long_query_s and not waiting:
            found.append(_backend("long", r, r.query_s, session_actions(r, ACTIVE)))
        idle = state.startswith(IDLE_IN_TRANSACTION) and (r.state_s or 0) > settings.idle_in_transaction_s
        if "idle" in which and idle:
            found.append(_backend("idle", r, r.state_s, session_actions(r, IDLE_IN_TRANSACTION)))
        if "blocked" in which and waiting and r.blockers:
            # The buttons act on the head of its chain of lock waits, as the blocked-query alert's do.
            blocker = by_pid.get(head_of_chain(r.blockers[0], by_pid))
            shown = [_blocker_label(b, by_pid) for b in r.blockers]
            actions = session_actions(blocker, BLOCKING) if blocker is not None else ()
            found.append(_backend("blocked", r, r.query_s, actions, shown))
    thresholds = {
        "long": settings.long_query_s,
        "idle": settings.idle_in_transaction_s,
        "blocked": settings.blocked_s,
    }
    sees_all = bool(conn.execute(text("SELECT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')")).scalar())
    return SessionList(stage, which, found[:MAX_LISTED], len(found), thresholds, sees_all)


def _blocker_label(pid: int, by_pid: dict[int, Any]) -> str:
    if pid == PREPARED:
        return "a prepared transaction"
    return session_label(by_pid[pid]) if pid in by_pid else f"pid {pid}"


def _backend(
    category: str,
    row: Any,
    seconds: float | None,
    actions: tuple[dict[str, Any], ...],
    blocked_by: list[str] | None = None,
) -> Backend:
    return Backend(
        category=category,
        label=session_label(row),
        state=row.state or "",
        seconds=float(seconds or 0),
        query=safe_query_text(row.query, 200),
        pid=row.pid,
        backend_start=row.backend_start,
        blocked_by=blocked_by or [],
        actions=actions,
    )


def blocked_sessions(conn: Connection) -> int:
    """Sessions of this database waiting for a lock another session holds right now."""
    return int(
        conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND cardinality(pg_blocking_pids(pid)) > 0"
            )
        ).scalar_one()
    )
