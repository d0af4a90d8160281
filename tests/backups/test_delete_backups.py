"""Backups inside real deletes and approved restores: signed Slack requests, the real deletion engine,
moto S3 over HTTP, real PostgreSQL (the platform schema plus tables no code in bot/ names)."""

from __future__ import annotations

import gzip
import json

import boto3
import pytest

from tests.conftest import APPROVER, APPROVER2, OPERATOR, BotHarness, message_text
from tests.deletion_support import (
    BIG,
    audit_outcomes,
    buttons,
    checksums,
    ephemeral_on,
    press,
    request_message,
    requests_rows,
    start_delete,
    truth,
    wait_state,
    wait_update,
)

REASON = '--reason "GDPR erasure, ticket 4711"'


@pytest.fixture
def s3_bot(make_bot, make_bucket, db) -> BotHarness:
    make_bucket("mcp-ops-backups")
    return make_bot(
        {"dev": db.url, "production": db.url},
        OPERATORS=OPERATOR,
        APPROVERS=f"{APPROVER},{APPROVER2}",
        BACKUP_BUCKET="mcp-ops-backups",
        BACKUP_PREFIX="team",
    )


def s3_keys(prefix: str) -> list[str]:
    listed = boto3.client("s3").list_objects_v2(Bucket="mcp-ops-backups", Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def new_request_after(bot: BotHarness, before: set[int]) -> int:
    [new] = [r.id for r in requests_rows(bot) if r.id not in before]
    return new


def test_protected_delete_backs_up_to_s3_and_an_approved_restore_puts_every_row_back(s3_bot, db):
    bot = s3_bot
    before = checksums(db)
    in_scope = truth(db)
    request_id = start_delete(bot, stage="production", extra=REASON)
    pending = message_text(request_message(bot, request_id))
    assert "Backup before the delete: every row it deletes or changes" in pending
    assert "s3://mcp-ops-backups/team/" in pending

    press(bot, request_id, "Approve", APPROVER)
    row = wait_state(bot, request_id, {"done", "failed", "stale"})
    assert row.state == "done", row.error
    assert db.scalar("SELECT count(*) FROM mcp_servers WHERE slug = :s", s=BIG) == 0
    done = message_text(wait_update(bot, request_id, ": done"))
    backup = row.result["backup"]
    assert f"Backup `{backup['id']}`" in done and f"/mcp restore {request_id} --stage production" in done

    # The manifest and one file per table of the plan, under the stage and the request id.
    keys = s3_keys(f"team/production/scoped/{request_id}/{backup['id']}/")
    manifest_key = next(k for k in keys if k.endswith("manifest.json"))
    manifest = json.loads(boto3.client("s3").get_object(Bucket="mcp-ops-backups", Key=manifest_key)["Body"].read())
    assert len(keys) == len(manifest["steps"]) + 1
    assert manifest["request_id"] == str(request_id) and manifest["approved_by"] == [APPROVER]
    assert manifest["server"] == {"id": "srv_big", "slug": BIG} and manifest["stage"] == "production"
    deleted = {f"{s['schema']}.{s['table']}": s["rows"] for s in manifest["steps"] if s["action"] == "delete"}
    assert deleted == {table: len(keys_) for table, keys_ in in_scope.items()}  # exactly the scope, every table
    nulled = [s for s in manifest["steps"] if s["action"] == "set_null"]
    assert [(s["table"], s["columns"], s["rows"]) for s in nulled] == [("session_bookmarks", ["id", "session_id"], 3)]
    assert backup["rows"] == sum(s["rows"] for s in manifest["steps"])
    users = next(s for s in manifest["steps"] if s["table"] == "mcp_server_user")
    body = boto3.client("s3").get_object(Bucket="mcp-ops-backups", Key=keys[users["order"]])["Body"].read()
    assert gzip.decompress(body).count(b"\n") == users["rows"]
    [indexed] = bot.runtime.backups.latest(stage="production", slug=BIG, limit=5)
    assert (indexed.state, indexed.delete_state, indexed.request_id) == ("complete", "committed", str(request_id))

    # The restore is a request of its own on a protected stage, approved by someone else.
    known = {r.id for r in requests_rows(bot)}
    reply = bot.command(f"restore {request_id} --stage production {REASON}").text(timeout=60)
    assert "posted in this channel as request" in reply and "no conflicts now" in reply
    restore_id = new_request_after(bot, known)
    payload = request_message(bot, restore_id)
    shown = message_text(payload)
    assert "Restore acme-analytics-mcp on production" in shown and backup["id"] in shown
    assert set(buttons(payload)) == {"Approve", "Reject", "Cancel"}
    assert checksums(db) != before  # nothing is written before the approval
    refused = message_text(ephemeral_on(bot, press(bot, restore_id, "Approve", OPERATOR)))
    assert "you asked for this restore, so someone else has to approve it" in refused
    press(bot, restore_id, "Approve", APPROVER2)
    restored = wait_state(bot, restore_id, {"done", "failed"})
    assert restored.state == "done", restored.error
    assert "restored *" in message_text(wait_update(bot, restore_id, ": done"))
    assert checksums(db) == before  # every table byte-identical to before the delete

    bot.wait_audit(1)
    assert [o for o in audit_outcomes(bot) if o in ("requested", "approved", "running", "done")] == [
        "requested",
        "approved",
        "running",
        "done",
    ]
    assert [o for o in audit_outcomes(bot, "restore") if o in ("requested", "approved", "running", "done")] == [
        "requested",
        "approved",
        "running",
        "done",
    ]
    assert "ok" in audit_outcomes(bot, "backup")


def test_an_upload_that_fails_blocks_the_approved_delete(make_bot, aws, db):
    bot = make_bot(
        {"production": db.url}, OPERATORS=OPERATOR, APPROVERS=APPROVER, BACKUP_BUCKET="bucket-nobody-created"
    )
    before = checksums(db)
    request_id = start_delete(bot, stage="production", extra=REASON)
    press(bot, request_id, "Approve", APPROVER)
    row = wait_state(bot, request_id, {"done", "failed", "stale"})
    assert row.state == "failed"
    assert "the backup failed, so nothing was deleted" in row.error and "NoSuchBucket" in row.error
    failed = message_text(wait_update(bot, request_id, "failed"))
    assert "Failed and rolled back, nothing was deleted" in failed and "NoSuchBucket" in failed
    assert checksums(db) == before
    [indexed] = bot.runtime.backups.latest(stage="production", slug=None, limit=5)
    assert indexed.state == "failed" and "NoSuchBucket" in indexed.error


def test_a_protected_delete_is_refused_without_a_backup_destination(make_bot, db):
    bot = make_bot({"production": db.url}, OPERATORS=OPERATOR, APPROVERS=APPROVER, BACKUP_DIR="")
    reply = bot.command(f"delete {BIG} --stage production {REASON}").text(timeout=30)
    assert "no backup destination is configured" in reply
    assert requests_rows(bot) == []


def test_backup_flag_on_an_unprotected_stage_then_a_direct_restore(make_bot, db, tmp_path):
    bot = make_bot({"dev": db.url}, OPERATORS=OPERATOR, BACKUP_DIR=str(tmp_path / "kept"))
    before = checksums(db)
    plain = start_delete(bot, stage="dev")
    assert "none (add `--backup`" in message_text(request_message(bot, plain))
    press(bot, plain, "Cancel", OPERATOR)
    wait_state(bot, plain, {"cancelled"})

    request_id = start_delete(bot, stage="dev", extra="--backup")
    payload = request_message(bot, request_id)
    assert "kept in a scoped backup first" in json.dumps(buttons(payload)["Delete"]["confirm"])
    press(bot, request_id, "Delete", OPERATOR)
    row = wait_state(bot, request_id, {"done", "failed", "stale"})
    assert row.state == "done", row.error
    assert str(tmp_path / "kept") in row.result["backup"]["location"]
    assert checksums(db) != before
    reply = bot.command(f"restore {request_id} --stage dev").text(timeout=60)
    assert "Restored backup" in reply
    assert checksums(db) == before


def test_a_restore_that_would_conflict_is_refused_before_anyone_approves(s3_bot, db):
    bot = s3_bot
    request_id = start_delete(bot, stage="production", extra=REASON)
    press(bot, request_id, "Approve", APPROVER)
    assert wait_state(bot, request_id, {"done", "failed", "stale"}).state == "done"
    db.execute(
        "INSERT INTO mcp_servers (id, organization_id, name, product_platform_or_tool, slug)"
        " VALUES ('srv_reuse', 'org_1', 'Reused', 'github', :slug)",
        slug=BIG,
    )
    after = checksums(db)
    known = {r.id for r in requests_rows(bot)}
    reply = bot.command(f"restore {request_id} --stage production {REASON}").text(timeout=60)
    assert "would collide" in reply and "mcp_server_slug_idx" in reply and "nothing was written" in reply
    assert {r.id for r in requests_rows(bot)} == known  # no request to approve
    assert checksums(db) == after
    assert '--reason "..."' in bot.command(f"restore {request_id} --stage production").text(timeout=30)
