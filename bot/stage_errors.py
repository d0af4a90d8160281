"""Stage database errors worded for people: unreachable, timed out, a lock not taken, a concurrent change,
a privilege the stage's role lacks. The driver's own text is never shown (it can name hosts and roles).

Used by bot/stages.py around every transaction, and by what words a stage's error itself (health checks).
"""

from __future__ import annotations

import re

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from bot.errors import ConcurrentChange, QueryTimeout, StageRefused, StageUnavailable, UserFacingError
from bot.pii import scrub

# SQLSTATEs that mean "the statement was stopped", not "the server is gone".
QUERY_CANCELED = "57014"
_LOCKED_TUPLE = re.compile(r'^while \w+ tuple \(\d+,\d+\) in relation "(.{1,63})"$')
LOCK_NOT_AVAILABLE = "55P03"
SERIALIZATION_FAILURES = ("40001", "40P01")  # concurrent update, deadlock: the transaction is rolled back
INSUFFICIENT_PRIVILEGE = "42501"


def connect_failure_reason(message: str) -> str:
    lowered = message.lower()
    for needle, reason in (
        ("timeout expired", "timed out"),
        ("timed out", "timed out"),
        ("connection refused", "connection refused"),
        ("password authentication failed", "authentication failed"),
        ("authentication failed", "authentication failed"),
        ("no pg_hba.conf entry", "access denied by pg_hba.conf"),
        ("does not exist", "database or role does not exist"),
        ("could not translate host name", "unknown host"),
        ("name or service not known", "unknown host"),
        ("the database system is starting up", "database is starting up"),
        ("the database system is shutting down", "database is shutting down"),
        ("too many clients", "too many connections"),
        ("terminating connection", "connection terminated by the server"),
        ("server closed the connection", "connection lost"),
        ("consuming input failed", "connection lost"),
        ("connection is lost", "connection lost"),
        ("ssl", "SSL negotiation failed"),
    ):
        if needle in lowered:
            return reason
    return "connection failed"


def describe_db_error(exc: BaseException, stage: str, *, reading: bool = False) -> UserFacingError | None:
    """Map a driver error to a short message, or None when it is a bug to report as such.

    The driver's own text is never shown: it can contain host names and user names. `reading`
    (a read-only transaction): a privilege the stage's role lacks is said, with the server's
    primary message (`permission denied for table t`: it names the object, not hosts or roles);
    a write's callers word that themselves (what grant the operation needs).
    """
    if isinstance(exc, PoolTimeout):
        return StageUnavailable(f"stage {stage} is busy: no free database connection, try again shortly")
    if not isinstance(exc, DBAPIError):
        return None
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate == QUERY_CANCELED:
        return QueryTimeout(f"the query on stage {stage} ran past its time limit and was cancelled")
    if sqlstate == LOCK_NOT_AVAILABLE:
        return QueryTimeout(
            f"stage {stage}: a lock{_locked_relation(exc)} could not be taken within lock_timeout"
            " (another session holds it)"
        )
    if sqlstate in SERIALIZATION_FAILURES:
        return ConcurrentChange(f"stage {stage}: another session changed the same rows at the same time")
    if reading and sqlstate == INSUFFICIENT_PRIVILEGE:
        primary = getattr(getattr(exc.orig, "diag", None), "message_primary", None) or "permission denied"
        return StageRefused(
            f"stage {stage}: the database refused: {scrub(primary)[:200]} (the stage's role lacks a privilege)"
        )
    if isinstance(exc, OperationalError) or exc.connection_invalidated:
        if sqlstate and sqlstate.startswith("57P"):
            return StageUnavailable(f"stage {stage} is unreachable (the server is shutting down or restarting)")
        return StageUnavailable(f"stage {stage} is unreachable ({connect_failure_reason(str(exc.orig))})")
    return None


def lock_wait_table(context: str | None) -> str | None:
    """The table whose row lock a statement waited for past lock_timeout, from the error's context, when
    the server names it (a row lock does: `while deleting tuple (0,2) in relation "t"`; a table lock not)."""
    found = _LOCKED_TUPLE.search(context.splitlines()[0]) if context else None
    return found.group(1) if found else None


def _locked_relation(exc: DBAPIError) -> str:
    table = lock_wait_table(getattr(getattr(exc.orig, "diag", None), "context", None))
    return f" on `{table}`" if table else ""
