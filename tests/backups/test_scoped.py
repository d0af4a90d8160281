"""Scoped backup inside the delete's transaction, and restore: round trip, conflicts, fail-closed."""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import replace

import pytest
from sqlalchemy import text

from bot.backups.export import BackupFailed, BackupMismatch, ScopedBackup
from bot.backups.index import BackupIndex
from bot.backups.manifest import BackupContext, BackupCorrupt, load_manifest
from bot.backups.restore import RestoreConflict, SchemaChanged, restore
from bot.backups.store import BackupStoreError, LocalStore, S3Store
from bot.config import load_settings
from bot.stages import Stage
from tests.backups.deleting import NOTES_DDL, delete_with_backup
from tests.conftest import APPROVER, OPERATOR, TEST_SPEC
from tests.deletion_support import table_checksums

SERVER = "srv_big"


@pytest.fixture
def stage(stage_db, bot_db_url):
    settings = load_settings({"BOT_DATABASE_URL": bot_db_url, "DATABASE_URL_DEV": stage_db.url}, require_slack=False)
    stage = Stage(settings.stages["dev"], settings)
    stage_db.execute(NOTES_DDL)
    stage_db.execute(
        "INSERT INTO server_notes VALUES ('n1', 'srv_big', 'keep an eye'), ('n2', 'srv_big', 'vip'),"
        " ('n3', 'srv_s1', 'other server')"
    )
    yield stage
    stage.dispose()


def checksums(stage: Stage) -> dict[str, tuple[int, str]]:
    with stage.read() as conn:
        return table_checksums(conn)


def context(request_id: str = "req_1") -> BackupContext:
    return BackupContext(
        stage="dev",
        request_id=request_id,
        requested_by=OPERATOR,
        server_id=SERVER,
        slug=TEST_SPEC.big_slug,
        approved_by=(APPROVER,),
    )


def test_delete_then_restore_leaves_every_table_byte_identical(stage, store, index, audit):
    before = checksums(stage)
    record, steps, result = delete_with_backup(stage, ScopedBackup(store, index, context(), audit=audit))
    deleted = {s.table: s.rows for s in result.steps}

    after_delete = checksums(stage)
    assert after_delete["public.mcp_servers"][0] == before["public.mcp_servers"][0] - 1
    assert after_delete["public.mcp_tool_calls"][0] == before["public.mcp_tool_calls"][0] - deleted["mcp_tool_calls"]
    assert deleted["mcp_tool_calls"] >= TEST_SPEC.big_tool_calls and deleted["mcp_server_user"] > 0
    assert after_delete["public.server_notes"] != before["public.server_notes"]  # two notes lost their server

    # The manifest says what was deleted, in the engine's plan order, with checksums of the data itself.
    manifest = load_manifest(store, record.manifest_key)
    assert [s.table for s in manifest.steps] == [s.table for s in steps] == [s.table for s in result.steps]
    assert {s.table: s.rows for s in manifest.steps} == deleted
    assert manifest.approved_by == (APPROVER,) and manifest.request_id == "req_1"
    for step in manifest.steps:
        data = gzip.decompress(b"".join(store.read_chunks(manifest.file_key(step))))
        assert hashlib.sha256(data).hexdigest() == step.sha256
        assert data.count(b"\n") == step.rows
    raw = json.loads(store.read_bytes(record.manifest_key))
    order = raw["plan_order"]
    assert (
        order.index("public.mcp_tool_calls")
        < order.index("public.mcp_server_session")
        < order.index("public.mcp_servers")
    )  # children before parents
    assert set(raw["schema_fingerprint"]["tables"]) == {f"public.{s.table}" for s in steps}
    [notes] = [s for s in raw["steps"] if s["table"] == "server_notes"]
    assert (notes["action"], notes["columns"], notes["rows"]) == ("set_null", ["id", "mcp_server_id"], 2)

    row = index.get(record.backup_id)
    assert (row.state, row.kind, row.request_id, row.total_rows) == (
        "complete",
        "scoped",
        "req_1",
        sum(deleted.values()),
    )
    assert row.size_bytes == record.stored_bytes
    with audit.engine.connect() as conn:
        logged = conn.execute(text("SELECT command, outcome, detail FROM audit_log")).all()
    assert [(c, o) for c, o, _ in logged] == [("backup", "ok")]
    assert logged[0][2]["backup_id"] == record.backup_id

    with stage.write(statement_timeout_ms=60_000) as conn:
        report = restore(conn, store, manifest, stage="dev")
    assert report.restored and report.total_rows == sum(deleted.values())
    order = [t for t, _a, _r in report.tables]
    assert set(order[:2]) == {"public.mcp_server_user", "public.mcp_servers"}  # the two roots first
    assert checksums(stage) == before


def test_dry_run_checks_everything_and_writes_nothing(stage, local_store, index):
    delete_with_backup(stage, ScopedBackup(local_store, index, context()))
    after_delete = checksums(stage)
    manifest = load_manifest(local_store, index.find_for_request("dev", "req_1").location)
    with stage.write(statement_timeout_ms=60_000) as conn:
        report = restore(conn, local_store, manifest, stage="dev", dry_run=True)
    assert report.dry_run and not report.restored and not report.conflicts
    assert report.total_rows > TEST_SPEC.big_tool_calls
    assert checksums(stage) == after_delete


def test_restore_conflict_reports_and_writes_nothing(stage, local_store, index, stage_db):
    delete_with_backup(stage, ScopedBackup(local_store, index, context()))
    manifest = load_manifest(local_store, index.find_for_request("dev", "req_1").location)
    users_step = next(s for s in manifest.steps if s.table == "mcp_server_user")
    first_user = gzip.decompress(b"".join(local_store.read_chunks(manifest.file_key(users_step)))).split(b"\n")[0]
    deleted_user = first_user.split(b"\t")
    # Someone reused the slug for a new server, and a user with the same distinct_id came back.
    stage_db.execute(
        "INSERT INTO mcp_servers (id, organization_id, name, product_platform_or_tool, slug)"
        " VALUES ('srv_new', 'org_1', 'New', 'github', :slug)",
        slug=TEST_SPEC.big_slug,
    )
    stage_db.execute(
        "INSERT INTO mcp_server_user (id, distinct_id) VALUES ('msu_new', :did)", did=deleted_user[1].decode()
    )
    before_attempt = checksums(stage)
    with pytest.raises(RestoreConflict) as caught, stage.write(statement_timeout_ms=60_000) as conn:
        restore(conn, local_store, manifest, stage="dev")
    conflicts = {(c.table, c.constraint): c for c in caught.value.report.conflicts}
    assert conflicts[("public.mcp_servers", "mcp_server_slug_idx")].samples == (TEST_SPEC.big_slug,)
    assert conflicts[("public.mcp_server_user", "mcp_server_user_distinct_id_key")].count == 1
    assert "nothing was written" in caught.value.message and "mcp_server_slug_idx" in caught.value.message
    assert checksums(stage) == before_attempt

    # A dry run tells the same story.
    with pytest.raises(RestoreConflict), stage.write(statement_timeout_ms=60_000) as conn:
        restore(conn, local_store, manifest, stage="dev", dry_run=True)
    assert checksums(stage) == before_attempt


def test_a_missing_bucket_blocks_the_delete(stage, aws, index):
    before = checksums(stage)
    backup = ScopedBackup(S3Store("bucket-that-is-not-there"), index, context())
    with pytest.raises(BackupFailed) as caught:
        delete_with_backup(stage, backup)
    assert "nothing was deleted" in caught.value.message and "NoSuchBucket" in caught.value.message
    assert checksums(stage) == before
    [row] = index.latest(stage="dev")
    assert row.state == "failed" and "NoSuchBucket" in row.error


class FailingOnThirdUpload(LocalStore):
    """A destination that accepts two files and then refuses (disk full, permissions, network)."""

    uploads = 0

    def upload(self, key, chunks, **kwargs):
        self.uploads += 1
        if self.uploads == 3:
            for _ in chunks:
                break
            raise BackupStoreError("the backup write failed in the test store (No space left on device)")
        return super().upload(key, chunks, **kwargs)


def test_a_store_failing_midway_blocks_the_delete_and_leaves_no_partial_backup(stage, tmp_path, index):
    before = checksums(stage)
    store = FailingOnThirdUpload(tmp_path / "flaky")
    with pytest.raises(BackupFailed) as caught:
        delete_with_backup(stage, ScopedBackup(store, index, context()))
    assert "No space left on device" in caught.value.message
    assert checksums(stage) == before
    assert list(store.list("")) == []  # the two files already written were removed
    # The stage connection is healthy afterwards (the interrupted COPY was cancelled cleanly).
    assert stage.ping() >= 0


def test_a_copy_the_database_refuses_blocks_the_delete_with_the_reason_not_a_bare_sqlstate(stage, local_store, index):
    before = checksums(stage)

    def lose_a_scope_table(steps):
        return [replace(s, scope_table="mcpops_scope_gone") if s.table == "mcp_tool_calls" else s for s in steps]

    with pytest.raises(BackupFailed) as caught:
        delete_with_backup(stage, ScopedBackup(local_store, index, context()), adjust=lose_a_scope_table)
    message = caught.value.message
    assert "exporting public.mcp_tool_calls failed" in message and "nothing was deleted" in message
    assert 'relation "mcpops_scope_gone" does not exist' in message and "42P01" not in message
    assert checksums(stage) == before
    assert index.latest(stage="dev")[0].state == "failed"


def test_counts_that_disagree_with_the_plan_block_the_delete(stage, local_store, index):
    before = checksums(stage)

    def claim_one_tool_call(steps):
        return [replace(s, expected_rows=1) if s.table == "mcp_tool_calls" else s for s in steps]

    with pytest.raises(BackupMismatch) as caught:
        delete_with_backup(stage, ScopedBackup(local_store, index, context()), adjust=claim_one_tool_call)
    assert "public.mcp_tool_calls exported" in caught.value.message and "the plan says 1" in caught.value.message
    assert checksums(stage) == before
    assert index.latest(stage="dev")[0].state == "failed"


def test_restore_refuses_when_the_schema_changed(stage, local_store, index, stage_db):
    delete_with_backup(stage, ScopedBackup(local_store, index, context()))
    stage_db.execute("ALTER TABLE mcp_servers ADD COLUMN archived boolean")
    manifest = load_manifest(local_store, index.find_for_request("dev", "req_1").location)
    before = checksums(stage)
    with pytest.raises(SchemaChanged) as caught, stage.write(statement_timeout_ms=60_000) as conn:
        restore(conn, local_store, manifest, stage="dev")
    assert "public.mcp_servers: new columns archived" in caught.value.message
    assert checksums(stage) == before


def test_a_tampered_file_is_detected_and_nothing_is_written(stage, local_store, index):
    delete_with_backup(stage, ScopedBackup(local_store, index, context()))
    manifest = load_manifest(local_store, index.find_for_request("dev", "req_1").location)
    step = next(s for s in manifest.steps if s.table == "mcp_servers")
    path = local_store.root / manifest.file_key(step)
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()).replace(b"acme", b"acne")))
    before = checksums(stage)
    with pytest.raises(BackupCorrupt), stage.write(statement_timeout_ms=60_000) as conn:
        restore(conn, local_store, manifest, stage="dev")
    assert checksums(stage) == before


def test_the_index_finds_backups_by_request_and_slug(index: BackupIndex, stage, local_store):
    record, _s, _d = delete_with_backup(stage, ScopedBackup(local_store, index, context("req_A")))
    assert index.find_for_request("dev", "req_A").id == record.backup_id
    assert index.find_for_request("dev", "req_B") is None
    assert [r.id for r in index.latest(slug=TEST_SPEC.big_slug)] == [record.backup_id]
    index.mark_delete(record.backup_id, committed=True)
    assert index.get(record.backup_id).delete_state == "committed"


def test_a_parent_gone_since_is_reported_as_a_conflict(stage, local_store, index, stage_db):
    delete_with_backup(stage, ScopedBackup(local_store, index, context()))
    stage_db.execute("DELETE FROM walkthroughs WHERE id = 'wt_1_1'")  # srv_big's walkthrough, deleted since
    manifest = load_manifest(local_store, index.find_for_request("dev", "req_1").location)
    before = checksums(stage)
    with pytest.raises(RestoreConflict) as caught, stage.write(statement_timeout_ms=60_000) as conn:
        restore(conn, local_store, manifest, stage="dev")
    [conflict] = caught.value.report.conflicts
    # Both tables hang off that walkthrough; whichever is put back first meets the missing parent.
    assert (conflict.table, conflict.constraint) in {
        ("public.mcp_server_walkthroughs", "mcp_server_walkthroughs_walkthrough_id_fkey"),
        ("public.walkthrough_step_completions", "walkthrough_step_completions_walkthrough_id_fkey"),
    }
    assert conflict.reason == "a restored row references a row that no longer exists"
    assert "wt_1_1" in conflict.samples[0]
    assert checksums(stage) == before


def test_set_default_columns_are_kept_and_set_back(stage, local_store, index, stage_db):
    stage_db.execute(
        "CREATE TABLE server_tags (id text PRIMARY KEY,"
        " server_id text NOT NULL DEFAULT 'srv_s1' REFERENCES mcp_servers(id) ON DELETE SET DEFAULT, tag text);"
        " INSERT INTO server_tags VALUES ('t1', 'srv_big', 'vip'), ('t2', 'srv_big', 'beta'), ('t3', 'srv_s2', 'x')"
    )
    before = checksums(stage)
    record, _steps, result = delete_with_backup(stage, ScopedBackup(local_store, index, context()))
    assert {s.table: (s.action, s.rows) for s in result.steps}["server_tags"] == ("set default", 2)
    assert stage_db.scalar("SELECT count(*) FROM server_tags WHERE server_id = 'srv_s1'") == 2
    manifest = load_manifest(local_store, record.manifest_key)
    [tags] = [s for s in manifest.steps if s.table == "server_tags"]
    assert (tags.action, tags.columns, tags.rows) == ("set_default", ("id", "server_id"), 2)
    with stage.write(statement_timeout_ms=60_000) as conn:
        report = restore(conn, local_store, manifest, stage="dev")
    assert ("public.server_tags", "set_default", 2) in report.tables
    assert "public.server_tags(server_id) changed since" in report.unchecked
    assert checksums(stage) == before
