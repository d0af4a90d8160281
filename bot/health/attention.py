"""People on an alert: Acknowledge (someone owns it) and Snooze (quiet for 1, 4 or 24 hours).

Acknowledged: no more reminders; the alert still escalates and resolves. Snoozed: no reminders and no
posts for the alert's (stage, check, object) until then, so one that resolves and fires again stays quiet
too; an escalation to critical ends the snooze (bot/health/alerts.py). Both are audited under the person
who clicked, and the alert's message is rewritten to say who did it. A click on an alert that no longer
exists (an old message, a crafted payload) is refused and audited as `not_found`, like a request's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError

from bot.audit import AuditEntry
from bot.errors import BotDatabaseUnreachable, CommandError
from bot.health.alerts import AlertBook, alerts
from bot.health.messages import SNOOZE_HOURS

log = logging.getLogger(__name__)

NOT_RECORDED = "the bot database could not record that, so nothing changed; try again shortly"


@dataclass(frozen=True)
class AttentionOutcome:
    """What a click did: acknowledged, snoozed, already (acknowledged by `who`), resolved, missing."""

    outcome: str
    stage: str | None = None
    who: str | None = None
    until: datetime | None = None


class AlertAttention:
    def __init__(self, book: AlertBook) -> None:
        self.book = book

    def snooze(self, alert_id: int, user_id: str, hours: int) -> AttentionOutcome:
        if hours not in SNOOZE_HOURS:
            raise CommandError(f"a snooze lasts {', '.join(f'{h} h' for h in SNOOZE_HOURS)}")
        return self._recorded(alert_id, user_id, hours)

    def acknowledge(self, alert_id: int, user_id: str) -> AttentionOutcome:
        return self._recorded(alert_id, user_id, None)

    def denied(self, alert_id: int, user_id: str, action: str, reason: str) -> None:
        """Audit a click refused for lack of the right (`action`: acknowledge or snooze); the refusal is said
        whether or not the bot database could keep it."""
        try:
            with self.book.engine.begin() as conn:
                row = conn.execute(select(alerts).where(alerts.c.id == alert_id)).first()
                if row is not None:
                    self.book.audit_alert(conn, row, "denied", {"click": action, "reason": reason}, actor=user_id)
        except SQLAlchemyError:
            log.warning("refused alert click not audited: bot database unavailable", exc_info=True)

    def _recorded(self, alert_id: int, user_id: str, hours: int | None) -> AttentionOutcome:
        """The click and its audit row commit together, or neither does (BotDatabaseUnreachable, in words)."""
        try:
            outcome = self._attend(alert_id, user_id, hours)
        except SQLAlchemyError as exc:
            log.warning("alert click not recorded: bot database unavailable", exc_info=True)
            raise BotDatabaseUnreachable(NOT_RECORDED) from exc
        if outcome.outcome == "missing":  # nothing changed: audited like any refused click, best effort
            action = "acknowledge" if hours is None else "snooze"
            detail = {"click": action, "alert_id": alert_id}
            self.book.audit.record(
                AuditEntry(user_id, "click", "not_found", args=f"{action} alert #{alert_id}", detail=detail)
            )
        return outcome

    def _attend(self, alert_id: int, user_id: str, hours: int | None) -> AttentionOutcome:
        outcome = "acknowledged" if hours is None else "snoozed"
        with self.book.engine.begin() as conn:
            row = conn.execute(select(alerts).where(alerts.c.id == alert_id).with_for_update()).first()
            if row is None:
                return AttentionOutcome("missing")
            if row.state == "resolved":
                return AttentionOutcome("resolved", row.stage)
            extra: dict[str, Any] = {}
            if hours is None:
                if row.acknowledged_by:
                    return AttentionOutcome("already", row.stage, row.acknowledged_by)
                values: dict[str, Any] = {"acknowledged_by": user_id, "acknowledged_at": func.now()}
            else:
                until = conn.execute(select(func.now() + timedelta(hours=hours))).scalar_one()
                values = {"snoozed_until": until, "snoozed_by": user_id}
                extra = {"hours": hours, "until": until.isoformat()}
            shown = row.channel is not None or row.post_outbox_id is not None
            row = conn.execute(
                update(alerts).where(alerts.c.id == alert_id).values(needs_update=shown, **values).returning(alerts)
            ).one()
            self.book.audit_alert(conn, row, outcome, extra, actor=user_id)
        self.book.sync()
        return AttentionOutcome(outcome, row.stage, user_id, row.snoozed_until)
