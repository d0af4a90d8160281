"""The request machine: proposals become requests, clicks move them, approved ones run exactly once.

It knows nothing of kinds: a kind (bot/requests/kinds.py) plans a `Proposal`, and is called to
`check`, `run` and `verify` once the request is approved. Who may ask and approve comes from
the table in bot/policy.py, asked through `runtime.policy`, and is asked again at every
transition: a requester removed from OPERATORS, or an approver removed from APPROVERS, before
the request runs makes it end `revoked` (audited) instead of running.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, text
from sqlalchemy.exc import SQLAlchemyError

from bot.deletion.execute import Heartbeat
from bot.deletion.plan import snapshot_hash
from bot.errors import PermissionDenied, UserFacingError
from bot.logs import request_id_var
from bot.pii import scrub
from bot.policy import rule_for
from bot.requests.jobs import RequestJobs
from bot.requests.kinds import KINDS, Kind, Proposal, Stale
from bot.requests.messages import ProgressReporter, Renderer, RequestMessages
from bot.requests.store import OPEN_STATES, Request, RequestStore
from bot.scheduler import OWNER

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger(__name__)

RUNNER_LOCK_CLASS = 0x6D6F7073  # "mops": advisory lock (class, request id) held while a request runs
RECOVER_INTERVAL_S = 15  # how soon a request a dead process left running is settled (once its session is gone)


@dataclass(frozen=True)
class ClickOutcome:
    ok: bool
    message: str = ""
    channel: str | None = None  # where the request lives (for an ephemeral answer without response_url)
    overdue: bool = False  # still pending but past its expiry: the click closes it


class AlreadyRequested(UserFacingError):
    """The same operation on the same target is already asked for (a double click)."""

    outcome = "duplicate"

    def __init__(self, request: Request) -> None:
        super().__init__(f"this is already request #{request.id} ({request.state}); nothing new was asked")
        self.request = request


def _utcnow() -> datetime:
    return datetime.now(UTC)


def unexpected() -> str:
    return f"an unexpected error (reference `{request_id_var.get()}`); nothing was changed or it was rolled back"


class Requests(RequestMessages, RequestJobs):
    def __init__(self, runtime: Runtime) -> None:
        import bot.kinds  # noqa: F401 - registers every kind

        self.runtime = runtime
        self.store = RequestStore(runtime.bot_engine)
        self.render: Renderer | None = None
        self.approvers = runtime.approvers
        self.clock: Callable[[], datetime] = _utcnow
        self.progress_interval_s = 3.0
        self.heartbeat_s = 10.0
        self.kinds: dict[str, Kind] = {name: cls(runtime) for name, cls in KINDS.items()}
        runtime.scheduler.add("deletion:expire", self.expire_due, 30)
        runtime.scheduler.add("deletion:remind", self.remind_due, 30)
        runtime.scheduler.add("deletion:recover", self.recover, RECOVER_INTERVAL_S)

    def kind(self, name: str) -> Kind:
        return self.kinds[name]

    def set_renderer(self, render: Renderer) -> None:
        """Called by the Slack layer at start-up; then requests left `running` by a dead process are closed."""
        self.render = render
        self.runtime.submit(self.recover)

    @property
    def settings(self) -> Any:
        return self.runtime.settings

    @property
    def ttl(self) -> timedelta:
        return timedelta(minutes=self.settings.approval_ttl_minutes)

    # -- asking ---------------------------------------------------------------------------

    def propose(
        self,
        proposal: Proposal,
        *,
        requester: str,
        reason: str | None,
        channel: str | None,
        detail: dict[str, Any] | None = None,
        replaces: int | None = None,
    ) -> Request:
        """Turn a kind's plan into a request (audited), post its message; run it if the asking was the confirmation."""
        stage = self.runtime.stages.get(proposal.stage)
        refusal = self.runtime.policy.request_refusal(requester, proposal.kind, protected=stage.protected)
        if refusal:
            raise PermissionDenied(refusal)
        rule = rule_for(proposal.kind, stage.protected)
        at_once = rule.confirmed_by_request
        now = self.clock()
        with self.runtime.bot_engine.begin() as conn:
            existing = self.store.find_open(conn, stage=stage.name, kind=proposal.kind, target=proposal.target)
            if existing is not None:
                raise AlreadyRequested(existing)
            created = self.store.create(
                conn,
                kind=proposal.kind,
                stage=stage.name,
                slug=proposal.subject,
                server_key=proposal.target,
                requester=requester,
                reason=reason,
                protected=stage.protected,
                required_approvals=self.runtime.policy.required_approvals(proposal.kind, stage.protected),
                state="approved" if at_once else "pending",
                decided_by=requester if at_once else None,
                impact=proposal.impact,
                snapshot=proposal.snapshot,
                snapshot_hash=snapshot_hash(proposal.snapshot),
                created_at=now,
                expires_at=now + self.ttl,
                channel=channel,
                replaces=replaces,
                options=proposal.options,
            )
            if at_once:
                self.store.add_vote(conn, created.id, requester, "confirm")
                created = self.store.get(created.id, conn) or created
            self._audit(created, requester, "requested", detail=detail, conn=conn)
            if at_once:
                self._audit(created, requester, "confirmed", detail={"approvals": 1}, conn=conn)
        self._nudge()
        posted = self._post(created)
        if at_once:
            self.runtime.submit(self.run, created.id)
        return posted

    def pending(self, stage: str | None) -> list[Request]:
        return self.store.list(states=OPEN_STATES, stage=stage)

    # -- clicks ---------------------------------------------------------------------------

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
        """May `actor` press `action` now? (Used before opening the reject form.) Refusals are audited."""
        current = self.store.get(request_id)
        if current is None:
            return ClickOutcome(False, "That request no longer exists.")
        refusal = self.refusal(current, actor, action)
        if refusal:
            self._audit(current, actor, "denied", detail={"click": action, "reason": refusal}, required=False)
            return ClickOutcome(False, f"You can't {action} this: {refusal}.", current.channel)
        if current.state != "pending" or current.expires_at <= self.clock():
            overdue = current.state == "pending"
            return ClickOutcome(False, self._too_late(request_id), current.channel, overdue=overdue)
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
            lost = self._lost_standing(request_id)
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
            self.runtime.submit(self.run, request_id)
        return ClickOutcome(True, channel=channel)

    def _lost_standing(self, request_id: int) -> ClickOutcome | None:
        """Before a confirmation or approval counts: do the requester and earlier approvals still stand?"""
        current = self.store.get(request_id)
        if current is None or current.state != "pending":
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

    # -- running --------------------------------------------------------------------------

    @contextmanager
    def _runner_lock(self, request_id: int) -> Any:
        """Held for the whole run on a dedicated bot-database connection; a dead process releases it."""
        with self.runtime.bot_engine.connect() as conn:
            got = conn.execute(
                text("SELECT pg_try_advisory_lock(:c, :r)"), {"c": RUNNER_LOCK_CLASS, "r": request_id}
            ).scalar_one()
            conn.commit()
            try:
                yield bool(got)
            finally:
                if got:
                    conn.execute(text("SELECT pg_advisory_unlock(:c, :r)"), {"c": RUNNER_LOCK_CLASS, "r": request_id})
                    conn.commit()

    def run(self, request_id: int) -> None:
        """Execute an approved request exactly once: whoever moves it to `running` runs it."""
        with self._runner_lock(request_id) as mine:
            if not mine:
                return
            try:
                approved = self.store.get(request_id)
                if approved is None or approved.state != "approved":
                    return
                lost = self.standing(approved)
                if lost is not None:
                    reason, transient = lost
                    if not transient:  # transient: it stays approved and the recovery job tries again
                        self._revoke(approved, "approved", reason)
                    return
                request = self.store.transition(
                    request_id,
                    "approved",
                    "running",
                    runner=OWNER,
                    started_at=func.now(),
                    notify=self._audited(None, "running"),
                )
            except SQLAlchemyError:
                # Not audited, so not started: it stays approved and the recovery job tries again.
                log.warning("could not start an approved request", extra={"request": request_id}, exc_info=True)
                return
            if request is None:
                return
            self._nudge()
            self._execute(request)

    def _execute(self, request: Request) -> None:
        """check, run, verify: the kind's three parts, with the request's outcome recorded whatever happens."""
        kind = self.kind(request.kind)
        reporter = ProgressReporter(self, request, self.progress_interval_s)
        try:
            kind.check(request)
            with Heartbeat(reporter.tick, self.heartbeat_s):
                result = kind.run(request, reporter.update)
            problems = kind.verify(request, result)
        except Stale as exc:
            self._go_stale(request, exc)
        except UserFacingError as exc:
            self.finish(request, "failed", error=exc.message)
        except Exception:
            log.exception("request failed", extra={"request": request.id, "kind": request.kind})
            self.finish(request, "failed", error=unexpected())
        else:
            if problems:
                result = {**result, "verified": False, "verification": problems}
            self.finish(request, "done", result=result)

    def _go_stale(self, request: Request, stale: Stale) -> None:
        """Not the approved target any more: close it; a kind that planned afresh gets a new request posted."""
        self.finish(request, "stale", error=stale.message, result={**stale.result, "replaced_by": None})
        if stale.successor is None:
            return
        try:
            successor = self.propose(
                stale.successor,
                requester=request.requester,
                reason=request.reason,
                channel=request.channel,
                detail={"replaces": request.id, "rows": stale.successor.impact.get("total_rows", 0)},
                replaces=request.id,
            )
        except UserFacingError as exc:
            log.warning("the fresh request could not be posted", extra={"request": request.id, "why": exc.message})
            return
        self.store.transition(
            request.id,
            "stale",
            "stale",
            replaced_by=successor.id,
            result={**stale.result, "replaced_by": successor.id},
            notify=self._notify,
        )
        self._nudge()

    def finish(
        self,
        request: Request,
        state: str,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
        **values: Any,
    ) -> None:
        detail: dict[str, Any] = {"error": error} if error else {}
        for key in ("rows", "seconds", "steps", "backup", "tables", "signal", "index"):
            if result and key in result:
                detail[key] = result[key]
        self.store.transition(
            request.id,
            "running",
            state,
            finished_at=func.now(),
            error=scrub(error) if error else None,
            result=result,
            notify=self._audited(None, state, detail),
            **values,
        )
        self._nudge()
