"""The runtime's entry to backups: the destination, the index, and the three things people ask for.

The deletion engine gets a `ScopedBackup` from `scoped(...)` (and, on stages with an RDS
target, a snapshot from `snapshot_before_delete` before it opens its transaction);
`/mcp backup`, `/mcp backups` and `/mcp restore` go through `full_backup`, `latest` and
`restore`.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, update

from bot.audit import AuditEntry, AuditLog
from bot.backups.export import ScopedBackup
from bot.backups.full import FullBackupState, run_full_backup
from bot.backups.index import BackupIndex, BackupRow, backups
from bot.backups.manifest import MANIFEST_NAME, BackupContext, Manifest, load_manifest
from bot.backups.restore import RestoreReport, restore
from bot.backups.snapshot import SnapshotFailed, take_snapshot
from bot.backups.store import BackupStore, LocalStore, make_store
from bot.config import BackupSettings, Settings
from bot.errors import NotFound
from bot.progress import Progress
from bot.stages import Stage

log = logging.getLogger(__name__)

RESTORE_STATEMENT_TIMEOUT_MS = 30 * 60 * 1000

# Runs inside a restore's transaction once the rows are back (a dry run: after its rollback). It may
# change more (forget-user re-applies erasures), add notes to the report, or raise to refuse the whole
# restore. It may return a callable to run once the restore has committed (recording what it did).
AfterRestore = Callable[[Connection, Manifest, RestoreReport], Callable[[], None] | None]
# Runs inside a restore's transaction before anything is read: it may give the restore another view
# of the backup (forget-user: without the people erased since, copies in the scratch directory) and
# notes for the report, or raise to refuse the restore.
BeforeRestore = Callable[[Connection, Manifest, BackupStore, Path], tuple[Manifest, BackupStore, list[str]]]


class Backups:
    def __init__(self, settings: Settings, bot_engine: Engine, audit: AuditLog) -> None:
        self.settings = settings
        self.config: BackupSettings = settings.backup
        self.index = BackupIndex(bot_engine)
        self.audit = audit
        self._store: BackupStore | None = None
        self._lock = threading.Lock()
        self.after_restore: list[AfterRestore] = []
        self.before_restore: list[BeforeRestore] = []

    @property
    def store(self) -> BackupStore:
        """Made on first use, so a bot without a destination still starts (and refuses backups clearly)."""
        with self._lock:
            if self._store is None:
                self._store = make_store(self.config)
            return self._store

    def require_destination(self) -> BackupStore:
        """The store, or BackupNotConfigured: checked before a mutation is audited as started."""
        return self.store

    def scoped(self, context: BackupContext, *, on_progress: Callable[[str, int], None] | None = None) -> ScopedBackup:
        return ScopedBackup(self.store, self.index, context, audit=self.audit, on_progress=on_progress)

    def snapshot(self, stage: Stage, *, actor: str, rds_client: Any = None) -> dict[str, Any] | None:
        """The stage's RDS/Aurora snapshot if one is configured, audited either way.

        Before a delete, the engine calls this before opening its transaction and puts the result in
        the BackupContext (so it lands in the manifest); SnapshotFailed means the delete must not run.
        """
        target = stage.config.rds_snapshot
        if target is None:
            return None
        started = time.perf_counter()
        entry = {
            "actor": actor,
            "stage": stage.name,
            "command": "snapshot",
            "args": f"{target.kind} {target.identifier}",
        }
        try:
            taken = take_snapshot(target, stage=stage.name, wait_s=self.config.snapshot_wait_s, client=rds_client)
        except SnapshotFailed as exc:
            self.audit.record(AuditEntry(**entry, outcome="error", detail={"reason": exc.message}))
            raise
        self.audit.record(
            AuditEntry(**entry, outcome="ok", duration_ms=int((time.perf_counter() - started) * 1000), detail=taken),
            required=True,
        )
        return taken

    def full_backup(
        self, stage: Stage, *, actor: str, progress: Progress | None = None, rds_client: Any = None
    ) -> FullBackupState:
        snapshot = None
        if stage.config.rds_snapshot is not None:

            def snapshot() -> dict[str, Any] | None:
                return self.snapshot(stage, actor=actor, rds_client=rds_client)

        return run_full_backup(
            stage,
            self.store,
            self.index,
            actor=actor,
            lock_timeout_ms=self.settings.lock_timeout_ms,
            connect_timeout_s=self.settings.connect_timeout_s,
            progress=progress,
            progress_interval_s=self.config.progress_interval_s,
            snapshot=snapshot,
            pg_dump=self.config.pg_dump,
        )

    def find_manifest(
        self, stage: str, request_id: str, backup_id: str | None = None
    ) -> tuple[BackupRow | None, Manifest]:
        """The request's scoped backup: from the index, else from the store's layout (the index may be lost).

        Without `backup_id`, the newest one; with it, exactly that backup of that request, or NotFound.
        """
        if backup_id is not None:
            return self._exact_manifest(stage, request_id, backup_id)
        row = self.index.find_for_request(stage, request_id)
        if row is not None and row.location:
            return row, load_manifest(self.store, row.location)
        prefix = f"{stage}/scoped/{request_id}/"
        manifests = [o for o in self.store.list(prefix) if o.key.endswith("/" + MANIFEST_NAME)]
        if not manifests:
            raise NotFound(f"no scoped backup of request `{request_id}` on stage {stage}")
        newest = max(manifests, key=lambda o: (o.modified is not None, o.modified, o.key))
        return None, load_manifest(self.store, newest.key)

    def _exact_manifest(self, stage: str, request_id: str, backup_id: str) -> tuple[BackupRow | None, Manifest]:
        gone = NotFound(f"backup `{backup_id}` of request `{request_id}` on stage {stage} is no longer available")
        row = self.index.get(backup_id)
        if row is not None:
            if (row.stage, row.request_id, row.kind) != (stage, request_id, "scoped") or row.state != "complete":
                raise gone
            if not row.location:
                raise gone
            key = row.location
        else:  # the index was lost: the store's layout names the backup
            suffix = f"/{backup_id}/{MANIFEST_NAME}"
            keys = [o.key for o in self.store.list(f"{stage}/scoped/{request_id}/") if o.key.endswith(suffix)]
            if not keys:
                raise gone
            key = keys[0]
        manifest = load_manifest(self.store, key)
        if (manifest.backup_id, manifest.request_id, manifest.stage) != (backup_id, request_id, stage):
            raise gone
        return row, manifest

    def restore(
        self,
        stage: Stage,
        request_id: str,
        *,
        actor: str,
        dry_run: bool,
        work_name: str | None = None,
        backup_id: str | None = None,
    ) -> RestoreReport:
        """Restore the request's newest scoped backup, or exactly `backup_id` (what approvers saw)."""
        row, manifest = self.find_manifest(stage.name, request_id, backup_id)
        committed: list[Callable[[], None]] = []
        with (
            stage.write(statement_timeout_ms=RESTORE_STATEMENT_TIMEOUT_MS, application_name=work_name) as conn,
            tempfile.TemporaryDirectory(prefix="mcp-ops-restore-") as scratch,
        ):
            store, notes = self.store, []
            for before in self.before_restore:
                manifest, store, more = before(conn, manifest, store, Path(scratch))
                notes += more
            report = restore(conn, store, manifest, stage=stage.name, dry_run=dry_run)
            report.notes[:0] = notes
            for hook in self.after_restore:
                then = hook(conn, manifest, report)
                if then is not None:
                    committed.append(then)
        for then in committed:
            then()
        if report.restored and row is not None:
            self.index.mark_restored(row.id, actor)
        return report

    def latest(self, *, stage: str | None, slug: str | None, limit: int) -> list[BackupRow]:
        return self.index.latest(stage=stage, slug=slug, limit=limit)

    def prune_local(self) -> int:
        """BACKUP_RETENTION_DAYS for a local directory (S3 uses a lifecycle rule); returns files removed."""
        store = self.store
        days = self.config.retention_days
        if days is None or not isinstance(store, LocalStore):
            return 0
        removed = store.prune(days)
        if removed:
            with self.index.engine.begin() as conn:
                conn.execute(
                    update(backups)
                    .where(backups.c.location.in_(removed), backups.c.state == "complete")
                    .values(state="expired")
                )
            log.info("expired backups pruned", extra={"files": len(removed)})
        return len(removed)
