"""A restore never brings a forgotten person back: every erasure on the stage that started after the
backup was taken is applied again inside the restore's transaction, once its rows are back.

If an erasure cannot be applied again (a row now protects the person, the schema lost a column), the
whole restore is refused, naming the erasure, and nothing is written. A dry run lists the erasures
the restore would apply again. What was done is audited and added to each erasure's history once
the restore has committed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from bot.audit import AuditEntry, AuditLog
from bot.backups.manifest import Manifest
from bot.backups.restore import RestoreReport
from bot.erasure.ledger import ErasureLedger
from bot.erasure.run import reapply
from bot.erasure.settings import ErasureSettings
from bot.errors import UserFacingError

REAPPLY_BUDGET_S = 600.0


class ErasureRestoreRefused(UserFacingError):
    outcome = "conflict"


def _taken_at(manifest: Manifest) -> datetime:
    try:
        taken = datetime.fromisoformat(manifest.created_at)
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)  # unknown: every erasure on the stage applies
    return taken if taken.tzinfo else taken.replace(tzinfo=UTC)


class ReapplyErasures:
    """The backup service's after-restore hook (`Backups.after_restore`)."""

    def __init__(self, ledger: ErasureLedger, settings: ErasureSettings, audit: AuditLog) -> None:
        self.ledger = ledger
        self.settings = settings
        self.audit = audit

    def __call__(self, conn: Connection, manifest: Manifest, report: RestoreReport) -> Callable[[], None] | None:
        try:
            binding = self.ledger.binding_since(report.stage, _taken_at(manifest))
        except SQLAlchemyError as exc:
            raise ErasureRestoreRefused(
                "the restore was refused: the erasure ledger (bot database) can't be read, and the backup could"
                " bring back a forgotten person; nothing was restored"
            ) from exc
        if not binding:
            return None
        if report.dry_run:
            names = ", ".join(f"#{e.id} ({e.label})" for e in binding)
            report.notes.append(f"erasures made since this backup, applied again after restoring: {names}")
            return None
        done: list[tuple[int, str, dict[str, int]]] = []
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
                f"erasure #{erasure.id} ({erasure.label}) applied again: {rows:,} row(s) of the forgotten person"
                " removed or anonymised"
            )
            done.append((erasure.id, erasure.label, counts))

        def record() -> None:
            for erasure_id, label, counts in done:
                event = {"event": "reapplied", "backup": manifest.backup_id, "counts": counts}
                event["at"] = datetime.now(UTC).isoformat(timespec="seconds")
                self.ledger.add_event(erasure_id, event)
                self.audit.record(
                    AuditEntry(
                        actor="system",
                        stage=report.stage,
                        command="forget-user",
                        args=f"#{erasure_id} {label}",
                        outcome="reapplied",
                        detail={"backup": manifest.backup_id, "rows": sum(counts.values())},
                    )
                )

        return record
