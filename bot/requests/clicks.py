"""Clicks on a request's buttons (confirm, approve, reject, cancel): every rule checked at the click.

Mixed into the machine (bot/requests/machine.py). Nothing is taken from the payload but the
request id; the requester's and the clicker's rights are resolved now (bot/access.py, from the
table in bot/policy.py), and a confirmation or approval is only counted while the requester and
the approvals counted so far still stand: otherwise the request ends `revoked`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func
from sqlalchemy.exc import SQLAlchemyError

from bot.audit import AuditEntry
from bot.requests.store import Notify, Request, RequestStore

if TYPE_CHECKING:
    from bot.approvers import ApproverDirectory
    from bot.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClickOutcome:
    ok: bool
    message: str = ""
    channel: str | None = None  # where the request lives (for an ephemeral answer without response_url)
    overdue: bool = False  # still pending but past its expiry: the click closes it


class RequestClicks:
    runtime: Runtime
    store: RequestStore
    approvers: ApproverDirectory
    clock: Callable[[], datetime]

    if TYPE_CHECKING:  # provided by the machine and its other parts

        def expire_due(self, now: datetime | None = None) -> int: ...

        def start(self, request_id: int) -> None: ...

        def _audit(self, request: Request, actor: str, outcome: str, **kwargs: Any) -> None: ...

        def _audited(self, actor: str | None, outcome: str, detail: dict[str, Any] | None = None) -> Notify: ...

        def _notify(self, conn: Connection, request: Request) -> None: ...

        def _nudge(self) -> None: ...

    def refusal(self, request: Request, actor: str, action: str) -> str | None:
        """The rules, resolved now (APPROVERS membership included); None if `actor` may press `action`."""
        membership = self.approvers.membership(actor) if action in ("approve", "reject") else None
        return self.runtime.policy.click_refusal(
            actor,
            action,
            requester=request.requester,
            protected=request.protected,
            approver=membership,
            kind=request.kind,
        )

    def standing(self, request: Request) -> tuple[str, bool] | None:
        """Do the requester and the approvals counted so far still stand? (see AccessPolicy.standing_refusal)"""
        return self.runtime.policy.standing_refusal(
            kind=request.kind,
            protected=request.protected,
            requester=request.requester,
            approvals=request.approvals,
            membership=self.approvers.membership,
        )

    def check_click(self, request_id: int, actor: str, action: str) -> ClickOutcome:
        """May `actor` press `action` now? (Used before opening the reject form.) A request no longer pending
        (or past its expiry) is said to be so before any right is looked at; rights refusals are audited."""
        current = self.store.get(request_id)
        if current is None:  # an old or crafted button: refused like any click, and audited
            entry = AuditEntry(actor, "click", "not_found", args=f"{action} #{request_id}", detail={"click": action})
            self.runtime.audit.record(entry)
            return ClickOutcome(False, "That request no longer exists.")
        if current.state != "pending" or current.expires_at <= self.clock():
            # The state first, whoever clicks and whatever the stage: nothing can move a closed request, so
            # "already cancelled" says more than "this stage needs no approval" or "only <@U> can".
            overdue = current.state == "pending"
            return ClickOutcome(False, self._too_late(request_id), current.channel, overdue=overdue)
        refusal = self.refusal(current, actor, action)
        if refusal:
            self._audit(current, actor, "denied", detail={"click": action, "reason": refusal}, required=False)
            return ClickOutcome(False, f"You can't {action} this: {refusal}.", current.channel)
        return ClickOutcome(True, channel=current.channel)

    def click(self, request_id: int, actor: str, action: str, *, reason: str | None = None) -> ClickOutcome:
        """A button on a request's message; every rule is checked here, nothing is taken from the payload."""
        try:
            return self._click(request_id, actor, action, reason)
        except SQLAlchemyError:
            # The vote or state change and its audit row commit together, or neither does.
            log.warning("click not recorded", extra={"request": request_id, "click": action}, exc_info=True)
            return ClickOutcome(False, "The bot database could not record that, so nothing changed; try again.")

    def _click(self, request_id: int, actor: str, action: str, reason: str | None) -> ClickOutcome:
        if action in ("confirm", "approve"):
            lost = self._lost_standing(request_id, actor, action)
            if lost is not None:
                return lost
        checked = self.check_click(request_id, actor, action)
        if not checked.ok:
            if checked.overdue:
                self.expire_due()  # a click on an overdue request closes it now rather than at the next job run
            return checked
        channel = checked.channel
        if action == "cancel":
            done = self.store.transition(
                request_id, "pending", "cancelled", decided_by=actor, notify=self._audited(actor, "cancelled")
            )
            if done is None:
                return ClickOutcome(False, self._too_late(request_id), channel)
            self._nudge()
            return ClickOutcome(True, channel=channel)
        if action not in ("confirm", "approve", "reject"):
            return ClickOutcome(False, "That button does nothing here.", channel)
        approved = "confirmed" if action == "confirm" else "approved"

        def audited_vote(conn: Connection, request: Request) -> None:
            self._notify(conn, request)
            outcome = {"rejected": "rejected", "approved": approved}.get(request.state, "voted")
            detail = {"reason": reason or ""} if outcome == "rejected" else {"approvals": len(request.approvals)}
            self._audit(request, actor, outcome, detail=detail, conn=conn)

        outcome = self.store.vote(request_id, actor, action, now=self.clock(), reason=reason, notify=audited_vote)
        if outcome is None:
            self.expire_due()
            return ClickOutcome(False, self._too_late(request_id), channel)
        if not outcome.recorded:
            return ClickOutcome(
                False,
                f"You already voted on this {outcome.request.kind} ({self._state_words(outcome.request)}).",
                channel,
            )
        self._nudge()
        if outcome.approved_now:
            self.start(request_id)
        return ClickOutcome(True, channel=channel)

    def _lost_standing(self, request_id: int, actor: str, action: str) -> ClickOutcome | None:
        """Before a confirmation or approval counts: do the requester and earlier approvals still stand?

        Only a click that would otherwise count looks (an approver's approval, the requester's own
        confirmation): a stranger's click is refused for what it is and moves nothing, and an
        overdue request expires rather than being revoked.
        """
        current = self.store.get(request_id)
        if current is None or current.state != "pending" or current.expires_at <= self.clock():
            return None
        if current.requester != actor and self.refusal(current, actor, action):
            return None
        lost = self.standing(current)
        if lost is None:
            return None
        reason, transient = lost
        if transient:
            return ClickOutcome(False, f"Not now: {reason}; try again.", current.channel)
        self._revoke(current, "pending", reason)
        return ClickOutcome(False, f"This request can't go on: {reason}. It is closed.", current.channel)

    def _revoke(self, request: Request, expect: str, reason: str) -> None:
        """A right was lost before the request ran: it ends `revoked`, audited, its message says why."""
        self.store.transition(
            request.id,
            expect,
            "revoked",
            decided_by="system",
            finished_at=func.now(),
            error=reason,
            notify=self._audited("system", "revoked", {"reason": reason}),
        )
        self._nudge()

    @staticmethod
    def _state_words(request: Request) -> str:
        if request.state == "pending":
            return f"{len(request.approvals)} of {request.required_approvals} approvals so far"
        return f"it is {request.state}"

    def _too_late(self, request_id: int) -> str:
        now = self.store.get(request_id)
        state = now.state if now else "gone"
        if now is not None and state == "pending" and now.expires_at <= self.clock():
            state = "expired"
        kind = now.kind if now else "this"
        return f"This {kind} request is already {state}; nothing more to do."
