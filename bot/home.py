"""What a person sees on the bot's App Home tab, and who has looked at it recently.

The tab is refreshed whenever alerts, approvals or the audit trail change (bot/changes.py), read
from the database each time so replicas agree; but only for people who opened it within
HOME_RECENT_MINUTES, and at most once per person per HOME_PUBLISH_INTERVAL_SECONDS: a change (or an
opening of the tab) inside that interval is sent when it ends, and later changes before then replace it
in the outbox (its supersede key), so the last state is what arrives. `published_at` (shared by
replicas) is when the person's latest publish was or will be sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Column, DateTime, Engine, Table, Text, func, select, update
from sqlalchemy.dialects.postgresql import insert

from bot import outbox
from bot.access import AccessPolicy
from bot.approvers import Membership
from bot.audit import AuditLog, AuditRow
from bot.botdb import metadata, reading
from bot.health.alerts import AlertBook, AlertView
from bot.requests.store import Request, RequestStore

RECENT_AUDIT = 10
MAX_REQUESTS = 10

home_viewers = Table(
    "home_viewers",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("opened_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("published_at", DateTime(timezone=True)),
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
    # Pending requests waiting for this viewer: to approve or reject, or their own to confirm or cancel.
    requests: list[Request] = field(default_factory=list)  # the first MAX_REQUESTS of them
    requests_more: int = 0  # how many more wait for them


class Home:
    def __init__(self, engine: Engine, policy: AccessPolicy, audit: AuditLog, alerts: AlertBook) -> None:
        self.engine = engine
        self.policy = policy
        self.audit = audit
        self.alerts = alerts

    def opened(self, user_id: str) -> tuple[HomeView, bool]:
        """The person's tab, and whether to publish it now: not when their last publish is within
        HOME_PUBLISH_INTERVAL_SECONDS (Slack still shows that one; `queue_publish` sends this in their next slot)."""
        interval = timedelta(seconds=self.policy.settings.home_publish_interval_s)
        with self.engine.begin() as conn:
            now: datetime = conn.execute(select(func.now())).scalar_one()
            last = conn.execute(
                select(home_viewers.c.published_at).where(home_viewers.c.user_id == user_id).with_for_update()
            ).scalar()
            publish_now = last is None or last <= now - interval
            kept = {} if publish_now else {"published_at": last}
            conn.execute(
                insert(home_viewers)
                .values(user_id=user_id, opened_at=now, published_at=now)
                .on_conflict_do_update(
                    index_elements=[home_viewers.c.user_id], set_={"opened_at": now, "published_at": now, **kept}
                )
            )
        return self.view_for(user_id), publish_now

    def waiting_for(self, user_id: str, *, approver: bool) -> list[Request]:
        """Pending requests `user_id` can act on now: the same rules the buttons check when pressed."""
        waiting = []
        now = datetime.now(UTC)
        for request in RequestStore(self.engine).list(states=("pending",), limit=200):
            if request.expires_at <= now:
                continue
            if request.requester == user_id or (
                approver
                and user_id not in {v.voter for v in request.votes}
                and self.policy.click_refusal(
                    user_id,
                    "approve",
                    requester=request.requester,
                    protected=request.protected,
                    kind=request.kind,
                    approver=Membership(is_approver=True),  # resolved once above
                )
                is None
            ):
                waiting.append(request)
        return waiting

    def view_for(self, user_id: str) -> HomeView:
        approver = self.policy.is_approver(user_id)
        privileged = self.policy.is_operator(user_id) or approver
        by_stage: dict[str, list[AlertView]] = {}
        for alert in self.alerts.open_alerts():
            if alert.state == "firing":
                by_stage.setdefault(alert.stage, []).append(alert)
        with reading(self.engine) as conn:
            now = conn.execute(select(func.now())).scalar_one()
        waiting = self.waiting_for(user_id, approver=approver)
        return HomeView(
            viewer=user_id,
            is_operator=self.policy.is_operator(user_id),
            is_approver=approver,
            alerts_by_stage=dict(sorted(by_stage.items())),
            recent_audit=self.audit.latest(stage=None, limit=RECENT_AUDIT) if privileged else None,
            generated_at=now,
            requests=waiting[:MAX_REQUESTS],
            requests_more=max(0, len(waiting) - MAX_REQUESTS),
        )

    def queue_publish(self, views: list[tuple[str, dict[str, Any]]]) -> None:
        """Queue each viewer's rendered tab through the outbox in that person's next publish slot: retried
        through Slack errors, and a newer tab for the same person retires an older one still queued."""
        if not views:
            return
        interval = timedelta(seconds=self.policy.settings.home_publish_interval_s)
        with self.engine.begin() as conn:
            now: datetime = conn.execute(select(func.now())).scalar_one()
            for user_id, view in views:
                last = conn.execute(
                    select(home_viewers.c.published_at).where(home_viewers.c.user_id == user_id).with_for_update()
                ).scalar()
                if last is None or last <= now - interval:
                    slot = now
                elif last > now:  # one is already due then: this one replaces it
                    slot = last
                else:
                    slot = last + interval
                outbox.enqueue(conn, "views.publish", {"user_id": user_id, "view": view}, not_before=slot)
                conn.execute(update(home_viewers).where(home_viewers.c.user_id == user_id).values(published_at=slot))

    def recent_viewers(self) -> list[str]:
        """Who opened the tab within HOME_RECENT_MINUTES: only they get refreshes."""
        recent = timedelta(minutes=self.policy.settings.home_recent_minutes)
        with reading(self.engine) as conn:
            return list(
                conn.execute(
                    select(home_viewers.c.user_id)
                    .where(home_viewers.c.opened_at > func.now() - recent)
                    .order_by(home_viewers.c.user_id)
                ).scalars()
            )
