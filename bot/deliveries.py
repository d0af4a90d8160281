"""Each Slack delivery handled once, across retries and replicas.

Slack retries a request it believes timed out (header `X-Slack-Retry-Num`), with the same
payload: a slash command or an interaction keeps its `trigger_id`, an event its `event_id`.
A changing command claims that key in the bot database, in the same transaction that counts
it against its author's rate limit; every interaction (a click, a submitted form) and every
event claims its own before its listener runs (handlers/retries.py). A retry finds its key
claimed and does nothing. The primary key
makes the claim exactly-once whichever replica each delivery reaches (a retry arriving while
the first claim is uncommitted waits for it).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Column, Connection, DateTime, Engine, Table, Text, delete, func
from sqlalchemy.dialects.postgresql import insert

from bot.botdb import metadata
from bot.errors import UserFacingError

KEEP = timedelta(days=1)  # Slack stops retrying within minutes

slack_deliveries = Table(
    "slack_deliveries",
    metadata,
    Column("key", Text, primary_key=True),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


class DuplicateDelivery(UserFacingError):
    """A retry of a delivery already handled: acknowledged, and nothing else."""

    outcome = "duplicate"


def _claimed(conn: Connection, key: str) -> bool:
    """Insert `key` unless it is there (waiting for an uncommitted claim of it); True if this call did."""
    inserted = conn.execute(
        insert(slack_deliveries).values(key=key[:200]).on_conflict_do_nothing().returning(slack_deliveries.c.key)
    ).first()
    return inserted is not None


def claim(conn: Connection, key: str) -> None:
    """Claim `key` in the caller's transaction, or raise DuplicateDelivery."""
    if not _claimed(conn, key):
        raise DuplicateDelivery("this request was already handled")


def claim_once(engine: Engine, key: str) -> bool:
    """Claim `key` in a transaction of its own: True the first time, False for a delivery seen before."""
    with engine.begin() as conn:
        return _claimed(conn, key)


def prune(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(delete(slack_deliveries).where(slack_deliveries.c.received_at < func.now() - KEEP))
