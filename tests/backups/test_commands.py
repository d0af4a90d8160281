"""/mcp backup, /mcp backups and /mcp restore end to end: signed slash commands, real databases, moto S3."""

from __future__ import annotations

import os
import subprocess
import time

import boto3
import pytest
from sqlalchemy import create_engine, text

from bot.backups.full import pg_dump_command, pg_dump_environment
from bot.backups.manifest import BackupContext
from bot.config import parse_database_url
from bot.localpg import find_bindir
from tests.backups.deleting import delete_with_backup
from tests.conftest import APPROVER, CHANNEL, OPERATOR, TEST_SPEC, VIEWER, dead_database_url, message_text, unique_name
from tests.deletion_support import table_checksums


def wait_audit(bot, command: str, outcome: str, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = [r for r in bot.audit_rows() if r.command == command and r.outcome == outcome]
        if rows:
            return rows
        time.sleep(0.05)
    raise AssertionError(f"no audit row {command}/{outcome}: {[(r.command, r.outcome) for r in bot.audit_rows()]}")


def checksums(url: str) -> dict:
    engine = create_engine(parse_database_url("x", url))
    try:
        with engine.connect() as conn:
            return table_checksums(conn)
    finally:
        engine.dispose()


def test_full_backup_streams_pg_dump_to_s3_with_progress(make_bot, stage_db, make_bucket, pg):
    bucket = make_bucket("full-backups")
    bot = make_bot({"dev": stage_db.url}, BACKUP_BUCKET=bucket, BACKUP_PREFIX="mcp-ops")
    reply = bot.command("backup --stage dev")
    assert reply.http.status == 200
    text_ = reply.text(timeout=60)
    assert "Full backup" in text_ and f"s3://{bucket}/mcp-ops/dev/full/" in text_

    # One status message in the channel, edited as bytes flowed and once more (via the outbox) when done.
    status = [c for c in bot.slack.calls_to("chat.postMessage") if c.payload.get("channel") == CHANNEL]
    assert len(status) == 1 and "running" in message_text(status[0].payload)
    ts = bot.slack.messages and next(key[1] for key in bot.slack.messages if key[0] == CHANNEL)
    bot.slack.wait_for_call("chat.update", lambda c: c.payload["ts"] == ts and "done" in message_text(c.payload), 20)
    updates = [u for u in bot.slack.calls_to("chat.update") if u.payload["ts"] == ts]
    assert any("so far" in message_text(u.payload) for u in updates)
    assert "done" in message_text(updates[-1].payload)

    [row] = bot.runtime.backups.latest(stage="dev", slug=None, limit=5)
    assert row.kind == "full" and row.state == "complete" and row.size_bytes > 0
    assert row.message_channel == CHANNEL and row.message_ts
    obj = boto3.client("s3").get_object(Bucket=bucket, Key="mcp-ops/" + row.location)
    dump = obj["Body"].read()
    assert len(dump) == row.size_bytes and dump.startswith(b"PGDMP")

    # The dump is a real custom-format dump: restore it into an empty database and compare every table.
    target = unique_name("restored")
    pg.create_database(target)
    try:
        restored = subprocess.run(
            [str(find_bindir() / "pg_restore"), "--no-owner", "--exit-on-error", "-d", pg.dsn(target)],
            input=dump,
            capture_output=True,
            check=False,
        )
        assert restored.returncode == 0, restored.stderr.decode()[-500:]
        assert checksums(pg.url(target)) == checksums(stage_db.url)
    finally:
        pg.drop_database(target)

    started = wait_audit(bot, "backup", "started")
    done = wait_audit(bot, "backup", "ok")
    assert started[0].id < done[0].id


def test_pg_dump_gets_credentials_only_through_the_environment():
    command = pg_dump_command("/usr/bin/pg_dump", lock_timeout_ms=3000)
    env = pg_dump_environment(
        {"PGHOST": "db", "PGPORT": "5432", "PGUSER": "app", "PGPASSWORD": "s3cret!", "PGDATABASE": "platform"},
        "dev",
        5,
    )
    assert not any("s3cret" in arg or arg == "app" or "platform" in arg for arg in command)
    assert env["PGPASSWORD"] == "s3cret!" and env["PGAPPNAME"] == "mcp-ops/backup/dev"
    assert "AWS_SECRET_ACCESS_KEY" not in env and "SLACK_BOT_TOKEN" not in env  # nothing else leaks in


def test_backup_is_for_operators_and_needs_a_destination(make_bot, stage_db, tmp_path):
    bot = make_bot({"dev": stage_db.url}, BACKUP_DIR=str(tmp_path / "b"))
    assert "only operators" in bot.command("backup --stage dev", user=VIEWER).text()
    plain = make_bot({"dev": stage_db.url}, BACKUP_DIR="")
    assert "no backup destination is configured" in plain.command("backup --stage dev").text()
    assert not [r for r in plain.audit_rows() if r.outcome == "started"]


def test_a_failed_dump_says_why_and_leaves_no_file(make_bot, tmp_path):
    bot = make_bot({"dev": dead_database_url()}, BACKUP_DIR=str(tmp_path / "b"))
    answer = bot.command("backup --stage dev").text(timeout=30)
    assert "failed" in answer and "unreachable (connection refused)" in answer
    assert "hunter2" not in answer
    [row] = bot.runtime.backups.latest(stage="dev", slug=None, limit=5)
    assert row.state == "failed"
    assert not [p for p in (tmp_path / "b").rglob("*") if p.is_file()]


def scoped_delete(bot, request_id: str, stage_name: str = "dev") -> None:
    stage = bot.runtime.stages.get(stage_name)
    backup = bot.runtime.backups.scoped(
        BackupContext(
            stage=stage_name,
            request_id=request_id,
            requested_by=OPERATOR,
            server_id="srv_big",
            slug=TEST_SPEC.big_slug,
            approved_by=(APPROVER,),
        )
    )
    delete_with_backup(stage, backup)


@pytest.fixture
def local_bot(make_bot, stage_db, tmp_path):
    return make_bot({"dev": stage_db.url, "production": stage_db.url}, BACKUP_DIR=str(tmp_path / "backups"))


def test_backups_lists_scoped_and_full_with_size_counts_and_age(local_bot):
    bot = local_bot
    scoped_delete(bot, "req_list")
    bot.command("backup --stage dev").text(timeout=60)
    listing = bot.command("backups --stage dev").text()
    assert "full dump:" in listing and f"scoped `{TEST_SPEC.big_slug}` request `req_list`" in listing
    assert "rows in 9 tables" in listing and " KB" in listing and "ago" in listing
    only_slug = bot.command(f"backups --slug {TEST_SPEC.big_slug}").text()
    assert "req_list" in only_slug and "full dump:" not in only_slug
    assert "for operators and approvers" in bot.command("backups", user=VIEWER).text()


def test_restore_on_an_unprotected_stage_dry_run_then_for_real(local_bot, stage_db):
    bot = local_bot
    before = checksums(stage_db.url)
    scoped_delete(bot, "req_77")
    deleted = checksums(stage_db.url)
    assert deleted != before

    dry = bot.command("restore req_77 --stage dev --dry-run").text(timeout=60)
    assert "Dry run" in dry and "no conflicts" in dry and "Nothing was written" in dry
    assert checksums(stage_db.url) == deleted

    done = bot.command("restore req_77 --stage dev").text(timeout=60)
    assert "Restored backup" in done and "public.mcp_tool_calls" in done
    assert checksums(stage_db.url) == before
    [row] = bot.runtime.backups.latest(stage="dev", slug=None, limit=5)
    assert row.restored_by == OPERATOR and row.restored_at is not None
    wait_audit(bot, "restore", "started")
    wait_audit(bot, "restore", "ok")

    again = bot.command("restore req_77 --stage dev").text(timeout=60)
    assert "would collide" in again and "nothing was written" in again and "primary key (id) exists again" in again
    wait_audit(bot, "restore", "conflict")
    assert checksums(stage_db.url) == before


def test_a_protected_restore_waits_for_approval_and_its_dry_run_writes_nothing(local_bot, stage_db):
    bot = local_bot
    scoped_delete(bot, "req_prod", stage_name="production")
    after = checksums(stage_db.url)
    refused = bot.command("restore req_prod --stage production").text(timeout=30)
    assert "protected" in refused and '--reason "..."' in refused
    dry = bot.command("restore req_prod --stage production --dry-run").text(timeout=60)
    assert "Dry run" in dry and "Nothing was written" in dry
    posted = bot.command('restore req_prod --stage production --reason "undo the delete"').text(timeout=60)
    assert "posted in this channel as request" in posted and "approval from approvers" in posted
    assert checksums(stage_db.url) == after  # written only once someone else approves (test_delete_backups.py)
    assert not [r for r in bot.audit_rows() if r.command == "restore" and r.outcome == "started"]


def test_restore_of_an_unknown_request_and_from_the_store_alone(local_bot, stage_db):
    bot = local_bot
    assert "no scoped backup of request `nope`" in bot.command("restore nope --stage dev").text()
    before = checksums(stage_db.url)
    scoped_delete(bot, "req_lost_index")
    with bot.runtime.bot_engine.begin() as conn:
        conn.execute(text("DELETE FROM backups"))  # the bot database was rebuilt; the store still has the manifest
    assert "Restored backup" in bot.command("restore req_lost_index --stage dev").text(timeout=60)
    assert checksums(stage_db.url) == before


def test_local_retention_expires_old_backups(make_bot, stage_db, tmp_path):
    bot = make_bot({"dev": stage_db.url}, BACKUP_DIR=str(tmp_path / "b"), BACKUP_RETENTION_DAYS="7")
    assert "backups:retention" in bot.runtime.scheduler.jobs
    bot.command("backup --stage dev").text(timeout=60)
    bot.command("backup --stage dev").text(timeout=60)
    old, new = sorted(bot.runtime.backups.latest(stage="dev", slug=None, limit=5), key=lambda r: r.created_at)
    aged = time.time() - 8 * 86_400
    os.utime(tmp_path / "b" / old.location, (aged, aged))
    assert bot.runtime.backups.prune_local() == 1
    states = {r.id: r.state for r in bot.runtime.backups.latest(stage="dev", slug=None, limit=5)}
    assert states == {old.id: "expired", new.id: "complete"}
    assert not (tmp_path / "b" / old.location).exists() and (tmp_path / "b" / new.location).exists()
    assert ":wastebasket:" in bot.command("backups --stage dev").text()
