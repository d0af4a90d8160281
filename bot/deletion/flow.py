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
from sqlalchemy.exc import SQLAlchemyError

from bot import outbox
from bot.audit import AuditEntry
from bot.backups.delete_hook import DeleteBackup
from bot.backups.manifest import BackupContext, Manifest
from bot.backups.restore import RestoreReport, restore_order
from bot.deletion.execute import (
    BeforeDelete,
    DeleteResult,
    Heartbeat,
    Progress,
    SnapshotChanged,
    execute_delete,
)
from bot.deletion.identity import TARGET_CHANGES, TargetChanged, snapshot_changes, stale_reason
from bot.deletion.impact import ImpactReport, plan_and_measure, snapshot_hash
from bot.deletion.plan import server_exists
from bot.deletion.requests import OPEN_STATES, DeleteRequest, DeleteRequests, Notify, delete_requests
from bot.deletion.scope import Rules
from bot.errors import CommandError, NotFound, UserFacingError
from bot.logs import request_id_var
from bot.pii import scrub
from bot.scheduler import OWNER
from bot.schema.impact import scope_drift_warnings
from bot.stages import Stage

if TYPE_CHECKING:
    from bot.runtime import Runtime
    from bot.service import CommandRequest

log = logging.getLogger(__name__)

REMIND_BEFORE = timedelta(minutes=5)  # or a third of the TTL, whichever is shorter
RUNNER_LOCK_CLASS = 0x6D6F7073  # "mops": advisory lock (class, request id) held while a delete runs
RECOVER_INTERVAL_S = 15  # how soon a request a dead process left running is settled (once its session is gone)
MIN_BUDGET_S = 120.0
BUDGET_FACTOR = 3.0
TARGET_CHANGED = {"target_changed": True}  # a stale request's result when its target is not the approved one
BACKUP_S_PER_ROW = 10e-6  # a scoped backup exports ~200k rows/s (bench/bench_backup.py); doubled for safety


@dataclass(frozen=True)
class RequestView:
    """Everything a request's message shows."""

    request: DeleteRequest
    progress: Progress | None = None
    backup_note: str | None = None


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
class RestorePosted:
    """A restore on a protected stage: checked by a dry run, posted for approval."""

    request: DeleteRequest
    report: RestoreReport


@dataclass(frozen=True)
class ClickOutcome:
    ok: bool
    message: str = ""
    channel: str | None = None  # where the request lives (for an ephemeral answer without response_url)
    overdue: bool = False  # still pending but past its expiry: the click closes it


def permalink(channel: str | None, ts: str | None) -> str | None:
    if not channel or not ts:
        return None
    return f"https://slack.com/archives/{channel}/p{ts.replace('.', '')}"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class DeletionFlow:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.requests = DeleteRequests(runtime.bot_engine)
        self.render: Renderer | None = None
        # Extra work inside every delete's transaction, after the backup (tests force failures with it).
        self.before_delete: BeforeDelete | None = None
        self.approvers = runtime.approvers
        self.clock: Callable[[], datetime] = _utcnow
        self.progress_interval_s = 3.0
        self.heartbeat_s = 10.0
        runtime.scheduler.add("deletion:expire", self.expire_due, 30)
        runtime.scheduler.add("deletion:remind", self.remind_due, 30)
        runtime.scheduler.add("deletion:recover", self.recover, RECOVER_INTERVAL_S)

    # -- wiring ---------------------------------------------------------------------------

    def set_renderer(self, render: Renderer) -> None:
        """Called by the Slack layer at start-up; then requests left `running` by a dead process are closed."""
        self.render = render
        self.runtime.submit(self.recover)

    @property
    def settings(self) -> Any:
        return self.runtime.settings

    @property
    def rules(self) -> Rules:
        """How the engine reads edge rules the schema leaves open (NO_ACTION_EDGES)."""
        return Rules(no_action=self.settings.no_action_edges)

    @property
    def ttl(self) -> timedelta:
        return timedelta(minutes=self.settings.approval_ttl_minutes)

    def budget_s(self, report: ImpactReport, *, backup: bool = False) -> float:
        expected = report.estimated_s + (report.total_rows * BACKUP_S_PER_ROW if backup else 0.0)
        return min(max(MIN_BUDGET_S, expected * BUDGET_FACTOR), float(self.settings.delete_timeout_s))

    # -- commands -------------------------------------------------------------------------

    def impact(self, stage: Stage, slug: str, server_key: dict[str, str] | None = None) -> ImpactReport:
        """The impact report of deleting `slug` (bound to `server_key` when a request re-checks it)."""
        with stage.read() as conn:
            _, report = plan_and_measure(conn, slug, server_key=server_key, rules=self.rules)
        report.limit_s = float(self.settings.delete_timeout_s)
        tables = [t.table for t in report.tables]
        report.schema_warnings = scope_drift_warnings(self.runtime.stages, stage, tables, self.settings.schema)
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
                rules=self.rules,
            )
            return DryRunDone(report, result)
        reason = _reason(request, stage)
        # Protected stages always keep what a delete removes; elsewhere `--backup` asks for it.
        backup = stage.protected or bool(request.parsed.flags.get("backup"))
        if backup:
            self.runtime.backups.require_destination()  # no destination: refused now, not after the approvals
        report = self.impact(stage, slug)
        if not report.deletable:
            return DeleteRefused(report)
        created = self._create(
            stage=stage,
            slug=slug,
            report=report,
            requester=request.actor,
            reason=reason,
            channel=request.invocation.channel_id,
            options={"backup": backup},
            audit=(request.actor, {"rows": report.total_rows, "reason": reason or ""}),
        )
        posted = self._post(created)
        return DeletePosted(posted, report)

    def _create(
        self,
        *,
        stage: Stage,
        slug: str,
        report: ImpactReport,
        requester: str,
        reason: str | None,
        channel: str | None,
        options: dict[str, Any],
        audit: tuple[str, dict[str, Any]],
        replaces: int | None = None,
    ) -> DeleteRequest:
        """The request and its `requested` audit row, in one transaction."""
        now = self.clock()
        return self._create_audited(
            audit,
            kind="delete",
            options=options,
            stage=stage.name,
            slug=slug,
            server_key=report.server_key,
            requester=requester,
            reason=reason,
            protected=stage.protected,
            # Unprotected: the requester's own confirmation is the one approval.
            required_approvals=self.settings.required_approvals if stage.protected else 1,
            state="pending",
            impact=report.to_json(),
            snapshot=report.snapshot,
            snapshot_hash=report.snapshot_hash,
            created_at=now,
            expires_at=now + self.ttl,
            channel=channel,
            replaces=replaces,
        )

    def request_restore(self, request: CommandRequest, source: str) -> RestorePosted:
        """A restore on a protected stage: dry-run it now (conflicts answer at once), then ask for approvals."""
        stage = request.stage
        assert stage is not None and stage.protected
        reason = _reason(request, stage)
        checked = self.runtime.backups.restore(stage, source, actor=request.actor, dry_run=True)
        counts = restore_counts(checked)
        now = self.clock()
        created = self._create_audited(
            (request.actor, {"rows": checked.total_rows, "reason": reason}),
            kind="restore",
            options={"source_request": source, "backup_id": checked.backup_id},
            stage=stage.name,
            slug=checked.slug or "?",
            server_key={},
            requester=request.actor,
            reason=reason,
            protected=True,
            required_approvals=self.settings.required_approvals,
            state="pending",
            impact=restore_impact(checked),
            snapshot=counts,
            snapshot_hash=snapshot_hash(counts),
            created_at=now,
            expires_at=now + self.ttl,
            channel=request.invocation.channel_id,
        )
        return RestorePosted(self._post(created), checked)

    def _create_audited(self, audit: tuple[str, dict[str, Any]], **values: Any) -> DeleteRequest:
        actor, detail = audit
        with self.runtime.bot_engine.begin() as conn:
            created = self.requests.create(conn, **values)
            self._audit(created, actor, "requested", detail=detail, conn=conn)
        self._nudge()
        return created

    def pending(self, stage: str | None) -> list[DeleteRequest]:
        return self.requests.list(states=OPEN_STATES, stage=stage)

    # -- clicks ---------------------------------------------------------------------------

    def refusal(self, request: DeleteRequest, actor: str, action: str) -> str | None:
        """The rules, resolved now (APPROVERS membership included); None if `actor` may press `action`."""
        membership = self.approvers.membership(actor) if action in ("approve", "reject") else None
        return self.runtime.policy.delete_click_refusal(
            actor,
            action,
            requester=request.requester,
            protected=request.protected,
            approver=membership,
            kind=request.kind,
        )

    def check_click(self, request_id: int, actor: str, action: str) -> ClickOutcome:
        """May `actor` press `action` now? (Used before opening the reject form.) Refusals are audited."""
        current = self.requests.get(request_id)
        if current is None:
            return ClickOutcome(False, "That delete request no longer exists.")
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
        checked = self.check_click(request_id, actor, action)
        if not checked.ok:
            if checked.overdue:
                self.expire_due()  # a click on an overdue request closes it now rather than at the next job run
            return checked
        channel = checked.channel
        if action == "cancel":
            done = self.requests.transition(
                request_id, "pending", "cancelled", decided_by=actor, notify=self._audited(actor, "cancelled")
            )
            if done is None:
                return ClickOutcome(False, self._too_late(request_id), channel)
            self._nudge()
            return ClickOutcome(True, channel=channel)
        if action in ("confirm", "approve", "reject"):
            vote = {"confirm": "confirm", "approve": "approve", "reject": "reject"}[action]
            approved = "confirmed" if action == "confirm" else "approved"

            def audited_vote(conn: Connection, request: DeleteRequest) -> None:
                self._notify(conn, request)
                outcome = {"rejected": "rejected", "approved": approved}.get(request.state, "voted")
                detail = {"reason": reason or ""} if outcome == "rejected" else {"approvals": len(request.approvals)}
                self._audit(request, actor, outcome, detail=detail, conn=conn)

            outcome = self.requests.vote(request_id, actor, vote, now=self.clock(), reason=reason, notify=audited_vote)
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
        return ClickOutcome(False, "That button does nothing here.", channel)

    @staticmethod
    def _state_words(request: DeleteRequest) -> str:
        if request.state == "pending":
            return f"{len(request.approvals)} of {request.required_approvals} approvals so far"
        return f"it is {request.state}"

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
            try:
                request = self.requests.transition(
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

    def _drift(self, request: DeleteRequest) -> float:
        """How far fresh counts may move from the approved ones: none for a requester's own confirmation."""
        return float(self.settings.approval_drift_percent) if request.protected else 0.0

    def _execute(self, request: DeleteRequest) -> None:
        if request.kind == "restore":
            self._execute_restore(request)
            return
        stage = self.runtime.stages.get(request.stage)
        report = ImpactReport.from_json(request.impact)
        drift = self._drift(request)
        if not request.server_key:
            self._finish(
                request, "stale", error="the request does not name its server by primary key", result=TARGET_CHANGED
            )
            return
        if request.protected:
            # Approved numbers are only good while they hold: look again before touching anything.
            try:
                fresh = self.impact(stage, request.slug, request.server_key)
            except TARGET_CHANGES as exc:
                self._target_changed(stage, request, exc)
                return
            except UserFacingError as exc:
                self._finish(request, "failed", error=exc.message)
                return
            changes = snapshot_changes(request.snapshot, fresh.snapshot, drift, approved_hash=request.snapshot_hash)
            if changes or not fresh.deletable:
                self._go_stale(request, stage, fresh, changes or ["the database would now refuse the delete"])
                return
        reporter = _ProgressReporter(self, request, self.progress_interval_s)
        backup: DeleteBackup | None = None
        if request.takes_backup:
            try:
                backup = self._backup_for(request, stage, reporter)
            except UserFacingError as exc:
                self._finish(request, "failed", error=exc.message)
                return
        result: DeleteResult | None = None
        try:
            try:
                with Heartbeat(reporter.tick, self.heartbeat_s):
                    result = execute_delete(
                        stage,
                        request.slug,
                        expected=request.snapshot,
                        drift_percent=drift,
                        budget_s=self.budget_s(report, backup=backup is not None),
                        lock_timeout_ms=self.settings.lock_timeout_ms,
                        before_delete=self._before_delete(backup),
                        progress=reporter.update,
                        work_name=stage.work_name(f"request-{request.id}"),
                        server_key=request.server_key,
                        expected_hash=request.snapshot_hash,
                        rules=self.rules,
                    )
            finally:
                self._settle(backup, committed=result is not None)
        except TARGET_CHANGES as exc:
            self._target_changed(stage, request, exc)
        except SnapshotChanged as exc:
            if request.protected:
                try:
                    fresh = self.impact(stage, request.slug, request.server_key)
                except TARGET_CHANGES as gone:
                    self._target_changed(stage, request, gone)
                    return
                except UserFacingError as again:
                    self._finish(request, "failed", error=f"{exc.message}; {again.message}")
                    return
                self._go_stale(request, stage, fresh, exc.changes)
            else:
                self._finish(request, "failed", error=exc.message, result={"changes": exc.changes})
        except UserFacingError as exc:
            self._finish(request, "failed", error=exc.message)
        except Exception:
            log.exception("delete failed", extra={"request": request.id})
            self._finish(request, "failed", error=_unexpected())
        else:
            self._finish(request, "done", result=_result_json(result, backup))

    def _target_changed(self, stage: Stage, request: DeleteRequest, exc: UserFacingError) -> None:
        """The approved server is gone or renamed: stale, with which server the slug names now (if any)."""
        try:
            with stage.read() as conn:
                reason = stale_reason(conn, request.slug, exc)
        except UserFacingError:
            reason = exc.message
        self._finish(request, "stale", error=reason, result=TARGET_CHANGED)

    def _backup_for(self, request: DeleteRequest, stage: Stage, reporter: _ProgressReporter) -> DeleteBackup:
        """The scoped backup the delete takes inside its transaction (and the RDS snapshot before it, if any)."""
        backups = self.runtime.backups
        backups.require_destination()
        snapshot = backups.snapshot(stage, actor=request.requester)
        context = BackupContext(
            stage=stage.name,
            request_id=str(request.id),
            requested_by=request.requester,
            server_id=request.server_key.get("id"),
            slug=request.slug,
            approved_by=tuple(a for a in request.approvals if a != request.requester),
            snapshot=snapshot,
        )
        return DeleteBackup(backups.scoped(context, on_progress=reporter.backup_progress))

    def _before_delete(self, backup: DeleteBackup | None) -> BeforeDelete | None:
        extra = self.before_delete
        if backup is None or extra is None:
            return backup or extra

        def both(conn: Connection, plan: Any, scopes: Any) -> None:
            backup(conn, plan, scopes)
            extra(conn, plan, scopes)

        return both

    @staticmethod
    def _settle(backup: DeleteBackup | None, *, committed: bool) -> None:
        if backup is None:
            return
        try:
            backup.settle(committed=committed)
        except UserFacingError:
            log.warning("could not record whether the delete committed", extra={"committed": committed})

    def _execute_restore(self, request: DeleteRequest) -> None:
        """An approved restore: one transaction, parents first; a conflict found now writes nothing."""
        stage = self.runtime.stages.get(request.stage)
        source = str(request.options.get("source_request", ""))
        backup_id = str(request.options.get("backup_id") or "")
        actor = request.decided_by or request.requester
        started = time.monotonic()
        try:
            # Exactly the backup the approvers saw, with the rows they saw: never "the newest of the request".
            if not backup_id:
                raise TargetChanged("the request does not name the backup its approvers saw")
            _, manifest = self.runtime.backups.find_manifest(stage.name, source, backup_id)
            changes = snapshot_changes(request.snapshot, restore_counts(manifest), approved_hash=request.snapshot_hash)
            if changes:
                raise TargetChanged(
                    f"backup `{backup_id}` no longer holds the approved rows: " + "; ".join(changes[:6])
                )
            report = self.runtime.backups.restore(
                stage,
                source,
                actor=actor,
                dry_run=False,
                work_name=stage.work_name(f"request-{request.id}"),
                backup_id=backup_id,
            )
        except (NotFound, TargetChanged) as exc:
            self._finish(request, "stale", error=exc.message, result=TARGET_CHANGED)
        except UserFacingError as exc:
            self._finish(request, "failed", error=exc.message)
        except Exception:
            log.exception("restore failed", extra={"request": request.id})
            self._finish(request, "failed", error=_unexpected())
        else:
            result = restore_impact(report)
            result.update(rows=report.total_rows, seconds=round(time.monotonic() - started, 3))
            self._finish(request, "done", result=result)

    def _go_stale(self, request: DeleteRequest, stage: Stage, fresh: ImpactReport, changes: list[str]) -> None:
        """The numbers moved after approval: close this request and post the new ones for a fresh approval."""
        successor: DeleteRequest | None = None
        if fresh.deletable:
            successor = self._create(
                stage=stage,
                slug=request.slug,
                report=fresh,
                requester=request.requester,
                reason=request.reason,
                channel=request.channel,
                options=request.options,
                audit=(request.requester, {"replaces": request.id, "rows": fresh.total_rows}),
                replaces=request.id,
            )
        self._finish(
            request,
            "stale",
            error="the rows in scope changed since the approval: " + "; ".join(changes[:6]),
            result={"changes": changes, "replaced_by": successor.id if successor else None},
            replaced_by=successor.id if successor else None,
        )
        if successor is not None:
            try:
                self._post(successor)
            except UserFacingError:
                log.warning("the fresh request could not be posted", extra={"request": successor.id})

    def _finish(
        self,
        request: DeleteRequest,
        state: str,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
        **values: Any,
    ) -> None:
        detail: dict[str, Any] = {"error": error} if error else {}
        if result and "rows" in result:
            detail.update(rows=result["rows"], seconds=result["seconds"])
        for key in ("steps", "backup", "tables"):
            if result and key in result:
                detail[key] = result[key]
        self.requests.transition(
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

    # -- jobs -----------------------------------------------------------------------------

    def expire_due(self, now: datetime | None = None) -> int:
        """Close pending requests past their expiry; their messages say so."""
        now = now or self.clock()
        closed = 0
        for request_id in self.requests.ids_where(
            delete_requests.c.state == "pending", delete_requests.c.expires_at <= now
        ):
            done = self.requests.transition(
                request_id,
                "pending",
                "expired",
                where=(delete_requests.c.expires_at <= now,),
                notify=self._audited("system", "expired"),
            )
            if done is not None:
                closed += 1
        if closed:
            self._nudge()
        return closed

    def remind_due(self, now: datetime | None = None) -> int:
        """Shortly before a pending request expires, say so in its thread, once."""
        now = now or self.clock()
        window = min(REMIND_BEFORE, self.ttl / 3)
        sent = 0
        for request_id in self.requests.ids_where(
            delete_requests.c.state == "pending",
            delete_requests.c.reminded_at.is_(None),
            delete_requests.c.expires_at > now,
            delete_requests.c.expires_at <= now + window,
        ):
            done = self.requests.transition(
                request_id,
                "pending",
                "pending",
                where=(delete_requests.c.reminded_at.is_(None),),
                reminded_at=now,
                notify=self._remind,
            )
            sent += done is not None
        if sent:
            self._nudge()
        return sent

    def _remind(self, conn: Connection, request: DeleteRequest) -> None:
        if not request.channel or not request.message_ts or self.render is None:
            return
        missing = max(request.required_approvals - len(request.approvals), 0)
        who = "approval" + ("s" if missing != 1 else "") if request.protected else "confirmation"
        needed = f"{missing} more {who}" if request.protected else f"a confirmation from <@{request.requester}>"
        remaining = max(round((request.expires_at - (request.reminded_at or self.clock())).total_seconds() / 60), 0)
        outbox.enqueue(
            conn,
            "chat.postMessage",
            {
                "channel": request.channel,
                "thread_ts": request.message_ts,
                "text": f":alarm_clock: Reminder: {request.kind} request #{request.id} for `{request.slug}` on "
                f"{request.stage} expires in about {remaining} min; it still needs {needed}.",
            },
        )

    def recover(self) -> int:
        """Requests left `running` by a process that died (the database rolled the delete back), and
        approved requests nobody started: each is settled once, whichever replica gets there first."""
        if self.render is None:
            return 0
        for request_id in self.requests.ids_where(delete_requests.c.state == "approved"):
            self.runtime.submit(self.run, request_id)  # the runner lock and the CAS make it run once
        fixed = 0
        for request_id in self.requests.ids_where(delete_requests.c.state == "running"):
            with self._runner_lock(request_id) as free:
                if not free:
                    continue  # a live runner holds it
                request = self.requests.get(request_id)
                if request is None or request.state != "running":
                    continue
                stage = self.runtime.stages.get(request.stage)
                try:
                    if stage.is_running(stage.work_name(f"request-{request.id}")):
                        continue  # its transaction is still open on the stage (its process died mid-statement)
                    with stage.read() as conn:
                        still_there = server_exists(conn, request.slug)
                except UserFacingError:
                    continue  # the stage is unreachable; the next run looks again
                # A delete that committed took the server row with it; a restore that committed put it back.
                committed = still_there if request.kind == "restore" else not still_there
                if committed:
                    self._finish(request, "done", result={"recovered": True})
                else:
                    changed = "restored" if request.kind == "restore" else "deleted"
                    self._finish(
                        request,
                        "failed",
                        error=f"the bot stopped while the {request.kind} ran; the transaction was rolled back and "
                        f"nothing was {changed}",
                    )
                fixed += 1
        return fixed

    # -- Slack messages, audit ------------------------------------------------------------

    def view(self, request: DeleteRequest, progress: Progress | None = None) -> RequestView:
        return RequestView(request=request, progress=progress, backup_note=self.backup_note(request))

    def backup_note(self, request: DeleteRequest) -> str | None:
        """What the delete keeps before it runs, as its message says; None: no backup is taken."""
        if not request.takes_backup:
            return None
        backups = self.runtime.backups
        try:
            where = backups.store.description
        except UserFacingError as exc:
            return f"required, but {exc.message}"
        note = f"every row it deletes or changes, exported inside its transaction to {where}"
        target = self.runtime.settings.stages[request.stage].rds_snapshot
        if target is not None:
            note += f", after an RDS snapshot of {target.kind} `{target.identifier}`"
        return note

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
        """After a commit: queued Slack calls go out, and App Home tabs showing requests refresh."""
        self.runtime.outbox_worker.notify()
        self.runtime.changes.publish("approvals")

    def _audited(self, actor: str | None, outcome: str, detail: dict[str, Any] | None = None) -> Notify:
        """A transition's hook: its message refresh and its audit row, both in the transition's transaction.

        `actor` None: whoever decided the request (its last approver), else its requester.
        """

        def notify(conn: Connection, request: DeleteRequest) -> None:
            self._notify(conn, request)
            self._audit(request, actor or request.decided_by or request.requester, outcome, detail=detail, conn=conn)

        return notify

    def _audit(
        self,
        request: DeleteRequest,
        actor: str,
        outcome: str,
        *,
        detail: dict[str, Any] | None = None,
        required: bool = True,
        conn: Connection | None = None,
    ) -> None:
        """With `conn`, the row commits (or not) with the change it records."""
        self.runtime.audit.record(
            AuditEntry(
                actor=actor,
                stage=request.stage,
                command=request.kind,
                args=f"#{request.id} {request.slug}",
                outcome=outcome,
                detail={"request": request.id, "state": request.state, **(detail or {})},
            ),
            required=required,
            conn=conn,
        )


def _reason(request: CommandRequest, stage: Stage) -> str | None:
    """`--reason`, which a change on a protected stage must give."""
    reason: str | None = request.parsed.flags.get("reason")
    if stage.protected and not reason:
        raise CommandError(
            f'stage {stage.name} is protected: say why with `--reason "..."`', usage=request.parsed.verb.usage()
        )
    return reason


def _unexpected() -> str:
    return f"an unexpected error (reference `{request_id_var.get()}`); the transaction was rolled back"


def _result_json(result: DeleteResult, backup: DeleteBackup | None = None) -> dict[str, Any]:
    done: dict[str, Any] = {
        "rows": result.total_rows,
        "seconds": round(result.duration_s, 3),
        "steps": [
            {"table": s.table, "action": s.action, "rows": s.rows, "seconds": round(s.seconds, 3)} for s in result.steps
        ],
        "verified": result.verified,
        "verification": result.verification,
    }
    if backup is not None and backup.record is not None:
        record = backup.record
        done["backup"] = {
            "id": record.backup_id,
            "location": record.location,
            "rows": sum(record.row_counts.values()),
            "bytes": record.stored_bytes,
            "snapshot": (record.manifest.snapshot or {}).get("snapshot_id"),
        }
    return done


def restore_counts(source: RestoreReport | Manifest) -> dict[str, int]:
    """A restore's snapshot: rows per table and action, from its dry run or from the backup's manifest."""
    if isinstance(source, RestoreReport):
        return {f"{table} ({action})": rows for table, action, rows in source.tables}
    return {f"{s.qualified} ({s.action})": s.rows for s in restore_order(source)}


def restore_impact(report: RestoreReport) -> dict[str, Any]:
    """What a restore request shows and stores: the backup, and the rows per table in restore order."""
    return {
        "backup_id": report.backup_id,
        "source_request": report.request_id,
        "slug": report.slug,
        "tables": [{"table": t, "action": a, "rows": r} for t, a, r in report.tables],
        "total_rows": report.total_rows,
        "unchecked": list(report.unchecked),
        "triggers_disabled": list(report.triggers_disabled),
        "triggers_fire": list(report.triggers_fire),
        "not_restored": list(report.not_restored),
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

    def backup_progress(self, table: str, stored_bytes: int) -> None:
        """The scoped backup's progress (bytes stored of the table being exported) while it runs."""
        self.update(Progress("backup", table, stored_bytes, 0, time.monotonic() - self.started))

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
