"""The backup verbs: `/mcp backup`, `/mcp backups`, `/mcp restore`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from bot.audit import AuditEntry
from bot.backups.full import FullBackupState
from bot.backups.index import BackupRow
from bot.backups.restore import RestoreReport
from bot.kinds.restore import RestorePosted, restore_kind
from bot.runtime import Runtime
from bot.service import CommandRequest, operation
from bot.stages import Stage


@dataclass(frozen=True)
class BackupList:
    rows: list[BackupRow]
    stage: str | None
    slug: str | None
    destination: str
    now: datetime


def _stage(request: CommandRequest) -> Stage:
    assert request.stage is not None, "verbs with stage='required' always have one"
    return request.stage


def _audit_start(runtime: Runtime, request: CommandRequest) -> None:
    """A mutation is audited before it starts, and does not start if the audit cannot be written."""
    runtime.audit.record(
        AuditEntry(
            actor=request.actor,
            stage=_stage(request).name,
            command=request.verb,
            args=request.parsed.canonical(include_stage=False).removeprefix(request.verb).strip(),
            outcome="started",
        ),
        required=True,
    )


@operation("backups")
def run_backups(runtime: Runtime, request: CommandRequest) -> BackupList:
    stage = request.stage.name if request.stage else None
    slug = request.parsed.flags.get("slug")
    rows = runtime.backups.latest(stage=stage, slug=slug, limit=request.parsed.flags["limit"])
    return BackupList(rows, stage, slug, runtime.settings.backup.destination, datetime.now(UTC))


@operation("backup")
def run_backup(runtime: Runtime, request: CommandRequest) -> FullBackupState:
    stage = _stage(request)
    runtime.backups.require_destination()  # no destination: refused before anything is audited as started
    _audit_start(runtime, request)
    return runtime.backups.full_backup(stage, actor=request.actor, progress=request.progress)


@operation("restore")
def run_restore(runtime: Runtime, request: CommandRequest) -> RestoreReport | RestorePosted:
    stage = _stage(request)
    dry_run = bool(request.parsed.flags.get("dry-run"))
    source = request.parsed.args["request-id"]
    if runtime.policy.restore_needs_approval(protected=stage.protected, dry_run=dry_run):
        return restore_kind(runtime).request(request, source)
    if not dry_run:
        _audit_start(runtime, request)
    return runtime.backups.restore(stage, source, actor=request.actor, dry_run=dry_run)
