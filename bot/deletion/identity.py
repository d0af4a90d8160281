"""A request is bound to what its approvers saw: the server's primary key and the scope's snapshot.

A slug is a name, and names are reused: between a request and its approval the server can be
deleted and another organisation's new server can take its slug. So a delete request stores
the server's primary key (`server_key`) and the snapshot of counts with its hash; the executing
transaction plans from the key (bot/deletion/plan.py: `build_plan(server_key=...)`) and compares:

- the keyed row is gone (`ServerGone`) or no longer carries the approved slug (`ServerChanged`):
  the request goes stale, nothing is deleted and no successor is proposed; `stale_reason` adds
  which server the slug names now, if any;
- the counts moved beyond the allowed drift, or the set of tables (and edges) in the plan is not
  the approved one: `snapshot_changes` lists them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection

from bot.deletion.impact import compare_snapshots, snapshot_hash
from bot.deletion.plan import ServerChanged, ServerGone, build_plan
from bot.errors import NotFound, UserFacingError

# What a bound server can turn into between approval and execution.
TARGET_CHANGES = (ServerGone, ServerChanged)


class TargetChanged(UserFacingError):
    """The request's target is not what was approved (a backup replaced, a request without a key)."""

    outcome = "stale"


def same_target(approved: Mapping[str, Any], found: Mapping[str, Any]) -> bool:
    """A request without a stored key (made before keys were stored) never matches: it goes stale."""
    return bool(approved) and dict(approved) == dict(found)


def stale_reason(conn: Connection, slug: str, exc: UserFacingError) -> str:
    """The engine's words for a bound server that changed, plus which server the slug names now."""
    try:
        other = build_plan(conn, slug).server_key
    except NotFound:
        return exc.message
    words = ", ".join(f"{k}={v}" for k, v in sorted(other.items()))
    return f"{exc.message}; `{slug}` now names another server ({words})"


def snapshot_changes(
    approved: Mapping[str, int],
    fresh: Mapping[str, int],
    drift_percent: float = 0.0,
    *,
    approved_hash: str | None = None,
) -> list[str]:
    """What differs between the approved snapshot and fresh counts, in words; empty when they agree.

    Identical hashes agree. Otherwise the tables (and edges) must be the same set, and each count
    within `drift_percent` of the approved one. A stored snapshot that does not match its own hash
    was altered after approval, and never agrees.
    """
    if approved_hash is not None:
        if snapshot_hash(dict(approved)) != approved_hash:
            return ["the approved snapshot does not match its hash (the request was altered)"]
        if snapshot_hash(dict(fresh)) == approved_hash:
            return []
    gone = [f"{key}: no longer in the plan" for key in sorted(set(approved) - set(fresh))]
    kept = {key: rows for key, rows in approved.items() if key in fresh}
    return gone + compare_snapshots(kept, dict(fresh), drift_percent)
