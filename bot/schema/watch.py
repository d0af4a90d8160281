"""The scheduled migration check: daily and once after the bot starts, through the health alert lifecycle.

Findings, per stage (check `migrations`, one alert per object):
- `skipped:<migration>` (critical): Drizzle's migrate will never run it;
- `edited:<migration>`, `unknown:<hash>`, `repeated:<migration>` (warning): the applied history is not the folder's
  (a file changed after it was applied; a row matching no file; a migration recorded twice by concurrent runs);
- `behind:<reference>` (warning), protected stages only: migrations the reference stage
  (MIGRATION_REFERENCE_STAGE) has applied and this stage has not, for longer than MIGRATION_LAG_ALERT_HOURS.
How long a stage has lacked a migration is the reference's `applied_at` where drizzle-orm 1.x records it, else
when this check first saw it missing (`migration_lag`, one row per stage and missing migration).
A stage that cannot be read (unreachable, no table, no permission) is left as it is: its alerts neither fire
nor resolve; nor does a protected stage's `behind` alert (or its lag clock) while the reference can't be read.
Everything else resolves at the first run without its finding.
A MIGRATIONS_DIR that cannot be read (a file the journal lists is missing, a journal that is not JSON) is one
alert of its own (`migrations_folder`, on the reference stage, else the first stage by name) instead of a job
failing day after day in the logs; the stages' migration alerts are left as they are meanwhile, and it resolves
at the first run that reads the folder.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime, timedelta

from sqlalchemy import Column, Connection, DateTime, PrimaryKeyConstraint, Table, Text, delete, func, select, tuple_
from sqlalchemy.dialects.postgresql import insert

from bot.botdb import metadata
from bot.config import Settings
from bot.health.alerts import AlertBook
from bot.health.checks import Finding
from bot.scheduler import JobScheduler
from bot.schema.drizzle import MigrationsFolderError
from bot.schema.migrations import EDITED, SKIPPED, MigrationsReport, StageMigrations, migrations_report
from bot.stages import StageRegistry

log = logging.getLogger(__name__)

CHECK = "migrations"
FOLDER_CHECK = "migrations_folder"
DAILY_JOB = "schema:migrations"
DAILY_S = 86_400
# Once per process, after it starts: a name of its own and a slot that never ends.
STARTUP_S = 10 * 365 * 86_400

migration_lag = Table(
    "migration_lag",
    metadata,
    Column("stage", Text, nullable=False),
    Column("migration", Text, nullable=False),  # a folder name, or a hash without MIGRATIONS_DIR
    Column("first_seen_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("stage", "migration"),
)


def _hours(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.0f} hours"


class MigrationWatch:
    def __init__(self, settings: Settings, stages: StageRegistry, book: AlertBook) -> None:
        self.settings = settings
        self.stages = stages
        self.book = book

    def register(self, scheduler: JobScheduler) -> None:
        scheduler.add(DAILY_JOB, self.run, DAILY_S)
        scheduler.add(f"{DAILY_JOB}:start:{socket.gethostname()}:{os.getpid()}", self.run, STARTUP_S)

    def run(self) -> MigrationsReport | None:
        try:
            report = migrations_report(self.stages.all.values(), self.settings.schema)
        except MigrationsFolderError as exc:
            self._folder_unreadable(exc.message)
            return None
        for name in self.stages.all:  # read again: its alert resolves wherever it is open
            self.book.apply(name, {FOLDER_CHECK}, [])
        for stage in report.stages:
            if not stage.readable:
                log.info("migration check: stage not read", extra={"stage": stage.stage, "why": stage.table})
                continue
            reference = report.stage(report.reference) if report.reference else None
            if stage.protected and reference is not None and reference is not stage and not reference.readable:
                # No verdict on the lag while the reference can't be read: its alert and clock stay as they are.
                lag, holds = [], [(CHECK, f"behind:{reference.stage}")]
            else:
                lag, holds = self._lag(report, stage), []
            findings = self._findings(report, stage) + lag
            self.book.apply(stage.stage, {CHECK}, findings, clear_after={CHECK: 1}, holds=holds)
        self.book.sync()
        return report

    def _folder_unreadable(self, why: str) -> None:
        names = sorted(self.stages.all)
        if not names:
            return
        reference = self.settings.schema.reference_stage
        stage = reference if reference in names else names[0]
        log.warning("migration check: MIGRATIONS_DIR not read", extra={"why": why})
        finding = Finding(
            FOLDER_CHECK,
            "MIGRATIONS_DIR",
            "warning",
            "the migration check cannot read MIGRATIONS_DIR",
            f"{why}. Until it can, no stage is checked for skipped, edited or unknown migrations, nor for "
            "lagging behind the reference stage; their open alerts stay as they are.",
            "Fix the folder the image or mount provides: drizzle-kit's out folder as deployed (meta/_journal.json "
            "and every .sql file it lists, or 1.x's <timestamp>_<name>/migration.sql folders). `mcp-ops check-config` "
            "says what it reads.",
        )
        self.book.apply(stage, {FOLDER_CHECK}, [finding])
        self.book.sync()

    def _findings(self, report: MigrationsReport, stage: StageMigrations) -> list[Finding]:
        found: list[Finding] = []
        for entry in stage.entries:
            if entry.state == SKIPPED:
                found.append(
                    Finding(
                        CHECK,
                        f"skipped:{entry.name}",
                        "critical",
                        f"migration {entry.name} was skipped on {stage.stage}",
                        f"{entry.name} is in the migrations folder but not applied on {stage.stage}, and it is older "
                        f"than the newest applied migration ({stage.newest_name or 'unknown'}): Drizzle's migrate runs "
                        "only migrations newer than that one, so it will never run this one.",
                        "Apply its SQL by hand in one transaction and record it (hash and created_at) in the "
                        "migrations table, or regenerate it as a new migration. `/mcp migrations --stage "
                        f"{stage.stage}` shows the stage's state.",
                    )
                )
            elif entry.state == EDITED:
                found.append(
                    Finding(
                        CHECK,
                        f"edited:{entry.name}",
                        "warning",
                        f"applied migration {entry.name} was edited",
                        f"The hash {stage.stage} recorded for {entry.name} is not the file's: the file changed "
                        "after it was applied there, and Drizzle never compares hashes, so the change never ran.",
                        "Put the applied text back in the file and make the change a new migration.",
                        remind=False,
                    )
                )
        for entry in stage.entries:
            if entry.repeats:
                found.append(
                    Finding(
                        CHECK,
                        f"repeated:{entry.name}",
                        "warning",
                        f"migration {entry.name} was applied {1 + len(entry.repeats)} times on {stage.stage}",
                        f"{stage.stage}'s migrations table records {entry.name} {1 + len(entry.repeats)} times: two "
                        "migrate runs started together (Drizzle takes no lock) and both ran it.",
                        "Check that its statements did what was meant (a second run of a statement that is not "
                        "idempotent changed the schema or data twice), then delete the extra rows; run migrate from "
                        "one place at a time.",
                        remind=False,
                    )
                )
        if stage.reruns is not None:
            found.append(
                Finding(
                    CHECK,
                    f"reruns:{stage.reruns.id}",
                    "critical",
                    f"the next migrate on {stage.stage} would run every migration again",
                    f"Row {stage.reruns.id} of {stage.stage}'s migrations table has no created_at. Drizzle's migrate "
                    "reads the row with the greatest created_at, and NULL sorts first: it reads 0 and runs every "
                    "migration of the journal again.",
                    "Set that row's created_at to its journal entry's `when` (or delete the row if it records "
                    "nothing). `/mcp migrations --stage " + stage.stage + "` shows the stage's state.",
                )
            )
        for row in stage.unknown:
            found.append(
                Finding(
                    CHECK,
                    f"unknown:{row.hash[:16]}",
                    "warning",
                    f"unknown migration recorded on {stage.stage}",
                    f"Row {row.id} of the migrations table (hash {row.hash[:16]}…"
                    + (f", name {row.name}" if row.name else "")
                    + ") matches no migration in MIGRATIONS_DIR: applied from another branch or a deleted file.",
                    "Find where it came from; if it belongs, add it to the migrations folder.",
                    remind=False,
                )
            )
        return found

    def _lag(self, report: MigrationsReport, stage: StageMigrations) -> list[Finding]:
        """Record what the stage lacks; a finding when it has lacked it longer than MIGRATION_LAG_ALERT_HOURS."""
        reference = report.stage(report.reference) if report.reference else None
        missing = report.behind(stage, reference) if reference is not None and stage.protected else []
        with self.book.engine.begin() as conn:
            return self._record_lag(conn, report, stage, reference, missing)

    def _record_lag(
        self,
        conn: Connection,
        report: MigrationsReport,
        stage: StageMigrations,
        reference: StageMigrations | None,
        missing: list[str],
    ) -> list[Finding]:
        conn.execute(
            delete(migration_lag).where(migration_lag.c.stage == stage.stage, migration_lag.c.migration.not_in(missing))
        )
        if not missing or reference is None:
            return []
        conn.execute(
            insert(migration_lag)
            .values([{"stage": stage.stage, "migration": m} for m in missing])
            .on_conflict_do_nothing()
        )
        now: datetime = conn.execute(select(func.now())).scalar_one()
        seen = conn.execute(
            select(func.min(migration_lag.c.first_seen_at)).where(
                tuple_(migration_lag.c.stage, migration_lag.c.migration).in_([(stage.stage, m) for m in missing])
            )
        ).scalar_one()
        applied = [r.applied_at for r in reference.rows if r.applied_at is not None and _key(report, r) in missing]
        since = min([seen, *applied])
        if now - since < timedelta(hours=self.settings.schema.lag_alert_hours):
            return []
        shown = ", ".join(m if report.local else m[:12] for m in missing[:5]) + (" …" if len(missing) > 5 else "")
        return [
            Finding(
                CHECK,
                f"behind:{reference.stage}",
                "warning",
                f"{stage.stage} is {len(missing)} migration{'s' if len(missing) != 1 else ''} behind {reference.stage}",
                f"For {_hours(now - since)} (alert after {self.settings.schema.lag_alert_hours} hours, "
                f"MIGRATION_LAG_ALERT_HOURS), {stage.stage} has lacked what {reference.stage} applied: {shown}.",
                f"Run the platform's migrate for {stage.stage}, or find why its deploy stopped. "
                "`/mcp migrations` shows every stage.",
            )
        ]


def _key(report: MigrationsReport, row: object) -> str:
    """A reference row's key as `behind` names it: the folder name it matched, else its hash."""
    if report.local:
        reference = report.stage(report.reference or "")
        entry = next((e for e in (reference.entries if reference else []) if e.row is row), None)
        return entry.name if entry else ""
    return str(getattr(row, "hash", ""))
