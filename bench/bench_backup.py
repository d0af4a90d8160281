"""Scoped backup of the big server's ~1.24M rows against raw COPY of the same rows; peak memory; restore time.

Until the deletion engine lands, the scopes are built by hand (tests/backups/scopes.py), the
same temp tables of primary keys the engine will materialise inside its transaction.
"""

from __future__ import annotations

import shutil
import time

from psycopg import sql
from sqlalchemy import create_engine, text

from bench.common import BENCH_DIR, BenchContext, peak_rss_mb, ratio_line
from bot.backups.index import BackupIndex
from bot.backups.scoped import BackupContext, ScopedBackup, load_manifest, restore
from bot.backups.store import LocalStore
from bot.botdb import create_bot_engine, migrate
from bot.config import parse_database_url
from tests.backups.scopes import build_scopes, delete_scopes

SERVER = "srv_big"


def _raw_copy(conn, steps) -> int:
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
    engine = create_engine(parse_database_url("bench", url))

    def context(request_id: str) -> BackupContext:
        return BackupContext(stage="bench", request_id=request_id, requested_by="UBENCH1", server_id=SERVER)

    # Backup vs raw COPY, both inside one transaction holding the scopes (as the delete would), interleaved.
    with engine.connect() as conn:
        conn.execute(text("SET LOCAL statement_timeout = 0"))
        started = time.perf_counter()
        steps = build_scopes(conn, SERVER)
        rows = sum(s.expected_rows or 0 for s in steps)
        print(f"scopes: {rows:,} rows in {len(steps)} tables, built in {time.perf_counter() - started:.1f} s")
        raw_times, ours_times = [], []
        for attempt in range(3):
            started = time.perf_counter()
            raw_bytes = _raw_copy(conn, steps)
            raw_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            record = ScopedBackup(store, index, context(f"bench_{attempt}")).write(conn, steps)
            ours_times.append(time.perf_counter() - started)
        conn.rollback()
    print(
        f"data: {raw_bytes / 2**20:.0f} MB as COPY text, stored as {record.stored_bytes / 2**20:.0f} MB gzip"
        f" ({len(record.row_counts)} files + manifest)"
    )
    print(ratio_line("scoped backup (COPY -> sha256 -> gzip -> store)", min(ours_times), min(raw_times), 2.0))

    # Peak memory of a whole backup in a fresh child process (it connects, builds scopes, backs up).
    def backup_in_child() -> int:
        child_engine = create_engine(parse_database_url("bench", url))
        child_bot = create_bot_engine(parse_database_url("BOT_DATABASE_URL", bot_url))
        with child_engine.connect() as conn:
            conn.execute(text("SET LOCAL statement_timeout = 0"))
            steps = build_scopes(conn, SERVER)
            out = ScopedBackup(store, BackupIndex(child_bot), context("bench_rss")).write(conn, steps)
            conn.rollback()
        return out.stored_bytes

    _nothing, baseline = peak_rss_mb(lambda: 0)
    _stored, peak = peak_rss_mb(backup_in_child)
    verdict = "met" if peak <= 200 else "MISSED"
    print(
        f"peak memory of a scoped backup: {peak:.0f} MB"
        f" (process baseline {baseline:.0f} MB; target <= 200 MB: {verdict})"
    )

    # Delete for real (backup in the same transaction), then restore and check the counts came back.
    with engine.connect() as conn:
        tables = ("mcp_tool_calls", "mcp_server_session", "mcp_server_user", "walkthrough_step_completions")
        counts_before = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in tables}
    with engine.connect() as conn:
        conn.execute(text("SET LOCAL statement_timeout = 0"))
        steps = build_scopes(conn, SERVER)
        started = time.perf_counter()
        record = ScopedBackup(store, index, context("bench_restore")).write(conn, steps)
        backup_s = time.perf_counter() - started
        started = time.perf_counter()
        deleted = delete_scopes(conn, steps)
        conn.commit()
        delete_s = time.perf_counter() - started
    print(f"delete with backup: backup {backup_s:.1f} s + delete {delete_s:.1f} s ({sum(deleted.values()):,} rows)")
    manifest = load_manifest(store, record.manifest_key)
    with engine.connect() as conn:
        conn.execute(text("SET LOCAL statement_timeout = 0"))
        started = time.perf_counter()
        report = restore(conn, store, manifest, stage="bench")
        conn.commit()
        restore_s = time.perf_counter() - started
    with engine.connect() as conn:
        counts_after = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in counts_before}
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items())
    print(f"restore phases: {phases}")
    same = "all counts back" if counts_after == counts_before else f"COUNTS DIFFER: {counts_before} vs {counts_after}"
    print(
        f"restore: {report.total_rows:,} rows in {restore_s:.1f} s ({report.total_rows / restore_s:,.0f} rows/s,"
        f" staged, conflict-checked and inserted parents first in one transaction); {same}"
    )
    engine.dispose()
    bot_engine.dispose()
    ctx.cluster.drop_database(bot_db)
    shutil.rmtree(root, ignore_errors=True)
