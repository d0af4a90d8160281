"""RDS and Aurora snapshots through boto3 against moto in server mode."""

from __future__ import annotations

import json

import boto3
import pytest
from sqlalchemy import text

from bot.backups.manifest import BackupContext, load_manifest
from bot.backups.snapshot import SnapshotFailed, snapshot_identifier
from tests.backups.deleting import delete_with_backup
from tests.conftest import APPROVER, OPERATOR, TEST_SPEC, message_text
from tests.deletion_support import checksums, press, start_delete, wait_state


def create_instance(identifier: str) -> None:
    boto3.client("rds").create_db_instance(
        DBInstanceIdentifier=identifier,
        DBInstanceClass="db.t3.micro",
        Engine="postgres",
        MasterUsername="admin",
        MasterUserPassword="not-used-1234",
        AllocatedStorage=20,
    )


def create_cluster(identifier: str) -> None:
    boto3.client("rds").create_db_cluster(
        DBClusterIdentifier=identifier,
        Engine="aurora-postgresql",
        MasterUsername="admin",
        MasterUserPassword="not-used-1234",
    )


def test_full_backup_takes_an_rds_snapshot_and_records_it(make_bot, stage_db, aws, tmp_path):
    create_instance("platform-dev")
    bot = make_bot(
        {"dev": stage_db.url}, BACKUP_DIR=str(tmp_path / "b"), RDS_SNAPSHOT_IDENTIFIER_DEV="instance:platform-dev"
    )
    bot.command("backup --stage dev").text(timeout=60)
    [row] = bot.runtime.backups.latest(stage="dev", slug=None, limit=1)
    snapshot_id = row.snapshot["snapshot_id"]
    assert row.state == "complete" and row.snapshot["status"] == "available" and row.snapshot["kind"] == "instance"
    [described] = boto3.client("rds").describe_db_snapshots(DBSnapshotIdentifier=snapshot_id)["DBSnapshots"]
    assert described["DBInstanceIdentifier"] == "platform-dev"
    bot.slack.wait_for_call("chat.update", lambda c: snapshot_id in message_text(c.payload), timeout=20)
    with bot.runtime.bot_engine.connect() as conn:
        audited = conn.execute(text("SELECT outcome, detail FROM audit_log WHERE command = 'snapshot'")).all()
    assert [(o, d["snapshot_id"]) for o, d in audited] == [("ok", snapshot_id)]


def test_an_aurora_snapshot_before_a_delete_lands_in_the_manifest(make_bot, stage_db, aws, tmp_path):
    create_cluster("platform-prod")
    bot = make_bot(
        {"production": stage_db.url},
        BACKUP_DIR=str(tmp_path / "b"),
        RDS_SNAPSHOT_IDENTIFIER_PRODUCTION="cluster:platform-prod",
    )
    stage = bot.runtime.stages.get("production")
    # What the engine does: snapshot first (outside the delete's transaction), then scoped backup and delete.
    snapshot = bot.runtime.backups.snapshot(stage, actor=OPERATOR)
    assert snapshot["kind"] == "cluster" and snapshot["source"] == "platform-prod"
    backup = bot.runtime.backups.scoped(
        BackupContext(stage="production", request_id="req_snap", requested_by=OPERATOR, snapshot=snapshot)
    )
    record, _steps, _result = delete_with_backup(stage, backup)
    manifest = load_manifest(bot.runtime.backups.store, record.manifest_key)
    assert manifest.snapshot["snapshot_id"] == snapshot["snapshot_id"]
    snapshots = boto3.client("rds").describe_db_cluster_snapshots(
        DBClusterIdentifier="platform-prod", SnapshotType="manual"
    )
    assert [s["DBClusterSnapshotIdentifier"] for s in snapshots["DBClusterSnapshots"]] == [snapshot["snapshot_id"]]
    with bot.runtime.bot_engine.connect() as conn:
        details = conn.execute(text("SELECT command, detail FROM audit_log ORDER BY id")).all()
    assert [c for c, _d in details] == ["snapshot", "backup"]
    assert details[1][1]["snapshot"]["snapshot_id"] == snapshot["snapshot_id"]
    assert json.loads(bot.runtime.backups.store.read_bytes(record.manifest_key))["snapshot"]["kind"] == "cluster"


def test_an_approved_delete_whose_counts_moved_goes_stale_before_any_snapshot(make_bot, stage_db, aws, tmp_path):
    create_instance("platform-prod")
    bot = make_bot(
        {"production": stage_db.url},
        BACKUP_DIR=str(tmp_path / "b"),
        RDS_SNAPSHOT_IDENTIFIER_PRODUCTION="instance:platform-prod",
    )
    request_id = start_delete(bot, slug=TEST_SPEC.big_slug, stage="production", extra='--reason "retired"')
    stage_db.execute(  # far beyond APPROVAL_DRIFT_PERCENT
        "INSERT INTO mcp_tool_calls (id, mcp_server_id, tool_name, mcp_server_session_id)"
        " SELECT 'tc_late_' || g, 'srv_big', 'late', 'ses_big_0' FROM generate_series(1, 500) g"
    )
    before = checksums(stage_db)
    press(bot, request_id, "Approve", APPROVER)
    row = wait_state(bot, request_id, {"done", "failed", "stale"})
    assert row.state == "stale" and "public.mcp_tool_calls:" in row.error, (row.state, row.error)
    # Counted before the snapshot: a request gone stale costs no snapshot of the whole instance.
    taken = boto3.client("rds").describe_db_snapshots(DBInstanceIdentifier="platform-prod", SnapshotType="manual")
    assert taken["DBSnapshots"] == []
    assert "snapshot" not in [r.command for r in bot.audit_rows()]
    assert checksums(stage_db) == before


def test_a_failed_snapshot_is_a_clear_error(make_bot, stage_db, aws, tmp_path):
    bot = make_bot({"dev": stage_db.url}, BACKUP_DIR=str(tmp_path / "b"), RDS_SNAPSHOT_IDENTIFIER_DEV="db-gone")
    with pytest.raises(SnapshotFailed) as caught:
        bot.runtime.backups.snapshot(bot.runtime.stages.get("dev"), actor=OPERATOR)
    assert caught.value.message == "the RDS snapshot of instance db-gone failed (DBInstanceNotFound)"
    # A full backup still stores its dump and says the snapshot failed beside it.
    text_ = bot.command("backup --stage dev").text(timeout=60)
    assert "DBInstanceNotFound" in text_
    [row] = bot.runtime.backups.latest(stage="dev", slug=None, limit=1)
    assert row.state == "complete" and row.snapshot["status"] == "failed"


def test_snapshot_identifiers_are_valid_rds_names():
    ident = snapshot_identifier("prod__eu_1")
    assert ident.startswith("mcp-ops-prod-eu-1-") and "--" not in ident and len(ident) <= 63
