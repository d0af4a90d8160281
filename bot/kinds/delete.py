"""Kind `delete`: delete one MCP server and everything in its scope (bot/deletion/), with its backup.

- plan: the impact report (rows per table, blockers, slow keys, estimate); `/mcp delete` asks.
- check: the request names its server by primary key. The approved numbers are compared where
  they can't move, inside the delete's own transaction (run); only when an RDS snapshot would be
  taken before that transaction are they counted first too, so a request gone stale does not cost
  a snapshot of the whole instance.
- run: the scoped backup (always on protected stages, `--backup` elsewhere) and the delete in
  one transaction that re-resolves the server by key and compares the snapshot and its hash. On a
  protected stage a server gone or renamed, counts beyond APPROVAL_DRIFT_PERCENT (a fresh
  request is posted with the new numbers) or a delete the database would now refuse make the
  request stale; nothing is deleted.
- verify: after the commit every deleted key is checked gone (done by the engine).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection

from bot.backups.delete_hook import DeleteBackup
from bot.backups.manifest import BackupContext
from bot.deletion.execute import (
    BeforeDelete,
    DeleteFailed,
    DeleteResult,
    Progress,
    SnapshotChanged,
    execute_delete,
)
from bot.deletion.identity import TARGET_CHANGES, snapshot_changes, stale_reason
from bot.deletion.impact import ImpactReport, plan_and_measure
from bot.deletion.plan import server_exists
from bot.deletion.scope import Rules
from bot.errors import UserFacingError
from bot.requests.asking import reason_for
from bot.requests.kinds import Kind, ProgressCallback, Proposal, Stale, kind
from bot.requests.store import Request
from bot.schema.impact import scope_drift_warnings
from bot.stages import Stage

if TYPE_CHECKING:
    from bot.runtime import Runtime
    from bot.service import CommandRequest

log = logging.getLogger(__name__)

MIN_BUDGET_S = 120.0
BUDGET_FACTOR = 3.0
BACKUP_S_PER_ROW = 10e-6  # a scoped backup exports ~200k rows/s (bench/bench_backup.py); doubled for safety


@dataclass(frozen=True)
class DeletePosted:
    request: Request
    report: ImpactReport


@dataclass(frozen=True)
class DeleteRefused:
    """Blockers: the database would refuse, so no request was created."""

    report: ImpactReport


@dataclass(frozen=True)
class DryRunDone:
    report: ImpactReport
    result: DeleteResult


@kind
class DeleteKind(Kind):
    name = "delete"
    title = "Delete"
    done = "deleted"

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        # Extra work inside every delete's transaction, after the backup (tests force failures with it).
        self.before_delete: BeforeDelete | None = None

    @property
    def settings(self) -> Any:
        return self.runtime.settings

    @property
    def rules(self) -> Rules:
        """How the engine reads edge rules the schema leaves open (NO_ACTION_EDGES)."""
        return Rules(no_action=self.settings.no_action_edges)

    def budget_s(self, report: ImpactReport, *, backup: bool = False) -> float:
        expected = report.estimated_s + (report.total_rows * BACKUP_S_PER_ROW if backup else 0.0)
        return min(max(MIN_BUDGET_S, expected * BUDGET_FACTOR), float(self.settings.delete_timeout_s))

    # -- plan -----------------------------------------------------------------------------

    def impact(
        self, stage: Stage, slug: str | None, server_key: dict[str, str] | None = None, *, counts_only: bool = False
    ) -> ImpactReport:
        """The impact report of deleting `slug` (bound to `server_key` when a request re-checks it).

        `counts_only`: the counts and blockers, without the cost probes and the schema comparison.
        """
        with stage.read() as conn:
            _, report = plan_and_measure(conn, slug, server_key=server_key, rules=self.rules, probe=not counts_only)
        report.limit_s = float(self.settings.delete_timeout_s)
        if counts_only:
            return report
        tables = [t.table for t in report.tables]
        report.schema_warnings = scope_drift_warnings(self.runtime.stages, stage, tables, self.settings.schema)
        return report

    @staticmethod
    def proposal(stage: Stage, report: ImpactReport, options: dict[str, Any]) -> Proposal:
        return Proposal(
            kind="delete",
            stage=stage.name,
            subject=report.slug,
            target=report.server_key,
            impact=report.to_json(),
            snapshot=report.snapshot,
            options=options,
        )

    def request(self, command: CommandRequest) -> DeletePosted | DeleteRefused | DryRunDone:
        """`/mcp delete`: a dry run, a refusal with its blockers, or a request posted for confirmation."""
        stage = command.stage
        assert stage is not None
        slug = command.parsed.args["slug"]
        if command.parsed.flags.get("dry-run"):
            report = self.impact(stage, slug)
            result = execute_delete(
                stage,
                slug,
                server_key=report.server_key,
                expected=None,
                budget_s=self.budget_s(report),
                lock_timeout_ms=self.settings.lock_timeout_ms,
                dry_run=True,
                rules=self.rules,
            )
            return DryRunDone(report, result)
        reason = reason_for(command, stage)
        # Protected stages always keep what a delete removes; elsewhere `--backup` asks for it.
        backup = stage.protected or bool(command.parsed.flags.get("backup"))
        if backup:
            self.runtime.backups.require_destination()  # no destination: refused now, not after the approvals
        report = self.impact(stage, slug)
        if not report.deletable:
            return DeleteRefused(report)
        posted = self.runtime.requests.propose(
            self.proposal(stage, report, {"backup": backup}),
            requester=command.actor,
            reason=reason,
            channel=command.invocation.channel_id,
            detail={"rows": report.total_rows, "reason": reason or ""},
        )
        return DeletePosted(posted, report)

    def notes(self, request: Request) -> dict[str, Any]:
        return {"backup": self.backup_note(request)}

    def backup_note(self, request: Request) -> str | None:
        """What the delete keeps before it runs, as its message says; None: no backup is taken."""
        if not request.options.get("backup"):
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

    # -- check, run, verify ----------------------------------------------------------------

    def _drift(self, request: Request) -> float:
        """How far fresh counts may move from the approved ones: none for a requester's own confirmation."""
        return float(self.settings.approval_drift_percent) if request.protected else 0.0

    def _fresh(self, request: Request, stage: Stage, *, counts_only: bool = False) -> ImpactReport:
        """The impact again, from the approved server's key; Stale if that server is gone or renamed."""
        try:
            return self.impact(stage, request.subject, request.target, counts_only=counts_only)
        except TARGET_CHANGES as exc:
            raise self._target_changed(stage, request, exc) from None

    @staticmethod
    def _target_changed(stage: Stage, request: Request, exc: UserFacingError) -> Stale:
        try:
            with stage.read() as conn:
                reason = stale_reason(conn, request.subject, exc)
        except UserFacingError:
            reason = exc.message
        return Stale(reason, target_changed=True)

    def _stale_counts(self, request: Request, stage: Stage, changes: list[str]) -> Stale:
        """Counts moved beyond the drift: stale, with the same delete planned afresh for a new approval."""
        fresh = self._fresh(request, stage)
        successor = self.proposal(stage, fresh, request.options) if fresh.deletable else None
        return Stale(
            "the rows in scope changed since the approval: " + "; ".join(changes[:6]),
            successor=successor,
            changes=changes,
        )

    @staticmethod
    def _refused_now(report: ImpactReport) -> Stale:
        reasons = [b.reason for b in report.blockers]
        more = f" (and {len(reasons) - 3} more)" if len(reasons) > 3 else ""
        return Stale(
            "the database would now refuse the delete: " + "; ".join(reasons[:3]) + more,
            changes=["the database would now refuse the delete"],
        )

    def _snapshot_first(self, request: Request) -> bool:
        """Is an RDS snapshot taken before the delete's transaction opens (minutes, the whole instance)?"""
        return bool(request.options.get("backup")) and self.settings.stages[request.stage].rds_snapshot is not None

    def check(self, request: Request) -> None:
        """The server's key is required. Its counts are compared inside the delete's transaction (run), from
        the key; counted here first only when an RDS snapshot would come before that transaction."""
        if not request.target:
            raise Stale("the request does not name its server by primary key", target_changed=True)
        if not request.protected or not self._snapshot_first(request):
            return
        stage = self.runtime.stages.get(request.stage)
        fresh = self._fresh(request, stage, counts_only=True)
        changes = snapshot_changes(
            request.snapshot, fresh.snapshot, self._drift(request), approved_hash=request.snapshot_hash
        )
        if changes:
            raise self._stale_counts(request, stage, changes)
        if not fresh.deletable:
            raise self._refused_now(fresh)

    def run(self, request: Request, progress: ProgressCallback) -> dict[str, Any]:
        stage = self.runtime.stages.get(request.stage)
        report = ImpactReport.from_json(request.impact)
        started = time.monotonic()
        backup: DeleteBackup | None = None
        if request.options.get("backup"):
            backup = self._backup_for(request, stage, progress, started)
        result: DeleteResult | None = None
        try:
            try:
                result = execute_delete(
                    stage,
                    request.subject,
                    server_key=request.target,
                    expected=request.snapshot,
                    expected_hash=request.snapshot_hash,
                    drift_percent=self._drift(request),
                    budget_s=self.budget_s(report, backup=backup is not None),
                    lock_timeout_ms=self.settings.lock_timeout_ms,
                    before_delete=self._before_delete(backup),
                    progress=progress,
                    work_name=stage.work_name(f"request-{request.id}"),
                    rules=self.rules,
                )
            finally:
                self._settle(backup, committed=result is not None)
        except TARGET_CHANGES as exc:
            raise self._target_changed(stage, request, exc) from None
        except SnapshotChanged as exc:
            if not request.protected:
                raise
            raise self._stale_counts(request, stage, exc.changes) from None
        except DeleteFailed as exc:
            if request.protected:
                self._stale_if_refused_now(request, stage, exc)
            raise
        return result_json(result, backup)

    def _stale_if_refused_now(self, request: Request, stage: Stage, failed: DeleteFailed) -> None:
        """A refusal the impact report foresees now (rows that block, a privilege gone): what was approved no
        longer holds, so the request is stale; any other refusal (a trigger's, say) stays the failure."""
        try:
            fresh = self._fresh(request, stage, counts_only=True)
        except Stale:
            raise
        except UserFacingError:
            return
        if not fresh.deletable:
            raise self._refused_now(fresh) from failed

    def verify(self, request: Request, result: dict[str, Any]) -> list[str]:
        return [] if result.get("verified") else list(result.get("verification") or [])

    def recover(self, request: Request) -> tuple[str, str | None] | None:
        """One transaction: the server row gone means the delete committed, there means it rolled back."""
        stage = self.runtime.stages.get(request.stage)
        with stage.read() as conn:
            still_there = server_exists(conn, request.subject, server_key=request.target or None)
        if not still_there:
            return "done", None
        return "failed", "the bot stopped while the delete ran; the transaction was rolled back and nothing was deleted"

    # -- the backup inside the delete's transaction ----------------------------------------

    def _backup_for(self, request: Request, stage: Stage, progress: ProgressCallback, started: float) -> DeleteBackup:
        """The scoped backup the delete takes inside its transaction (and the RDS snapshot before it, if any)."""
        backups = self.runtime.backups
        backups.require_destination()
        snapshot = backups.snapshot(stage, actor=request.requester)
        context = BackupContext(
            stage=stage.name,
            request_id=str(request.id),
            requested_by=request.requester,
            server_id=request.target.get("id"),
            slug=request.subject,
            approved_by=tuple(a for a in request.approvals if a != request.requester),
            snapshot=snapshot,
        )

        def on_progress(table: str, stored_bytes: int) -> None:
            progress(Progress("backup", table, stored_bytes, 0, time.monotonic() - started))

        return DeleteBackup(backups.scoped(context, on_progress=on_progress))

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


def result_json(result: DeleteResult, backup: DeleteBackup | None = None) -> dict[str, Any]:
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


def delete_kind(runtime: Runtime) -> DeleteKind:
    return cast(DeleteKind, runtime.requests.kind("delete"))
