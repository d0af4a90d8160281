"""Scoped backup of the big server's ~1.24M rows against raw COPY of the same rows; peak memory; restore time.

The scopes are the deletion engine's own: `execute_delete` materialises them as temporary
tables of primary keys inside its transaction and hands them to the `before_delete` hook,
which is where the bot's backup runs (bot/backups/delete_hook.py). The comparison runs in
that hook of a dry run, so both sides read the same rows from the same snapshot.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from psycopg import sql
from sqlalchemy import Connection, create_engine, text

from bench.common import BENCH_DIR, BenchContext, bench_stage, peak_rss_mb, ratio_line
from bot.backups.delete_hook import DeleteBackup, backup_steps
from bot.backups.export import ScopedBackup
from bot.backups.index import BackupIndex
from bot.backups.manifest import BackupContext, BackupRecord, BackupStep, load_manifest
from bot.backups.restore import restore
from bot.backups.store import LocalStore
from bot.botdb import create_bot_engine, migrate
from bot.config import parse_database_url
from bot.deletion.execute import execute_delete
from bot.platform.demo_data import BENCH_SPEC

SLUG = BENCH_SPEC.big_slug
BUDGET_S = 3600.0


def _raw_copy(conn: Connection, steps: list[BackupStep]) -> int:
    """What a DBA would run: COPY (SELECT t.* FROM t JOIN scope USING (pk)) TO STDOUT, every table, data read."""
    raw = conn.connection.driver_connection
    total = 0
    for step in steps:
        statement = sql.SQL("COPY (SELECT t.* FROM {}.{} t JOIN {} USING ({})) TO STDOUT").format(
            sql.Identifier(step.schema),
            sql.Identifier(step.table),
            sql.Identifier(step.scope_table),
            sql.SQL(", ").join(sql.Identifier(c) for c in step.primary_key),
        )
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            for data in copy:
                total += len(data)
    return total


def run(ctx: BenchContext) -> None:
    url = ctx.clone("backup", with_fk_indexes=True)
    bot_db = "bench_backup_bot"
    bot_url = ctx.cluster.create_database(bot_db, drop=True)
    bot_engine = create_bot_engine(parse_database_url("BOT_DATABASE_URL", bot_url))
    migrate(bot_engine)
    index = BackupIndex(bot_engine)
    root = BENCH_DIR / "backups"
    shutil.rmtree(root, ignore_errors=True)
    store = LocalStore(root)
    stage = bench_stage(ctx, url)

    def context(request_id: str) -> BackupContext:
        return BackupContext(stage="bench", request_id=request_id, requested_by="UBENCH1", slug=SLUG)

    # Backup vs raw COPY, interleaved, inside a dry-run delete's transaction holding the engine's scopes.
    measured: dict[str, Any] = {"raw": [], "ours": []}

    def compare(conn: Connection, plan: Any, scopes: Any) -> None:
        steps = backup_steps(plan, scopes)
        measured["rows"] = sum(s.expected_rows or 0 for s in steps)
        measured["tables"] = len(steps)
        for attempt in range(3):
            started = time.perf_counter()
            measured["raw_bytes"] = _raw_copy(conn, steps)
            measured["raw"].append(time.perf_counter() - started)
            started = time.perf_counter()
            measured["record"] = ScopedBackup(store, index, context(f"bench_{attempt}")).write(conn, steps)
            measured["ours"].append(time.perf_counter() - started)

    execute_delete(stage, SLUG, expected=None, budget_s=BUDGET_S, dry_run=True, before_delete=compare)
    record: BackupRecord = measured["record"]
    print(f"scopes (the deletion engine's): {measured['rows']:,} rows in {measured['tables']} tables")
    print(
        f"data: {measured['raw_bytes'] / 2**20:.0f} MB as COPY text, stored as {record.stored_bytes / 2**20:.0f} MB"
        f" gzip ({len(record.row_counts)} files + manifest)"
    )
    print(
        ratio_line("scoped backup (COPY -> sha256 -> gzip -> store)", min(measured["ours"]), min(measured["raw"]), 2.0)
    )

    # Peak memory of a whole delete with its backup (a dry run) in a fresh child process.
    def backup_in_child() -> int:
        child_stage = bench_stage(ctx, url)
        child_bot = create_bot_engine(parse_database_url("BOT_DATABASE_URL", bot_url))
        hook = DeleteBackup(ScopedBackup(store, BackupIndex(child_bot), context("bench_rss")))
        execute_delete(child_stage, SLUG, expected=None, budget_s=BUDGET_S, dry_run=True, before_delete=hook)
        assert hook.record is not None
        return hook.record.stored_bytes

    _nothing, baseline = peak_rss_mb(lambda: 0)
    _stored, peak = peak_rss_mb(backup_in_child)
    verdict = "met" if peak <= 200 else "MISSED"
    print(
        f"peak memory of a delete with its scoped backup (dry run): {peak:.0f} MB"
        f" (process baseline {baseline:.0f} MB; target <= 200 MB: {verdict})"
    )

    # Delete for real with the backup in its transaction, then restore and compare every table's checksum.
    engine = create_engine(parse_database_url("bench", url))
    checksum = (
        "SELECT count(*), md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))) FROM {} t"  # per-row hashes: cheap
    )
    tables = [step.qualified for step in record.manifest.steps]
    with engine.connect() as conn:
        sums_before = {t: tuple(conn.execute(text(checksum.format(t))).one()) for t in tables}
    hook = DeleteBackup(ScopedBackup(store, index, context("bench_restore")))
    started = time.perf_counter()
    result = execute_delete(stage, SLUG, expected=None, budget_s=BUDGET_S, before_delete=hook)
    print(
        f"delete with its backup: {result.total_rows:,} rows in {time.perf_counter() - started:.1f} s"
        f" (backup and delete in one transaction)"
    )
    assert hook.record is not None
    manifest = load_manifest(store, hook.record.manifest_key)
    with engine.connect() as conn:
        conn.execute(text("SET LOCAL statement_timeout = 0"))
        started = time.perf_counter()
        report = restore(conn, store, manifest, stage="bench")
        conn.commit()
        restore_s = time.perf_counter() - started
    with engine.connect() as conn:
        sums_after = {t: tuple(conn.execute(text(checksum.format(t))).one()) for t in tables}
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items())
    print(f"restore phases: {phases}")
    differ = [t for t in tables if sums_before[t] != sums_after[t]]
    same = "every table's checksum back" if not differ else f"CHECKSUMS DIFFER: {', '.join(differ)}"
    print(
        f"restore: {report.total_rows:,} rows in {restore_s:.1f} s ({report.total_rows / restore_s:,.0f} rows/s,"
        f" staged, conflict-checked and inserted parents first in one transaction); {same}"
    )
    engine.dispose()
    bot_engine.dispose()
    stage.dispose()
    ctx.cluster.drop_database(bot_db)
    shutil.rmtree(root, ignore_errors=True)
