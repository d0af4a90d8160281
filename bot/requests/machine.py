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
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, text
from sqlalchemy.exc import SQLAlchemyError

from bot.audit import AuditEntry
from bot.deletion.execute import Heartbeat
from bot.deletion.impact import snapshot_hash
from bot.errors import PermissionDenied, UserFacingError
from bot.lanes import Busy
from bot.logs import request_id_var
from bot.pii import scrub
from bot.policy import rule_for
from bot.requests.clicks import RequestClicks
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


class AlreadyRequested(UserFacingError):
    """The same operation on the same target is already asked for (a double click)."""

    outcome = "duplicate"

    def __init__(self, request: Request) -> None:
        super().__init__(f"this is already request #{request.id} ({request.state}); nothing new was asked")
        self.request = request


def _utcnow() -> datetime:
    return datetime.now(UTC)


BOT_DATABASE_DOWN = (
    "The bot database is unavailable right now; try again shortly (asking again is safe: the same request is "
    "never made twice)."
)


def unexpected() -> str:
    return f"an unexpected error (reference `{request_id_var.get()}`); nothing was changed or it was rolled back"


class Requests(RequestClicks, RequestMessages, RequestJobs):
    def __init__(self, runtime: Runtime) -> None:
        # Every kind registers itself.
        import bot.kinds  # noqa: F401

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
        self.runtime.submit(self.recover, lane="exec")

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
    ) -> Request:
        """Turn a kind's plan into a request (audited), post its message; run it if the asking was the confirmation."""
        created = self._create(proposal, requester=requester, reason=reason, channel=channel, detail=detail)
        posted = self._post(created)
        if created.state == "approved":
            self.start(created.id)
        return posted

    def start(self, request_id: int) -> None:
        """Run an approved request after this, on the lane of approved executions; when that lane is full,
        the recovery job starts it soon."""
        try:
            self.runtime.submit(self.run, request_id, lane="exec")
        except Busy:
            log.warning("approved request waits for the recovery job (exec lane full)", extra={"request": request_id})

    def _create(
        self,
        proposal: Proposal,
        *,
        requester: str,
        reason: str | None,
        channel: str | None,
        detail: dict[str, Any] | None = None,
        replaces: int | None = None,
    ) -> Request:
        """The request and its audit rows, in one transaction; the policy decides whether it is confirmed at once."""
        stage = self.runtime.stages.get(proposal.stage)
        refusal = self.runtime.policy.request_refusal(requester, proposal.kind, protected=stage.protected)
        if refusal:
            raise PermissionDenied(refusal)
        at_once = rule_for(proposal.kind, stage.protected).confirmed_by_request
        now = self.clock()
        with self.runtime.bot_engine.begin() as conn:
            existing = self.store.find_open(conn, stage=stage.name, kind=proposal.kind, target=proposal.target)
            if existing is not None and existing.id != replaces:
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
        return created

    def ask(
        self, kind: str, stage: str, target: dict[str, Any], *, requester: str, channel: str | None, thread: str | None
    ) -> Request | str:
        """A button asks for `kind` on `target`: the request made (and run at once where the policy says the click
        was the confirmation), or why not in words (audited): not allowed, already asked, gone, refused."""
        try:
            if kind not in self.kinds:
                raise UserFacingError(f"`{kind[:40]}` is not an operation the bot knows")
            where = self.runtime.stages.get(stage)
            refusal = self.runtime.policy.request_refusal(requester, kind, protected=where.protected)
            if refusal:
                raise PermissionDenied(refusal)
            proposal = self.kind(kind).plan(where, target, {"thread_ts": thread} if thread else {})
            return self.propose(proposal, requester=requester, reason=None, channel=channel, detail=proposal.impact)
        except AlreadyRequested as exc:
            return f"That is already request #{exc.request.id} ({exc.request.state}); nothing new was asked."
        except UserFacingError as exc:
            self._audit_ask(requester, kind, stage, target, exc.outcome, exc.message)
            return exc.message + "."
        except SQLAlchemyError:  # stage errors arrive worded (Stage.read/write): this is the bot database
            log.warning("asking failed: bot database unavailable", extra={"kind": kind[:40]}, exc_info=True)
            return BOT_DATABASE_DOWN
        except Exception:
            log.exception("asking failed", extra={"kind": kind[:40]})
            self._audit_ask(requester, kind, stage, target, "error", "unexpected error")
            return f"An unexpected error (reference `{request_id_var.get()}`); nothing was asked."

    def _audit_ask(
        self, requester: str, kind: str, stage: str, target: dict[str, Any], outcome: str, reason: str
    ) -> None:
        self.runtime.audit.record(
            AuditEntry(
                actor=requester,
                stage=stage[:40],
                command=kind[:40],
                args=str(target.get("pid") or target.get("table") or target.get("index") or "")[:200],
                outcome=outcome,
                detail={"reason": reason},
            ),
            required=False,
        )

    def pending(self, stage: str | None) -> list[Request]:
        return self.store.list(states=OPEN_STATES, stage=stage)

    def pending_count(self, stage: str | None) -> int:
        return self.store.count(states=OPEN_STATES, stage=stage)

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
            try:
                with Heartbeat(reporter.tick, self.heartbeat_s):
                    result = kind.run(request, reporter.update)
            finally:
                reporter.close()  # no progress update can land after the outcome's
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
        successor: Request | None = None
        if stale.successor is not None:
            try:
                successor = self._create(
                    stale.successor,
                    requester=request.requester,
                    reason=request.reason,
                    channel=request.channel,
                    detail={"replaces": request.id, "rows": stale.successor.impact.get("total_rows", 0)},
                    replaces=request.id,
                )
            except UserFacingError as exc:  # the requester may no longer ask, say
                log.warning("no fresh request", extra={"request": request.id, "why": exc.message})
        replaced_by = successor.id if successor else None
        self.finish(
            request,
            "stale",
            error=stale.message,
            result={**stale.result, "replaced_by": replaced_by},
            replaced_by=replaced_by,
        )
        if successor is not None:
            try:
                self._post(successor)
            except UserFacingError:
                log.warning("the fresh request could not be posted", extra={"request": successor.id})

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
