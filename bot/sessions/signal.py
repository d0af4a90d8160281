"""Cancel a backend's query or terminate its session, only if it is still the backend people saw.

`look` finds the target by identity (bot/sessions/targets.py) and says why the bot would refuse
it: one of the bot's own sessions, a superuser's, a replication or other non-client backend, or a
role the stage's role may not signal (then the missing grant is named). `send` re-checks and
signals in one statement (`SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE <identity>`),
so a pid whose session ended and was reused by another is never signalled: "already gone, nothing
sent". Afterwards it re-reads pg_stat_activity until the target stopped (a few seconds at most)
and counts the sessions waiting on locks before and after.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from bot.errors import CommandError, UserFacingError
from bot.health.checks.base import safe_query_text, session_label
from bot.pii import scrub
from bot.sessions.activity import blocked_sessions
from bot.sessions.targets import ACTIVE, BLOCKING, IDLE_IN_TRANSACTION
from bot.stages import APPLICATION_NAME, Stage

FUNCTIONS = {"cancel": "pg_cancel_backend", "terminate": "pg_terminate_backend"}
SIGNAL_STATEMENT_MS = 5000
AFTER_WAIT_S = 5.0
INSUFFICIENT_PRIVILEGE = "42501"

# The target by identity. pg_stat_activity is read once per transaction (a snapshot, kept until
# `pg_stat_clear_snapshot()`): the signalling statement clears it first, so its WHERE reads the
# backends as they are at that very moment, not as the refusal checks saw them a moment before.
_IDENTITY = (
    " a.pid = :pid AND a.backend_start = CAST(:backend_start AS timestamptz)"
    " AND (CAST(:query_start AS timestamptz) IS NULL OR a.query_start = CAST(:query_start AS timestamptz))"
    " AND (CAST(:xact_start AS timestamptz) IS NULL OR a.xact_start = CAST(:xact_start AS timestamptz))"
    " AND CASE CAST(:expect AS text)"
    f"  WHEN '{ACTIVE}' THEN a.state = 'active'"
    f"  WHEN '{IDLE_IN_TRANSACTION}' THEN a.state LIKE 'idle in transaction%'"
    f"  WHEN '{BLOCKING}' THEN EXISTS (SELECT 1 FROM pg_stat_activity w WHERE a.pid = ANY (pg_blocking_pids(w.pid)))"
    "  ELSE false END"
)
_LOOK = text(
    "SELECT a.pid, a.usename, a.application_name, a.backend_type, a.state, a.datname = current_database() AS here,"
    " left(a.query, 1000) AS query, coalesce(r.rolsuper, false) AS superuser, current_user AS me,"
    " quote_ident(current_user) AS me_sql,"
    " a.pid = pg_backend_pid() AS myself,"
    # What PostgreSQL checks: the privileges (not a NOINHERIT membership) of pg_signal_backend or of the role.
    " (pg_has_role(current_user, 'pg_signal_backend', 'USAGE')"
    "  OR (a.usesysid IS NOT NULL AND pg_has_role(current_user, a.usesysid, 'USAGE'))) AS may_signal,"
    " (SELECT count(*) FROM pg_stat_activity w WHERE a.pid = ANY (pg_blocking_pids(w.pid))) AS blocking"
    " FROM pg_stat_activity a LEFT JOIN pg_roles r ON r.oid = a.usesysid WHERE" + _IDENTITY
)

_HIDDEN = text(
    "SELECT pid, backend_start IS NULL AS hidden, current_user AS me, quote_ident(current_user) AS me_sql"
    " FROM pg_stat_activity WHERE pid = :pid"
)
_STATE = text("SELECT state FROM pg_stat_activity WHERE pid = :pid AND backend_start = CAST(:bs AS timestamptz)")


class Gone(UserFacingError):
    """The target ended or changed (a new query, a new session on the same pid): nothing was sent."""

    outcome = "stale"


class Refused(UserFacingError):
    outcome = "denied"


@dataclass(frozen=True)
class BackendNow:
    """The target as it is right now, and whether the bot may signal it."""

    pid: int
    label: str
    state: str
    query: str
    blocking: int  # sessions waiting for it
    refusal: str | None
    role: str  # the stage's role (current_user)
    role_sql: str  # as a GRANT names it (quoted where it must be)


@dataclass(frozen=True)
class SignalReport:
    how: str  # cancel | terminate
    pid: int
    label: str
    ended: bool  # the query (cancel) or the session (terminate) is no longer there
    state_after: str  # what pg_stat_activity shows for the pid afterwards
    blocked_before: int
    blocked_after: int

    def to_json(self) -> dict[str, Any]:
        return {
            "signal": self.how,
            "pid": self.pid,
            "label": self.label,
            "ended": self.ended,
            "state_after": self.state_after,
            "blocked_before": self.blocked_before,
            "blocked_after": self.blocked_after,
        }


def _params(target: dict[str, Any]) -> dict[str, Any]:
    """The identity's bound values; CommandError for a value the bot did not make (a crafted button)."""
    pid, expect = target.get("pid"), target.get("expect")
    stamps = {key: target.get(key) for key in ("backend_start", "query_start", "xact_start")}
    if (
        not isinstance(pid, int)
        or isinstance(pid, bool)
        or not isinstance(stamps["backend_start"], str)
        or expect not in (ACTIVE, IDLE_IN_TRANSACTION, BLOCKING)
        or not all(v is None or _stamp(v) for v in stamps.values())
    ):
        raise CommandError("that button's data is not readable; look at the alert or the list again")
    return {"pid": pid, "expect": expect, **stamps}


def _stamp(value: Any) -> bool:
    """A timestamp as bot/sessions/targets.py writes it (ISO 8601, with its offset)."""
    try:
        return isinstance(value, str) and len(value) <= 40 and datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def describe(target: dict[str, Any]) -> str:
    doing = {ACTIVE: "its query", IDLE_IN_TRANSACTION: "its idle transaction", BLOCKING: "its lock"}
    return f"pid {target.get('pid')} ({doing.get(str(target.get('expect')), 'its session')})"


def _refusal(row: Any, how: str) -> str | None:
    who = f"pid {row.pid}"
    if row.myself or ((row.application_name or "").startswith(APPLICATION_NAME) and row.usename == row.me):
        return f"{who} is one of the bot's own sessions; the bot never signals itself"
    if row.backend_type != "client backend":
        kind = "a replication backend" if "wal" in (row.backend_type or "") else f"a {row.backend_type}"
        return f"{who} is {kind}, not a client session; signalling it could break the server, so the bot won't"
    if not row.here:
        return f"{who} is connected to another database than this stage's"
    if row.superuser:
        return f"{who} runs as a superuser (`{scrub(row.usename or '?')}`); the bot does not signal superuser sessions"
    if not row.may_signal:
        return (
            f"the stage's role `{row.me}` may not signal {who} (role `{scrub(row.usename or '?')}`): it needs "
            f"`pg_signal_backend` (as an admin: `GRANT pg_signal_backend TO {row.me_sql};`)"
        )
    return None


def look(conn: Connection, target: dict[str, Any], how: str) -> BackendNow | None:
    """The target if it is still the same backend doing the same thing; None if it ended or changed."""
    row = conn.execute(_LOOK, _params(target)).first()
    if row is None:
        return None
    return BackendNow(
        pid=row.pid,
        label=session_label(row),
        state=row.state or "",
        query=safe_query_text(row.query, 200),
        blocking=int(row.blocking or 0),
        refusal=_refusal(row, how),
        role=row.me,
        role_sql=row.me_sql,
    )


def _hidden(conn: Connection, target: dict[str, Any]) -> str | None:
    """The pid is there but the stage's role may not see its activity, so it can't tell it is the same session."""
    row = conn.execute(_HIDDEN, {"pid": _params(target)["pid"]}).first()
    if row is None or not row.hidden:
        return None
    return (
        f"the stage's role `{row.me}` can't see what pid {row.pid} is doing, so it can't check it is the same "
        f"session: it needs `pg_read_all_stats` (as an admin: `GRANT pg_read_all_stats TO {row.me_sql};`)"
    )


def current(stage: Stage, target: dict[str, Any], how: str) -> BackendNow:
    """The target now, for a plan: Gone or Refused (a UserFacingError) if it can't be signalled."""
    with stage.read() as conn:
        found = look(conn, target, how)
        hidden = _hidden(conn, target) if found is None else None
    if hidden:
        raise Refused(hidden)
    if found is None:
        raise Gone(f"{describe(target)} is already gone or changed, nothing sent")
    if found.refusal:
        raise Refused(found.refusal)
    return found


def send(
    stage: Stage, target: dict[str, Any], how: str, *, lock_timeout_ms: int, work_name: str | None = None
) -> SignalReport:
    """Re-check and signal in one statement, then report what changed. Raises Gone or Refused."""
    function = FUNCTIONS[how]
    with stage.read() as conn:
        before = blocked_sessions(conn)
    found: BackendNow | None = None
    try:
        with stage.write(
            statement_timeout_ms=SIGNAL_STATEMENT_MS, lock_timeout_ms=lock_timeout_ms, application_name=work_name
        ) as conn:
            found = look(conn, target, how)
            if found is None:
                raise Gone(f"{describe(target)} is already gone or changed, nothing sent")
            if found.refusal:
                raise Refused(found.refusal)
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            sent = conn.execute(
                text(f"SELECT {function}(a.pid) FROM pg_stat_activity a WHERE" + _IDENTITY), _params(target)
            ).scalar()
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == INSUFFICIENT_PRIVILEGE:
            role, role_sql = (found.role, found.role_sql) if found is not None else ("?", "<the stage's role>")
            raise Refused(
                f"the stage's role `{role}` may not signal pid {target['pid']}: it needs `pg_signal_backend` "
                f"(as an admin: `GRANT pg_signal_backend TO {role_sql};`)"
            ) from exc
        raise
    if sent is None:
        raise Gone(f"{describe(target)} is already gone or changed, nothing sent")
    ended, state_after = _wait_until_stopped(stage, target, how)
    with stage.read() as conn:
        after = blocked_sessions(conn)
    return SignalReport(how, found.pid, found.label, ended, state_after, before, after)


def _wait_until_stopped(stage: Stage, target: dict[str, Any], how: str) -> tuple[bool, str]:
    """Re-read pg_stat_activity (a new snapshot each time) until the target stopped, or AFTER_WAIT_S passed."""
    deadline = time.monotonic() + AFTER_WAIT_S
    while True:
        with stage.read() as conn:
            still = look(conn, target, how)
            row = conn.execute(_STATE, {"pid": int(target["pid"]), "bs": target.get("backend_start")}).first()
        state = "gone" if row is None else (row.state or "unknown")
        if still is None or time.monotonic() >= deadline:
            return still is None, state
        time.sleep(0.1)
