"""The alerts table, the read-only view of a row, and the snooze an alert inherits from its key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Index,
    Integer,
    Table,
    Text,
    false,
    func,
    select,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB

from bot.botdb import metadata

alerts = Table(
    "alerts",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("stage", Text, nullable=False),
    Column("check_name", Text, nullable=False),
    Column("object", Text, nullable=False),
    Column("state", Text, nullable=False),  # pending | firing | resolved
    Column("severity", Text, nullable=False),
    Column("title", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Column("advice", Text, nullable=False, server_default=""),
    Column("remind", Boolean, nullable=False, server_default=true()),
    Column("consecutive", Integer, nullable=False, server_default="1"),  # runs in a row that saw it
    Column("absent", Integer, nullable=False, server_default="0"),  # runs in a row that did not, while firing
    # The highest severity the channel has been told (first post, escalation replies): going back down
    # and up again is an update of the message, not another broadcast.
    Column("announced", Text),
    Column("first_seen_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_seen_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("fired_at", DateTime(timezone=True)),
    Column("resolved_at", DateTime(timezone=True)),
    Column("last_notified_at", DateTime(timezone=True)),
    Column("reminders", Integer, nullable=False, server_default="0"),
    # The Slack message this alert owns: known once the outbox has delivered its first post.
    Column("channel", Text),
    Column("ts", Text),
    Column("post_outbox_id", BigInteger),
    # Slack work waiting for `sync`: rewrite the message, and/or reply in its thread.
    Column("needs_update", Boolean, nullable=False, server_default=false()),
    Column("reply_due", Text),  # reminder | escalated | resolved
    # Acknowledge: someone owns it (no more reminders; it still resolves). Snooze: no reminders or posts
    # until then, for this alert and any that fires again with the same (stage, check, object).
    Column("acknowledged_by", Text),
    Column("acknowledged_at", DateTime(timezone=True)),
    Column("snoozed_until", DateTime(timezone=True)),
    Column("snoozed_by", Text),
    Column("held", Boolean, nullable=False, server_default=false()),  # fired while snoozed: not posted yet
    Column("actions", JSONB, nullable=False, server_default="[]"),  # its finding's operation buttons
    Index(
        "alerts_open_fingerprint",
        "stage",
        "check_name",
        "object",
        unique=True,
        postgresql_where=text("state <> 'resolved'"),
    ),
    Index("alerts_unsynced", "id", postgresql_where=text("needs_update OR reply_due IS NOT NULL")),
    Index("alerts_stage_state", "stage", "state"),
)


@dataclass(frozen=True)
class AlertView:
    id: int
    stage: str
    check: str
    object: str
    state: str
    severity: str
    title: str
    consecutive: int
    first_seen_at: datetime
    last_seen_at: datetime
    fired_at: datetime | None


def alert_view(row: Any) -> AlertView:
    return AlertView(
        id=row.id,
        stage=row.stage,
        check=row.check_name,
        object=row.object,
        state=row.state,
        severity=row.severity,
        title=row.title,
        consecutive=row.consecutive,
        first_seen_at=row.first_seen_at,
        last_seen_at=row.last_seen_at,
        fired_at=row.fired_at,
    )


def inherited_snooze(conn: Connection, stage: str, check: str, obj: str, now: datetime) -> dict[str, Any]:
    """A snooze outlives the alert it was set on: an alert firing again with the same key stays quiet."""
    found = conn.execute(
        select(alerts.c.snoozed_until, alerts.c.snoozed_by)
        .where(
            alerts.c.stage == stage,
            alerts.c.check_name == check,
            alerts.c.object == obj,
            alerts.c.snoozed_until > now,
        )
        .order_by(alerts.c.snoozed_until.desc())
        .limit(1)
    ).first()
    return {"snoozed_until": found.snoozed_until, "snoozed_by": found.snoozed_by} if found else {}
