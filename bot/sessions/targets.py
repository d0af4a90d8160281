"""A backend named by identity, not by its pid alone, and the buttons a finding about it carries.

A pid is reused by a new session once the old one ends, so a target is the pid *and* its
`backend_start`, plus the start of the query (`query_start`) or of the transaction
(`xact_start`) that made it worth signalling, and what it was doing (`expect`: `active`, `idle in
transaction`, or `blocking` another session). The signal is sent only if all of them still hold.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

ACTIVE = "active"
IDLE_IN_TRANSACTION = "idle in transaction"
BLOCKING = "blocking"

CANCEL_LABEL = "Cancel query"
TERMINATE_LABEL = "Terminate session"


def _stamp(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def backend_target(row: Any, expect: str) -> dict[str, Any]:
    """The identity of the backend in `row` (a pg_stat_activity row), and what it must still be doing."""
    target: dict[str, Any] = {
        "pid": int(row.pid),
        "backend_start": _stamp(row.backend_start),
        "expect": expect,
    }
    if expect == ACTIVE:
        target["query_start"] = _stamp(row.query_start)
    else:
        target["xact_start"] = _stamp(getattr(row, "xact_start", None))
    return target


def session_actions(row: Any, expect: str) -> tuple[dict[str, Any], ...]:
    """The buttons for a backend: Cancel query where there is a query to cancel, Terminate session always.

    Cancel is first (the default advice): it stops the statement and, in a client that rolls back on
    error, releases its locks. Only Terminate helps a session idle in a transaction.
    """
    if row is None or row.backend_start is None:
        return ()
    state = str(getattr(row, "state", "") or "")
    target = backend_target(row, expect)
    terminate = {
        "kind": "terminate",
        "label": TERMINATE_LABEL,
        "target": target,
        "confirm": f"End the whole session of pid {row.pid}, rolling back its open transaction? "
        "Sent only if it is still the same session.",
    }
    if expect == ACTIVE or (expect == BLOCKING and state == ACTIVE):
        cancel = {
            "kind": "cancel",
            "label": CANCEL_LABEL,
            "target": target,
            "confirm": f"Cancel the running query of pid {row.pid}? Sent only if it is still the same session "
            "running the same query (a protected stage asks approvers first).",
        }
        return cancel, {**terminate, "confirm": terminate["confirm"] + " Cancel query is usually enough."}
    return (terminate,)
