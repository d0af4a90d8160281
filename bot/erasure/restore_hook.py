"""A restore never brings a forgotten person back.

Before anything is read into the stage, every erasure of the stage that started after the backup was
taken (and may have committed) is looked for in the backup: the rows that belong to the person
(theirs, and through every foreign key the rows that depend on them) are left out of what is
restored, as `--purge-backups` would leave them out, from copies of the changed files in a scratch
directory (the backup itself is not changed). So a row of the person that points at a user row
erased since (their session on the server being restored, when they used other servers too) never
meets the foreign key it would break. Then, once the rows are back, each such erasure is applied
again inside the restore's transaction (what a filter can't see: rows matched by email since).

If an erasure cannot be applied again (a row now protects the person, the schema lost a column), or
the ledger can't be read, the whole restore is refused, naming the erasure, and nothing is written.
A dry run does the same filtering and lists the erasures. What was done is audited and added to each
erasure's history once the restore has committed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from bot.audit import AuditEntry, AuditLog
from bot.backups.manifest import Manifest
from bot.backups.restore import RestoreReport
from bot.backups.store import BackupStore, LocalStore
from bot.deletion.catalog import load_catalog
from bot.erasure.backups import BackupScanner
from bot.erasure.ledger import Erasure, ErasureLedger
from bot.erasure.run import reapply
from bot.erasure.settings import ErasureSettings
from bot.erasure.targets import resolve_targets
from bot.errors import UserFacingError
from bot.slacktext.words import plural

REAPPLY_BUDGET_S = 600.0
LEFT_OUT = "mcpops_erasures_left_out"  # conn.info: rows `before` left out, per erasure, for `__call__`


class ErasureRestoreRefused(UserFacingError):
    outcome = "conflict"


def _taken_at(manifest: Manifest) -> datetime:
    try:
        taken = datetime.fromisoformat(manifest.created_at)
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)  # unknown: every erasure on the stage applies
    return taken if taken.tzinfo else taken.replace(tzinfo=UTC)


class Overlay:
    """The backup's store as the restore reads it: files a filter rewrote come from the scratch store."""

    def __init__(self, base: BackupStore, scratch: LocalStore) -> None:
        self.base = base
        self.scratch = scratch

    def _from(self, key: str) -> BackupStore:
        return self.scratch if self.scratch.size(key) is not None else self.base

    def read_chunks(self, key: str) -> Iterator[bytes]:
        return self._from(key).read_chunks(key)

    def read_bytes(self, key: str, *, limit: int = 16 * 1024 * 1024) -> bytes:
        return self._from(key).read_bytes(key, limit=limit)

    def size(self, key: str) -> int | None:
        return self._from(key).size(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)


class ReapplyErasures:
    """The backup service's hooks: `before` (leave the forgotten out) and the after-restore hook (`__call__`)."""

    def __init__(self, ledger: ErasureLedger, settings: ErasureSettings, audit: AuditLog) -> None:
        self.ledger = ledger
        self.settings = settings
        self.audit = audit

    def _binding(self, stage: str, manifest: Manifest) -> list[Erasure]:
        try:
            return self.ledger.binding_since(stage, _taken_at(manifest))
        except SQLAlchemyError as exc:
            raise ErasureRestoreRefused(
                "the restore was refused: the erasure ledger (bot database) can't be read, and the backup could"
                " bring back a forgotten person; nothing was restored"
            ) from exc

    def before(
        self, conn: Connection, manifest: Manifest, store: BackupStore, scratch: Path
    ) -> tuple[Manifest, BackupStore, list[str]]:
        """The backup without the people erased since it was taken (copies in `scratch`), and notes saying so."""
        left_out: dict[int, int] = {}
        conn.info[LEFT_OUT] = left_out  # rows per erasure, for the history once the restore has committed
        binding = self._binding(manifest.stage, manifest)
        if not binding:
            return manifest, store, []
        catalog = load_catalog(conn)
        targets = resolve_targets(conn, catalog, self.settings)
        scratch_store = LocalStore(scratch)
        view = Overlay(store, scratch_store)
        notes: list[str] = []
        for erasure in binding:
            scanner = BackupScanner(view, catalog, targets, erasure.target, dict(erasure.target.emails))
            manifest, finding = scanner.without(manifest, scratch_store)
            if finding.rows:
                left_out[erasure.id] = finding.rows
                notes.append(
                    f"erasure #{erasure.id} ({erasure.label}): {plural(finding.rows, 'row')} of the forgotten person in"
                    " this backup left out of the restore"
                )
        return manifest, (view if notes else store), notes

    def __call__(self, conn: Connection, manifest: Manifest, report: RestoreReport) -> Callable[[], None] | None:
        left_out: dict[int, int] = conn.info.pop(LEFT_OUT, None) or {}
        binding = self._binding(report.stage, manifest)
        if not binding:
            return None
        if report.dry_run:
            names = ", ".join(f"#{e.id} ({e.label})" for e in binding)
            report.notes.append(f"erasures made since this backup, applied again after restoring: {names}")
            return None
        done: list[tuple[int, str, dict[str, int]]] = []  # erasure, label, rows removed after restoring
        for erasure in binding:
            try:
                counts = reapply(conn, self.settings, erasure.target, budget_s=REAPPLY_BUDGET_S)
            except UserFacingError as exc:
                raise ErasureRestoreRefused(
                    f"the restore was refused: it would bring back the person forgotten by erasure #{erasure.id}"
                    f" ({erasure.label}) on {report.stage}, and applying that erasure again failed ({exc.message});"
                    " nothing was restored"
                ) from exc
            rows = sum(counts.values())
            report.notes.append(
                f"erasure #{erasure.id} ({erasure.label}) applied again: {plural(rows, 'row')} of the forgotten person"
                " removed or anonymised"
            )
            done.append((erasure.id, erasure.label, counts))

        def record() -> None:
            for erasure_id, label, counts in done:
                event: dict[str, Any] = {"event": "reapplied", "backup": manifest.backup_id, "counts": counts}
                event["left_out"] = left_out.get(erasure_id, 0)
                event["at"] = datetime.now(UTC).isoformat(timespec="seconds")
                self.ledger.add_event(erasure_id, event)
                self.audit.record(
                    AuditEntry(
                        actor="system",
                        stage=report.stage,
                        command="forget-user",
                        args=f"#{erasure_id} {label}",
                        outcome="reapplied",
                        detail={
                            "backup": manifest.backup_id,
                            "rows": sum(counts.values()),
                            "left_out": left_out.get(erasure_id, 0),
                        },
                    )
                )

        return record
