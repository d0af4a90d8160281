"""What happens on `/mcp impact`, `/mcp delete` and each click on a delete request; no Slack imports.

The request message is rendered by a function the Slack layer injects (`set_renderer`);
every state change queues its `chat.update` through the outbox in the same transaction as
the change, so a message can lag behind its request but never contradict it. Progress
updates while a delete runs are best-effort `chat.update` calls, throttled.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, text

from bot import outbox
from bot.audit import AuditEntry
from bot.deletion.execute import (
    BeforeDelete,
    DeleteResult,
    Heartbeat,
    Progress,
    SnapshotChanged,
    execute_delete,
)
from bot.deletion.plan import ImpactReport, plan_and_measure, server_exists
from bot.deletion.requests import DeleteRequest, DeleteRequests, delete_requests
from bot.errors import PermissionDenied, UserFacingError
from bot.logs import request_id_var
from bot.pii import scrub
from bot.scheduler import OWNER
from bot.stages import Stage

if TYPE_CHECKING:
    from bot.runtime import Runtime
    from bot.service import CommandRequest

log = logging.getLogger(__name__)

CONFIRM_TTL = timedelta(minutes=30)
RUNNER_LOCK_CLASS = 0x6D6F7073  # "mops": advisory lock (class, request id) held while a delete runs
MIN_BUDGET_S = 120.0
BUDGET_FACTOR = 3.0


@dataclass(frozen=True)
class RequestView:
    """Everything a request's message shows."""

    request: DeleteRequest
    progress: Progress | None = None


Renderer = Callable[[RequestView], dict[str, Any]]


@dataclass(frozen=True)
class DeletePosted:
    request: DeleteRequest
    report: ImpactReport


@dataclass(frozen=True)
class DeleteRefused:
    """Blockers: the database would refuse, so no request was created."""

    report: ImpactReport


@dataclass(frozen=True)
class DryRunDone:
    report: ImpactReport
    result: DeleteResult


@dataclass(frozen=True)
class ClickOutcome:
    ok: bool
    message: str = ""


def _utcnow() -> datetime:
    return datetime.now(UTC)


class DeletionFlow:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.requests = DeleteRequests(runtime.bot_engine)
        self.render: Renderer | None = None
        # Issue 5's backups plug in here: called inside the delete's transaction (see execute.py).
        self.before_delete: BeforeDelete | None = None
        self.clock: Callable[[], datetime] = _utcnow
        self.progress_interval_s = 3.0
        self.heartbeat_s = 10.0
        runtime.scheduler.add("deletion:expire", self.expire_due, 30)
        runtime.scheduler.add("deletion:recover", self.recover, 60)

    # -- wiring ---------------------------------------------------------------------------

    def set_renderer(self, render: Renderer) -> None:
        """Called by the Slack layer at start-up; then requests left `running` by a dead process are closed."""
        self.render = render
        self.runtime.submit(self.recover)

    @property
    def settings(self) -> Any:
        return self.runtime.settings

    def budget_s(self, report: ImpactReport) -> float:
        return min(max(MIN_BUDGET_S, report.estimated_s * BUDGET_FACTOR), float(self.settings.delete_timeout_s))

    # -- commands -------------------------------------------------------------------------

    def impact(self, stage: Stage, slug: str) -> ImpactReport:
        with stage.read() as conn:
            _, report = plan_and_measure(conn, slug)
        report.limit_s = float(self.settings.delete_timeout_s)
        return report

    def request_delete(self, request: CommandRequest) -> DeletePosted | DeleteRefused | DryRunDone:
        stage = request.stage
        assert stage is not None
        slug = request.parsed.args["slug"]
        if request.parsed.flags.get("dry-run"):
            report = self.impact(stage, slug)
            result = execute_delete(
                stage,
                slug,
                expected=None,
                budget_s=self.budget_s(report),
                lock_timeout_ms=self.settings.lock_timeout_ms,
                dry_run=True,
            )
            return DryRunDone(report, result)
        if stage.protected:
            raise PermissionDenied(
                f"stage {stage.name} is protected: deleting there needs two-person approval, "
                "which this bot does not offer yet; nothing was changed"
            )
        report = self.impact(stage, slug)
        if not report.deletable:
            return DeleteRefused(report)
        now = self.clock()
        created = self.requests.create(
            stage=stage.name,
            slug=slug,
            server_key=report.server_key,
            requester=request.actor,
            reason=request.parsed.flags.get("reason"),
            protected=stage.protected,
            required_approvals=1,
            state="pending",
            impact=report.to_json(),
            snapshot=report.snapshot,
            snapshot_hash=report.snapshot_hash,
            created_at=now,
            expires_at=now + CONFIRM_TTL,
            channel=request.invocation.channel_id,
        )
        self._audit(created, request.actor, "requested", detail={"rows": report.total_rows})
        posted = self._post(created)
        return DeletePosted(posted, report)

    # -- clicks ---------------------------------------------------------------------------

    def click(self, request_id: int, actor: str, action: str) -> ClickOutcome:
        """A button on a request's message; every rule is checked here, nothing is taken from the payload."""
        current = self.requests.get(request_id)
        if current is None:
            return ClickOutcome(False, "That delete request no longer exists.")
        refusal = self.runtime.policy.delete_click_refusal(
            actor, action, requester=current.requester, protected=current.protected
        )
        if refusal:
            self._audit(current, actor, "denied", detail={"click": action, "reason": refusal}, required=False)
            return ClickOutcome(False, f"You can't {action} this delete: {refusal}.")
        if action == "cancel":
            done = self.requests.transition(request_id, "pending", "cancelled", decided_by=actor, notify=self._notify)
            if done is None:
                return ClickOutcome(False, self._too_late(request_id))
            self._nudge()
            self._audit(done, actor, "cancelled")
            return ClickOutcome(True)
        if action == "confirm":
            outcome = self.requests.vote(request_id, actor, "confirm", now=self.clock(), notify=self._notify)
            if outcome is None:
                self.expire_due()
                return ClickOutcome(False, self._too_late(request_id))
            if not outcome.recorded:
                return ClickOutcome(False, "You already confirmed this delete; it is on its way.")
            self._nudge()
            self._audit(outcome.request, actor, "confirmed")
            if outcome.approved_now:
                self.runtime.submit(self.run, request_id)
            return ClickOutcome(True)
        return ClickOutcome(False, "That button does nothing here.")

    def _too_late(self, request_id: int) -> str:
        now = self.requests.get(request_id)
        state = now.state if now else "gone"
        if now is not None and state == "pending" and now.expires_at <= self.clock():
            state = "expired"
        return f"This delete request is already {state}; nothing more to do."

    # -- execution ------------------------------------------------------------------------

    @contextmanager
    def _runner_lock(self, request_id: int) -> Any:
        """Held for the whole delete on a dedicated bot-database connection; a dead process releases it."""
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
            request = self.requests.transition(
                request_id, "approved", "running", runner=OWNER, started_at=func.now(), notify=self._notify
            )
            if request is None:
                return
            self._nudge()
            try:
                self._audit(request, request.decided_by or request.requester, "running")
            except UserFacingError as exc:
                self._finish(request, "failed", error=exc.message)
                return
            self._execute(request)

    def _execute(self, request: DeleteRequest) -> None:
        stage = self.runtime.stages.get(request.stage)
        report = ImpactReport.from_json(request.impact)
        reporter = _ProgressReporter(self, request, self.progress_interval_s)
        try:
            with Heartbeat(reporter.tick, self.heartbeat_s):
                result = execute_delete(
                    stage,
                    request.slug,
                    expected=request.snapshot,
                    drift_percent=0.0,
                    budget_s=self.budget_s(report),
                    lock_timeout_ms=self.settings.lock_timeout_ms,
                    before_delete=self.before_delete,
                    progress=reporter.update,
                )
        except SnapshotChanged as exc:
            self._finish(request, "failed", error=exc.message, result={"changes": exc.changes})
        except UserFacingError as exc:
            self._finish(request, "failed", error=exc.message)
        except Exception:
            log.exception("delete failed", extra={"request": request.id})
            self._finish(
                request,
                "failed",
                error=f"an unexpected error (reference `{request_id_var.get()}`); the transaction was rolled back",
            )
        else:
            self._finish(request, "done", result=_result_json(result))

    def _finish(
        self, request: DeleteRequest, state: str, *, error: str | None = None, result: dict[str, Any] | None = None
    ) -> None:
        done = self.requests.transition(
            request.id,
            "running",
            state,
            finished_at=func.now(),
            error=scrub(error) if error else None,
            result=result,
            notify=self._notify,
        )
        self._nudge()
        if done is not None:
            detail: dict[str, Any] = {"error": error} if error else {}
            if result and "rows" in result:
                detail.update(rows=result["rows"], seconds=result["seconds"])
            self._audit(done, done.decided_by or done.requester, state, detail=detail, required=False)

    # -- jobs -----------------------------------------------------------------------------

    def expire_due(self, now: datetime | None = None) -> int:
        """Close pending requests past their expiry; their messages say so."""
        now = now or self.clock()
        closed = 0
        for request_id in self.requests.ids_where(
            delete_requests.c.state == "pending", delete_requests.c.expires_at <= now
        ):
            done = self.requests.transition(
                request_id, "pending", "expired", where=(delete_requests.c.expires_at <= now,), notify=self._notify
            )
            if done is not None:
                closed += 1
                self._audit(done, "system", "expired", required=False)
        if closed:
            self._nudge()
        return closed

    def recover(self) -> int:
        """Requests left `running` by a process that died: the database rolled the delete back."""
        if self.render is None:
            return 0
        fixed = 0
        for request_id in self.requests.ids_where(delete_requests.c.state == "running"):
            with self._runner_lock(request_id) as free:
                if not free:
                    continue  # a live runner holds it
                request = self.requests.get(request_id)
                if request is None or request.state != "running":
                    continue
                try:
                    with self.runtime.stages.get(request.stage).read() as conn:
                        still_there = server_exists(conn, request.slug)
                except UserFacingError:
                    continue  # the stage is unreachable; the next run looks again
                if still_there:
                    self._finish(
                        request,
                        "failed",
                        error="the bot stopped while the delete ran; the transaction was rolled back and "
                        "nothing was deleted",
                    )
                else:
                    self._finish(request, "done", result={"recovered": True})
                fixed += 1
        return fixed

    # -- Slack messages, audit ------------------------------------------------------------

    def view(self, request: DeleteRequest, progress: Progress | None = None) -> RequestView:
        return RequestView(request=request, progress=progress)

    def message(self, request: DeleteRequest, progress: Progress | None = None) -> dict[str, Any] | None:
        if self.render is None:
            return None
        return self.render(self.view(request, progress))

    def _post(self, request: DeleteRequest) -> DeleteRequest:
        payload = self.message(request)
        if payload is None or not request.channel:
            return request
        try:
            response = self.runtime.slack.api_call("chat.postMessage", json={"channel": request.channel, **payload})
        except Exception as exc:  # SlackApiError or a transport error: the request can't be confirmed
            response = getattr(exc, "response", None)
            error = response.get("error", "unknown") if hasattr(response, "get") else "unreachable"
            self.requests.transition(request.id, "pending", "cancelled", decided_by="system")
            raise UserFacingError(
                f"couldn't post the delete plan in this channel (Slack said `{error}`); invite the bot and try again"
            ) from exc
        ts = str(response.get("ts", ""))
        channel = str(response.get("channel", request.channel))
        self.requests.set_message(request.id, channel, ts)
        return self.requests.get(request.id) or request

    def _notify(self, conn: Connection, request: DeleteRequest) -> None:
        """Queue the message's refresh in the transition's own transaction."""
        if not request.channel or not request.message_ts:
            return
        payload = self.message(request)
        if payload is None:
            return
        outbox.enqueue(conn, "chat.update", {"channel": request.channel, "ts": request.message_ts, **payload})

    def _nudge(self) -> None:
        self.runtime.outbox_worker.notify()

    def _audit(
        self,
        request: DeleteRequest,
        actor: str,
        outcome: str,
        *,
        detail: dict[str, Any] | None = None,
        required: bool = True,
    ) -> None:
        self.runtime.audit.record(
            AuditEntry(
                actor=actor,
                stage=request.stage,
                command="delete",
                args=f"#{request.id} {request.slug}",
                outcome=outcome,
                detail={"request": request.id, "state": request.state, **(detail or {})},
            ),
            required=required,
        )


def _result_json(result: DeleteResult) -> dict[str, Any]:
    return {
        "rows": result.total_rows,
        "seconds": round(result.duration_s, 3),
        "steps": [
            {"table": s.table, "action": s.action, "rows": s.rows, "seconds": round(s.seconds, 3)} for s in result.steps
        ],
        "verified": result.verified,
        "verification": result.verification,
    }


class _ProgressReporter:
    """Turns engine progress into at most one `chat.update` every `interval` seconds."""

    def __init__(self, flow: DeletionFlow, request: DeleteRequest, interval: float) -> None:
        self.flow = flow
        self.request = request
        self.interval = interval
        self.last: Progress | None = None
        self.started = time.monotonic()
        self.sent_at = 0.0
        self._lock = threading.Lock()

    def update(self, progress: Progress) -> None:
        with self._lock:
            self.last = progress
            due = time.monotonic() - self.sent_at >= self.interval
        if due:
            self._send(progress)

    def tick(self) -> None:
        with self._lock:
            last = self.last
        if last is not None:
            self._send(
                Progress(last.phase, last.table, last.rows_done, last.rows_total, time.monotonic() - self.started)
            )

    def _send(self, progress: Progress) -> None:
        request = self.request
        payload = self.flow.message(request, progress)
        if payload is None or not request.channel or not request.message_ts:
            return
        with self._lock:
            self.sent_at = time.monotonic()
        try:
            self.flow.runtime.slack.api_call(
                "chat.update", json={"channel": request.channel, "ts": request.message_ts, **payload}
            )
        except Exception:
            log.warning("progress update failed", extra={"request": request.id}, exc_info=True)
