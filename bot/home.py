"""What a person sees on the bot's App Home tab, and who has looked at it recently.

The tab is refreshed for recent viewers whenever alerts, approvals or the audit trail
change (bot/changes.py), so it is read from the database each time: replicas agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Column, DateTime, Engine, Table, Text, func, select
from sqlalchemy.dialects.postgresql import insert

from bot.access import AccessPolicy
from bot.audit import AuditLog, AuditRow
from bot.botdb import metadata
from bot.health.alerts import AlertBook, AlertView

RECENT_AUDIT = 10
VIEWER_TTL = timedelta(days=7)

home_viewers = Table(
    "home_viewers",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("opened_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


@dataclass(frozen=True)
class HomeView:
    viewer: str
    is_operator: bool
    is_approver: bool
    alerts_by_stage: dict[str, list[AlertView]]
    recent_audit: list[AuditRow] | None  # None: the viewer may not read the audit trail
    generated_at: datetime
    notes: list[str] = field(default_factory=list)


class Home:
    def __init__(self, engine: Engine, policy: AccessPolicy, audit: AuditLog, alerts: AlertBook) -> None:
        self.engine = engine
        self.policy = policy
        self.audit = audit
        self.alerts = alerts

    def opened(self, user_id: str) -> HomeView:
        with self.engine.begin() as conn:
            conn.execute(
                insert(home_viewers)
                .values(user_id=user_id)
                .on_conflict_do_update(index_elements=[home_viewers.c.user_id], set_={"opened_at": func.now()})
            )
        return self.view_for(user_id)

    def view_for(self, user_id: str) -> HomeView:
        privileged = self.policy.is_operator(user_id) or self.policy.is_approver(user_id)
        by_stage: dict[str, list[AlertView]] = {}
        for alert in self.alerts.open_alerts():
            if alert.state == "firing":
                by_stage.setdefault(alert.stage, []).append(alert)
        with self.engine.connect() as conn:
            now = conn.execute(select(func.now())).scalar_one()
        return HomeView(
            viewer=user_id,
            is_operator=self.policy.is_operator(user_id),
            is_approver=self.policy.is_approver(user_id),
            alerts_by_stage=dict(sorted(by_stage.items())),
            recent_audit=self.audit.latest(stage=None, limit=RECENT_AUDIT) if privileged else None,
            generated_at=now,
        )

    def recent_viewers(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(home_viewers.c.user_id)
                    .where(home_viewers.c.opened_at > func.now() - VIEWER_TTL)
                    .order_by(home_viewers.c.user_id)
                ).scalars()
            )
