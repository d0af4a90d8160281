"""One helper for the engine's schema cases: build a database from SQL, delete a server through the bot's
real code path (impact report, a dry-run delete that must change nothing, the delete with its scoped backup
in one transaction, dry-run restore, restore) and compare, over every table of every user schema, with
PostgreSQL's own correct delete on a clone.

A case is a few lines: its DDL and data, and, where PostgreSQL's plain `DELETE` of the server row is not
the right answer (NO ACTION edges, which the engine deletes explicitly), the reference delete by hand.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine

from bot.audit import AuditLog
from bot.backups.delete_hook import DeleteBackup
from bot.backups.manifest import BackupContext
from bot.backups.restore import RestoreReport
from bot.backups.service import Backups
from bot.botdb import create_bot_engine, migrate
from bot.config import Settings, load_settings, parse_database_url
from bot.deletion.execute import DeleteResult, execute_delete
from bot.deletion.impact import ImpactReport, plan_and_measure, report_order
from bot.deletion.plan import DeletePlan
from bot.deletion.scope import Rules
from bot.errors import UserFacingError
from bot.localpg import LocalPostgres
from bot.stages import Stage, StageRegistry
from tests.conftest import unique_name

# Row images as PostgreSQL prints them, with settings pinned so the text is exact (every float digit).
PINNED = "SET extra_float_digits = 3; SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'; SET TimeZone = 'UTC'"
USER_TABLES = r"""
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
ORDER BY 1, 2
"""
_names = itertools.count(1)


def checksums(dsn: str) -> dict[str, tuple[int, str]]:
    """Every table of every user schema (partitions and inheritance children as their own, ONLY):
    its row count and an md5 over its rows' text, sorted."""
    out: dict[str, tuple[int, str]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(PINNED)
        for schema, name in conn.execute(USER_TABLES).fetchall():
            ident = psycopg.sql.Identifier(schema, name)
            query = psycopg.sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM ONLY {} t"
            ).format(ident)
            rows, digest = conn.execute(query).fetchone()  # type: ignore[misc]
            out[f"{schema}.{name}"] = (int(rows), str(digest))
    return out


def differences(left: dict[str, tuple[int, str]], right: dict[str, tuple[int, str]]) -> list[str]:
    return [
        f"{t}: {left.get(t)} vs {right.get(t)}" for t in sorted(set(left) | set(right)) if left.get(t) != right.get(t)
    ]


@dataclass
class Outcome:
    plan: DeletePlan
    report: ImpactReport
    result: DeleteResult
    restored: RestoreReport
    before: dict[str, tuple[int, str]]
    deleted: dict[str, tuple[int, str]]  # the database after the bot's delete (= after PostgreSQL's own)
    db: CaseDb


@dataclass
class CaseDb:
    name: str
    dsn: str
    url: str

    def execute(self, sql: str) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def scalar(self, sql: str) -> Any:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(sql).fetchone()  # type: ignore[arg-type]
            return row[0] if row else None


@dataclass
class EngineHarness:
    pg: LocalPostgres
    bot_db_url: str
    bot_engine: Engine
    backup_dir: Path
    created: list[str] = field(default_factory=list)
    stages: list[Stage] = field(default_factory=list)

    # -- databases ------------------------------------------------------------------------

    def database(self, sql: str, *, template: str | None = None) -> CaseDb:
        name = f"case_{os.getpid()}_{next(_names)}"
        self.pg.create_database(name, template=template)
        self.created.append(name)
        db = CaseDb(name, self.pg.dsn(name), self.pg.url(name))
        if sql:
            db.execute(sql)
        return db

    def clone(self, db: CaseDb) -> CaseDb:
        return self.database("", template=db.name)

    def settings(self, db: CaseDb, role: str | None = None, **env: str) -> Settings:
        url = db.url if role is None else db.url.replace("postgres@", f"{role}@", 1)
        return load_settings(
            {
                "BOT_DATABASE_URL": self.bot_db_url,
                "DATABASE_URL_DEV": url,
                "BACKUP_DIR": str(self.backup_dir),
                "STAGE_LOCK_TIMEOUT_MS": "500",
                **env,
            },
            require_slack=False,
        )

    def stage(self, db: CaseDb, role: str | None = None) -> Stage:
        stage = StageRegistry(self.settings(db, role)).get("dev")
        self.stages.append(stage)
        return stage

    def close(self) -> None:
        for stage in self.stages:
            stage.dispose()
        for name in self.created:
            self.pg.drop_database(name)

    # -- the bot's real code path -----------------------------------------------------------

    def impact(self, stage: Stage, slug: str, rules: Rules | None = None) -> tuple[DeletePlan, ImpactReport]:
        with stage.read() as conn:
            return plan_and_measure(conn, slug, rules=rules)

    def delete(
        self, db: CaseDb, slug: str, *, rules: Rules | None = None, role: str | None = None, dry_run: bool = False
    ) -> tuple[DeletePlan, ImpactReport, DeleteResult, Backups, str]:
        """Impact, then the delete bound to the server's key, with its scoped backup in its transaction."""
        stage = self.stage(db, role)
        plan, report = self.impact(stage, slug, rules)
        assert report.deletable, report.blockers
        backups = Backups(self.settings(db, role), self.bot_engine, AuditLog(self.bot_engine, ""))
        request_id = f"req_{db.name}"
        hook = DeleteBackup(
            backups.scoped(
                BackupContext(stage="dev", request_id=request_id, requested_by="UTEST", slug=slug, server_id=None)
            )
        )
        result = execute_delete(
            stage,
            slug,
            server_key=report.server_key,
            expected=report.snapshot,
            expected_hash=report.snapshot_hash,
            budget_s=120,
            dry_run=dry_run,
            before_delete=None if dry_run else hook,
            rules=rules,
        )
        if not dry_run:
            hook.settle(committed=True)
        return plan, report, result, backups, request_id

    def check(
        self,
        sql: str,
        *,
        slug: str = "s1",
        reference: str | None = None,
        rules: Rules | None = None,
        role: str | None = None,
        exact_counts: bool = True,
        lost: tuple[str, ...] = (),
    ) -> Outcome:
        """The whole comparison; returns what happened for the case's own extra assertions.

        `lost`: tables whose rows a trigger changed during the delete, which no backup of the delete's
        own rows can put back (they must differ after the restore; every other table must not).
        """
        db = self.database(sql)
        ref = self.clone(db)
        before = checksums(db.dsn)
        ref.execute(reference or f"DELETE FROM mcp_servers WHERE slug = '{slug}'")
        expected = checksums(ref.dsn)
        assert expected != before, "the reference delete changed nothing: the case tests nothing"

        _, dry_report, dry, _, _ = self.delete(db, slug, rules=rules, role=role, dry_run=True)
        assert dry.dry_run and checksums(db.dsn) == before, "a dry-run delete wrote"
        assert {k: dry.counts[k] for k in dry_report.snapshot if k in dry.counts} == {
            k: v for k, v in dry_report.snapshot.items() if k in dry.counts
        }, "the dry run counted other rows than the impact"
        plan, report, result, backups, request_id = self.delete(db, slug, rules=rules, role=role)
        assert result.verified, result.verification
        assert [t.key for t in report.tables] == [s.snapshot_key for s in report_order(plan)], "a table is missing"
        deleted = checksums(db.dsn)
        assert differences(deleted, expected) == [], "the bot's delete differs from PostgreSQL's own"
        if exact_counts:
            removed = {t: before[t][0] - expected[t][0] for t in before}
            for step in plan.delete_steps:
                rows = sum(removed.get(r.qualified, 0) for r in plan.catalog.relations(step.table))
                assert report.snapshot[step.snapshot_key] == rows, (step.table, report.snapshot)
            assert report.total_rows == sum(removed.values()), (report.snapshot, removed)

        stage = self.stage(db, role)
        checked = backups.restore(stage, request_id, actor="UTEST", dry_run=True)
        assert not checked.restored and checksums(db.dsn) == deleted, "a dry-run restore wrote"
        restored = backups.restore(stage, request_id, actor="UTEST", dry_run=False)
        assert restored.restored
        after = checksums(db.dsn)
        assert differences(after, before) == [f"{t}: {after[t]} vs {before[t]}" for t in sorted(lost)], (
            "delete + restore is not the database before"
        )
        return Outcome(plan, report, result, restored, before, deleted, db)

    def refuse(
        self,
        sql: str,
        *,
        slug: str = "s1",
        rules: Rules | None = None,
        role: str | None = None,
        foreseen: bool = True,
    ) -> tuple[str, ImpactReport | None]:
        """The right answer is a refusal: returns its words (impact blockers or the error), nothing changed.

        The impact either raises (nothing could be counted) or reports blockers (unless the refusal is not
        `foreseen`: a trigger's own decision); the delete is then attempted anyway and must raise, leaving
        every table as it was.
        """
        db = self.database(sql)
        before = checksums(db.dsn)
        stage = self.stage(db, role)
        report: ImpactReport | None = None
        words: list[str] = []
        try:
            _, report = self.impact(stage, slug, rules)
            words += [b.reason for b in report.blockers]
            assert bool(report.blockers) == foreseen, report.blockers
        except UserFacingError as exc:
            words.append(exc.message)
        try:
            execute_delete(stage, slug, expected=None, budget_s=60, rules=rules)
        except UserFacingError as exc:
            words.append(exc.message)
        else:
            raise AssertionError("the delete ran")
        assert differences(checksums(db.dsn), before) == [], "a refused delete changed something"
        return "\n".join(words), report


def harness_for(pg: LocalPostgres, bot_db_url: str, bot_engine: Engine, backup_dir: Path) -> Iterator[EngineHarness]:
    harness = EngineHarness(pg, bot_db_url, bot_engine, backup_dir)
    try:
        yield harness
    finally:
        harness.close()


# -- what every case file uses: the root table, roles, its harness ------------------------------------------

ROOT = """
CREATE TABLE mcp_servers (id text PRIMARY KEY, slug text NOT NULL UNIQUE, name text);
INSERT INTO mcp_servers VALUES ('srv1', 's1', 'one'), ('srv2', 's2', 'two');
"""


def module_harness(pg: LocalPostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineHarness]:
    """A case file's harness (its module-scoped fixture): its own bot database and backup directory."""
    name = unique_name("enginebot")
    url = pg.create_database(name)
    engine = create_bot_engine(parse_database_url("BOT_DATABASE_URL", url))
    migrate(engine)
    backup_dir: Path = tmp_path_factory.mktemp("engine-backups")
    yield from harness_for(pg, url, engine, backup_dir)
    engine.dispose()
    pg.drop_database(name)


def role(name: str, *extra: str) -> str:
    options = " ".join(extra)
    return f"""DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN CREATE ROLE {name} LOGIN {options}; END IF;
    END $$;"""
