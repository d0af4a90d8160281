"""Kind `restore`: put back what a delete removed, from its scoped backup (bot/backups/).

- plan: a dry run of the restore (schema fingerprint, checksums, conflicts), rows per table; on a
  protected stage `/mcp restore ... --reason` asks (elsewhere the command restores at once).
- check: exactly the backup id the approvers saw, holding the rows they saw (never "the newest
  backup of the request"); gone or different: stale.
- run: the restore in one transaction, parents first; a conflict found now writes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from bot.backups.manifest import Manifest
from bot.backups.restore import RestoreReport, restore_order
from bot.deletion.identity import snapshot_changes
from bot.deletion.plan import server_exists
from bot.errors import NotFound
from bot.requests.asking import reason_for
from bot.requests.kinds import Kind, ProgressCallback, Proposal, Stale, kind
from bot.requests.store import Request

if TYPE_CHECKING:
    from bot.runtime import Runtime
    from bot.service import CommandRequest


@dataclass(frozen=True)
class RestorePosted:
    """A restore on a protected stage: checked by a dry run, posted for approval."""

    request: Request
    report: RestoreReport


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


@kind
class RestoreKind(Kind):
    name = "restore"
    title = "Restore"
    done = "restored"

    def request(self, command: CommandRequest, source: str) -> RestorePosted:
        """Dry-run the restore now (conflicts answer at once), then ask for approvals."""
        stage = command.stage
        assert stage is not None
        reason = reason_for(command, stage)
        checked = self.runtime.backups.restore(stage, source, actor=command.actor, dry_run=True)
        _, manifest = self.runtime.backups.find_manifest(stage.name, source, checked.backup_id)
        proposal = Proposal(
            kind="restore",
            stage=stage.name,
            subject=checked.slug or "?",
            # The backup by id, and the server it holds by key: what recovery looks for, never the slug alone.
            target={"backup_id": checked.backup_id, "request": source, "server_id": manifest.server_id},
            impact=restore_impact(checked),
            snapshot=restore_counts(checked),
            options={"source_request": source, "backup_id": checked.backup_id},
        )
        posted = self.runtime.requests.propose(
            proposal,
            requester=command.actor,
            reason=reason,
            channel=command.invocation.channel_id,
            detail={"rows": checked.total_rows, "reason": reason},
        )
        return RestorePosted(posted, checked)

    def check(self, request: Request) -> None:
        """Exactly the backup the approvers saw, with the rows they saw."""
        backup_id = str(request.options.get("backup_id") or "")
        if not backup_id:
            raise Stale("the request does not name the backup its approvers saw", target_changed=True)
        source = str(request.options.get("source_request", ""))
        try:
            _, manifest = self.runtime.backups.find_manifest(request.stage, source, backup_id)
        except NotFound as exc:
            raise Stale(exc.message, target_changed=True) from None
        changes = snapshot_changes(request.snapshot, restore_counts(manifest), approved_hash=request.snapshot_hash)
        if changes:
            raise Stale(f"backup `{backup_id}` no longer holds the approved rows: " + "; ".join(changes[:6]))

    def run(self, request: Request, progress: ProgressCallback) -> dict[str, Any]:
        stage = self.runtime.stages.get(request.stage)
        started = time.monotonic()
        try:
            report = self.runtime.backups.restore(
                stage,
                str(request.options.get("source_request", "")),
                actor=request.decided_by or request.requester,
                dry_run=False,
                work_name=stage.work_name(f"request-{request.id}"),
                backup_id=str(request.options["backup_id"]),
            )
        except NotFound as exc:
            raise Stale(exc.message, target_changed=True) from None
        result = restore_impact(report)
        result.update(rows=report.total_rows, seconds=round(time.monotonic() - started, 3))
        return result

    def recover(self, request: Request) -> tuple[str, str | None] | None:
        """One transaction: a restore that committed put the server row back (by its key: its slug may be
        another server's by now)."""
        stage = self.runtime.stages.get(request.stage)
        server_id = request.target.get("server_id")
        with stage.read() as conn:
            if server_id:
                back = server_exists(conn, server_key={"id": server_id})
            else:
                back = server_exists(conn, request.subject)
        if back:
            return "done", None
        return (
            "failed",
            "the bot stopped while the restore ran; the transaction was rolled back and nothing was restored",
        )


def restore_kind(runtime: Runtime) -> RestoreKind:
    return cast(RestoreKind, runtime.requests.kind("restore"))
