"""Repeated refusals of one person become one audit post with a count.

Every refusal stays a row in `audit_log` (the durable record); the audit *channel* gets the
first refusal of a (person, command, outcome) at once, and the ones that follow within
`AUDIT_COALESCE_SECONDS` as one summary line with their count when the window is over (posted by
the next refusal after it, or by a scheduled job, whichever comes first). So 40 refused deletes
by a read-only person, or 10 Approve clicks by a stranger, are two posts, not 40 or 10. The
window is a row per key, updated under its row lock, so replicas count into the same window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Column, Connection, DateTime, Integer, Table, Text, func, select, update
from sqlalchemy.dialects.postgresql import insert

from bot.botdb import metadata

COALESCED_OUTCOMES = frozenset({"denied", "rate_limited", "busy", "bad_input"})

audit_coalesce = Table(
    "audit_coalesce",
    metadata,
    Column("actor", Text, primary_key=True),
    Column("command", Text, primary_key=True),
    Column("outcome", Text, primary_key=True),
    Column("window_started_at", DateTime(timezone=True), nullable=False),
    Column("held", Integer, nullable=False, server_default="0"),  # refusals not posted in this window
    Column("stage", Text),  # the latest held refusal's stage
)


@dataclass(frozen=True)
class Held:
    """Refusals of one key that were not posted: `count` of them, the latest on `stage`.

    What each one was typed with is in its audit_log row, not in the summary: the refusals it
    counts may differ, and their arguments may say things about people.
    """

    actor: str
    command: str
    outcome: str
    stage: str | None
    count: int


def _held(row: Any) -> Held:
    return Held(row.actor, row.command, row.outcome, row.stage, row.held)


def admit(
    conn: Connection, actor: str, command: str, outcome: str, stage: str | None, window_s: int
) -> tuple[bool, Held | None]:
    """Count one refusal: (post it now?, the previous window's held refusals to post first)."""
    key = {"actor": actor, "command": command[:100], "outcome": outcome}
    created = conn.execute(
        insert(audit_coalesce)
        .values(**key, window_started_at=func.now(), stage=stage)
        .on_conflict_do_nothing()
        .returning(audit_coalesce.c.actor)
    ).first()
    if created is not None:
        return True, None
    where = [audit_coalesce.c[name] == value for name, value in key.items()]
    row = conn.execute(
        select(audit_coalesce, (audit_coalesce.c.window_started_at > func.now() - timedelta(seconds=window_s)))
        .where(*where)
        .with_for_update()
    ).one()
    if row[-1]:  # inside the window: held back, counted
        conn.execute(update(audit_coalesce).where(*where).values(held=row.held + 1, stage=stage))
        return False, None
    conn.execute(update(audit_coalesce).where(*where).values(window_started_at=func.now(), held=0))
    return True, (_held(row) if row.held else None)


def due(conn: Connection, window_s: int) -> list[Held]:
    """Windows that are over with refusals held back: returned once (another replica skips them)."""
    rows = conn.execute(
        select(audit_coalesce)
        .where(
            audit_coalesce.c.held > 0,
            audit_coalesce.c.window_started_at <= func.now() - timedelta(seconds=window_s),
        )
        .with_for_update(skip_locked=True)
    ).all()
    for row in rows:
        conn.execute(
            update(audit_coalesce)
            .where(
                audit_coalesce.c.actor == row.actor,
                audit_coalesce.c.command == row.command,
                audit_coalesce.c.outcome == row.outcome,
            )
            .values(held=0)
        )
    return [_held(row) for row in rows]
