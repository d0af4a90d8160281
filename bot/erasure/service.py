"""Forget-user's domain entry: impact (one stage or all), run with receipt, backups, restore hook. No Slack.

The run: the ledger row first (`running`), then the erasure in one transaction on the stage, the row
settled with the counts, then the scoped backups taken before it are read for the person: listed in
the receipt, or (`--purge-backups`) rewritten without them (deleted when nothing else is left) and
recorded. Full dumps and RDS snapshots cannot be rewritten: the receipt names them as where the
person may remain until they expire. Every audit line carries the digest label and counts only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from bot.audit import AuditEntry, AuditLog
from bot.backups.manifest import load_manifest
from bot.backups.service import Backups
from bot.backups.store import BackupNotConfigured
from bot.config import Settings
from bot.deletion.catalog import load_catalog
from bot.deletion.execute import ProgressCallback
from bot.erasure.backups import BackupFinding, BackupScanner, scoped_manifests
from bot.erasure.identity import Person
from bot.erasure.ledger import ErasureLedger
from bot.erasure.plan import ErasureImpact, ErasureTarget, measure_erasure
from bot.erasure.restore_hook import ReapplyErasures
from bot.erasure.run import ErasureResult, run_erasure
from bot.erasure.targets import resolve_targets
from bot.errors import NotFound, UserFacingError
from bot.stages import Stage, StageRegistry

log = logging.getLogger(__name__)

MIN_BUDGET_S = 120.0
BUDGET_FACTOR = 3.0


@dataclass(frozen=True)
class DryRun:
    """The impact and the real counts of a rolled-back run on one stage."""

    stage: str
    protected: bool
    impact: ErasureImpact
    result: ErasureResult


class ErasureBlocked(UserFacingError):
    """A RESTRICT reference to the person's rows (a legal hold): the database would refuse; nothing is run."""

    outcome = "refused"

    def __init__(self, stage: str, impact: ErasureImpact) -> None:
        reasons = "; ".join(b.reason for b in impact.delete.blockers)
        super().__init__(f"the database would refuse this erasure on {stage}: {reasons}")
        self.stage = stage
        self.impact = impact


@dataclass(frozen=True)
class StageDryRun:
    stage: str
    protected: bool
    dry_run: DryRun | None = None
    nothing: bool = False  # nothing on the stage matches the identifier
    error: str | None = None  # unreachable, blocked, ...


@dataclass(frozen=True)
class AllStages:
    """`--all-stages`: one dry run per stage, combined; the erasures themselves stay per stage."""

    label: str
    stages: list[StageDryRun]


@dataclass
class Receipt:
    """What the receipt message says: what was erased where, and where the person may remain."""

    erasure_id: int
    stage: str
    label: str
    result: ErasureResult
    backups: list[BackupFinding] = field(default_factory=list)  # scoped backups that held the person
    purged: bool = False
    full_backups: list[str] = field(default_factory=list)  # full dumps taken before (cannot be rewritten)
    snapshots: list[str] = field(default_factory=list)  # RDS/Aurora snapshots taken before
    backup_error: str | None = None  # the backups could not be read (no destination, store down)

    def to_json(self) -> dict[str, Any]:
        return {
            "erasure": self.erasure_id,
            "rows": self.result.total_rows,
            "steps": self.result.steps,
            "seconds": round(self.result.duration_s, 3),
            "verified": self.result.verified,
            "verification": self.result.verification,
            "backups": [b.to_json() for b in self.backups],
            "purged": self.purged,
            "full_backups": self.full_backups,
            "snapshots": self.snapshots,
            "backup_error": self.backup_error,
        }


@dataclass
class BackupsPurged:
    """`--purge-backups` for a person erased earlier without it: the scoped backups taken before that erasure."""

    erasure_id: int
    stage: str
    label: str
    request_id: int | None = None  # the request whose message is the erasure's receipt
    backups: list[BackupFinding] = field(default_factory=list)  # the backups purged now
    recorded: list[dict[str, Any]] = field(default_factory=list)  # the ledger's backups after it (merged)
    purged: bool = True
    full_backups: list[str] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)
    backup_error: str | None = None


class Erasures:
    def __init__(self, settings: Settings, ledger: ErasureLedger, backups: Backups, audit: AuditLog) -> None:
        self.bot_settings = settings
        self.settings = settings.erasure
        self.ledger = ledger
        self.backups = backups
        self.audit = audit
        reapply = ReapplyErasures(ledger, self.settings, audit)
        backups.before_restore.append(reapply.before)
        backups.after_restore.append(reapply)

    def impact(self, stage: Stage, identifier: str) -> ErasureImpact:
        return self.impact_of(stage, Person.of(identifier))

    def impact_of(self, stage: Stage, person: Person) -> ErasureImpact:
        """The impact from digests alone (a request's check before it runs); NotFound when nothing matches."""
        with stage.read() as conn:
            return measure_erasure(conn, self.settings, person)

    def budget_s(self, impact: ErasureImpact) -> float:
        """The transaction's time budget: 3x the estimate, at least 2 minutes, at most DELETE_TIMEOUT_SECONDS."""
        expected = impact.delete.estimated_s + sum(j.scan_estimated_s for j in impact.json)
        return min(max(MIN_BUDGET_S, expected * BUDGET_FACTOR), float(self.bot_settings.delete_timeout_s))

    def dry_run(self, stage: Stage, identifier: str) -> DryRun:
        """The impact, then the whole erasure in a transaction that is rolled back (the real counts)."""
        impact = self.impact(stage, identifier)
        if not impact.deletable:
            raise ErasureBlocked(stage.name, impact)
        result = run_erasure(
            stage,
            self.settings,
            ErasureTarget.from_json(impact.target),
            expected=None,
            budget_s=self.budget_s(impact),
            lock_timeout_ms=self.bot_settings.lock_timeout_ms,
            dry_run=True,
        )
        return DryRun(stage.name, stage.protected, impact, result)

    def all_stages(self, stages: StageRegistry, identifier: str) -> AllStages:
        entries = []
        for name in sorted(stages.names):
            stage = stages.get(name)
            try:
                entries.append(StageDryRun(name, stage.protected, dry_run=self.dry_run(stage, identifier)))
            except NotFound:
                entries.append(StageDryRun(name, stage.protected, nothing=True))
            except UserFacingError as exc:
                entries.append(StageDryRun(name, stage.protected, error=exc.message))
        return AllStages(Person.of(identifier).label, entries)

    def run(
        self,
        stage: Stage,
        target: ErasureTarget,
        *,
        expected: dict[str, int],
        requested_by: str,
        approved_by: tuple[str, ...] = (),
        reason: str | None = None,
        request_id: int | None = None,
        purge_backups: bool = False,
        budget_s: float,
        drift_percent: float = 0.0,
        lock_timeout_ms: int | None = None,
        progress: ProgressCallback | None = None,
        work_name: str | None = None,
    ) -> Receipt:
        """Erase, settle the ledger row, read (or purge) the backups; raises UserFacingError if nothing was erased."""
        entry = self.ledger.start(
            stage=stage.name,
            target=target,
            requested_by=requested_by,
            approved_by=approved_by,
            reason=reason,
            request_id=request_id,
        )
        try:
            result = run_erasure(
                stage,
                self.settings,
                target,
                expected=expected,
                budget_s=budget_s,
                drift_percent=drift_percent,
                lock_timeout_ms=lock_timeout_ms,
                progress=progress,
                work_name=work_name,
            )
        except BaseException:
            self._settle(entry.id, state="failed", counts={}, verified=None)
            raise
        counts = {f"{s['table']} ({s['action']})": s["rows"] for s in result.steps}
        verified = "verified" if result.verified else "; ".join(result.verification)[:1000]
        self._settle(entry.id, state="done", counts=counts, verified=verified)
        receipt = Receipt(entry.id, stage.name, target.person.label, result)
        self._backups(stage, entry.id, entry.started_at, target, receipt, purge=purge_backups)
        self.audit.record(
            AuditEntry(
                actor=requested_by,
                stage=stage.name,
                command="forget-user",
                args=f"#{entry.id} {target.person.label}",
                outcome="done",
                duration_ms=int(result.duration_s * 1000),
                detail={"rows": result.total_rows, "tables": counts, "backups": len(receipt.backups)},
            )
        )
        return receipt

    def purge_later(self, stage: Stage, identifier: str) -> BackupsPurged | None:
        """The person was erased on `stage` without `--purge-backups`: purge the scoped backups taken before that
        erasure that still hold them, from the ledger's digests. None when the ledger has no such erasure."""
        erasure = self.ledger.erased(stage.name, Person.of(identifier))
        if erasure is None:
            return None
        purged = BackupsPurged(erasure.id, stage.name, erasure.label, erasure.request_id)
        purged.recorded = self._backups(
            stage, erasure.id, erasure.started_at, erasure.target, purged, purge=True, previous=erasure.backups
        )
        return purged

    def _settle(self, erasure_id: int, **values: Any) -> None:
        """After the stage's transaction: a bot database that fails now leaves the row `running` (still binding)."""
        try:
            self.ledger.finish(erasure_id, **values)
        except SQLAlchemyError:
            log.warning("could not settle the erasure's ledger row", extra={"erasure": erasure_id})

    def _backups(
        self,
        stage: Stage,
        erasure_id: int,
        started: datetime,
        target: ErasureTarget,
        receipt: Receipt | BackupsPurged,
        *,
        purge: bool,
        previous: list[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """Which backups taken before the erasure hold the person; with `purge`, rewrite or delete them.

        Recorded in the ledger row, merged by backup id into what it listed `previous`ly (a purge later keeps
        the backups it no longer finds, already purged or unreadable now, as they were); returns that list.
        """
        try:
            rows = self.backups.index.complete_before(stage.name, started)
            receipt.full_backups = [r.id for r in rows if r.kind == "full"]
            receipt.snapshots = sorted(
                {str(r.snapshot.get("snapshot_id")) for r in rows if r.snapshot and r.snapshot.get("snapshot_id")}
            )
            scoped = [r for r in rows if r.kind == "scoped"]
            if not scoped:
                return
            store = self.backups.store
            with stage.read() as conn:
                catalog = load_catalog(conn)
                targets = resolve_targets(conn, catalog, self.settings)
            scanner = BackupScanner(store, catalog, targets, target, dict(target.emails))
            for manifest in scoped_manifests(store, scoped):
                if purge:
                    finding = scanner.purge(manifest, erasure_id)
                    if finding.rows:
                        self._record_purge(erasure_id, manifest.backup_id, finding, store)
                else:
                    finding, _ = scanner.scan(manifest)
                if finding.rows:
                    receipt.backups.append(finding)
            receipt.purged = purge
        except (BackupNotConfigured, UserFacingError) as exc:
            receipt.backup_error = exc.message
        merged = {str(b.get("backup_id")): b for b in previous or []}
        merged.update({b.backup_id: b.to_json() for b in receipt.backups})
        recorded = list(merged.values())
        try:
            self.ledger.set_backups(erasure_id, recorded)
        except SQLAlchemyError:
            log.warning("could not record the erasure's backups", extra={"erasure": erasure_id})
        return recorded

    def _record_purge(self, erasure_id: int, backup_id: str, finding: BackupFinding, store: Any) -> None:
        if finding.action == "deleted":
            self.backups.index.record_purge(backup_id, row_counts=None, size_bytes=None)
        else:
            manifest = load_manifest(store, finding.location)
            size = sum(s.stored_bytes for s in manifest.steps) + (store.size(manifest.key) or 0)
            self.backups.index.record_purge(backup_id, row_counts=manifest.row_counts, size_bytes=size)
        event = {
            "event": "purged",
            "backup": backup_id,
            "action": finding.action,
            "rows": finding.rows,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self.ledger.add_event(erasure_id, event)
        self.audit.record(
            AuditEntry(
                actor="system",
                command="forget-user",
                args=f"#{erasure_id} backup {backup_id}",
                outcome=finding.action,
                detail={"rows": finding.rows, "tables": finding.dropped | finding.rewritten},
            ),
            required=True,
        )
