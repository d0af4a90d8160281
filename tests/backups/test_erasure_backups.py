"""A forgotten person and the scoped backups taken before: listed in the receipt, purged (local files and
moto S3), and a restore of an older backup that applies the erasure again instead of bringing them back."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import boto3
import pytest

from bot.erasure.plan import ErasureTarget
from tests.conftest import OPERATOR, BotHarness, StageDb, eventually, message_text
from tests.deletion_support import (
    fingerprints,
    press,
    requests_rows,
    start_delete,
    updates_of,
    wait_state,
    wait_update,
)

PAT = """
INSERT INTO mcp_server_user (id, distinct_id, email, profile_data) VALUES
 ('msu_pat', 'did_pat', 'Pat.Smith@Example.org', '{"note": "vip"}');
INSERT INTO mcp_server_session (mcp_server_session_id, mcp_server_slug, connection_date, mcp_server_user_id)
 SELECT 'ses_pat', slug, current_date, 'msu_pat' FROM mcp_servers WHERE id = 'srv_s3';
INSERT INTO mcp_tool_calls (id, mcp_server_id, tool_name, mcp_server_user_id, mcp_server_session_id, input) VALUES
 ('tc_pat_1', 'srv_s3', 'search', 'msu_pat', 'ses_pat', '{"q": "hello"}'),
 ('tc_pat_2', 'srv_s3', 'search', 'msu_pat', 'ses_pat', '{"q": "again"}');
INSERT INTO support_requests (id, email, organization_id, mcp_server_id, title) VALUES
 ('sr_pat', 'pat.smith@example.org', 'org_1', 'srv_big', 'Please forget me');
"""
EMAIL = "pat.smith@example.org"
PAT_ROWS = {
    "public.mcp_server_user": {"msu_pat"},
    "public.mcp_server_session": {"ses_pat"},
    "public.mcp_tool_calls": {"tc_pat_1", "tc_pat_2"},
    "public.support_requests": {"sr_pat"},
}


def delete_small_server_with_backup(bot: BotHarness, db: StageDb) -> int:
    """srv_s3 (Pat used only it) deleted through Slack with `--backup`: Pat's rows go into its scoped backup."""
    slug = db.scalar("SELECT slug FROM mcp_servers WHERE id = 'srv_s3'")
    request_id = start_delete(bot, slug, extra="--backup")
    press(bot, request_id, "Delete", OPERATOR)
    row = wait_state(bot, request_id, {"done", "failed"})
    assert row.state == "done", row.error
    assert db.scalar("SELECT count(*) FROM mcp_server_user WHERE id = 'msu_pat'") == 0  # orphaned, deleted
    return request_id


def forget_pat(bot: BotHarness, *, purge: bool):
    stage = bot.runtime.stages.get("dev")
    erasures = bot.runtime.erasures
    impact = erasures.impact(stage, EMAIL.upper())
    return erasures.run(
        stage,
        ErasureTarget.from_json(impact.target),
        expected=impact.snapshot,
        requested_by=OPERATOR,
        purge_backups=purge,
        budget_s=60,
    )


def without_pat(before: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    return {t: {k: v for k, v in rows.items() if k not in PAT_ROWS.get(t, set())} for t, rows in before.items()}


@pytest.fixture
def pat_db(stage_db: StageDb) -> StageDb:
    stage_db.execute(PAT)
    return stage_db


def test_a_restore_of_an_older_backup_applies_the_erasure_again(make_bot, pat_db):
    bot = make_bot({"dev": pat_db.url})
    before = fingerprints(pat_db)
    request_id = delete_small_server_with_backup(bot, pat_db)
    receipt = forget_pat(bot, purge=False)
    assert receipt.result.verified and pat_db.scalar("SELECT count(*) FROM support_requests WHERE id = 'sr_pat'") == 0
    [held] = receipt.backups  # the server's backup holds Pat's user row, session and tool calls
    assert held.action == "found" and held.dropped["public.mcp_server_user"] == 1 and held.rows >= 4

    reply = bot.command(f"restore {request_id} --stage dev").text(timeout=60)
    assert f"erasure #{receipt.erasure_id} ({receipt.label}): {held.rows} rows" in reply, reply
    assert "left out of the restore" in reply and "applied again" in reply, reply
    assert fingerprints(pat_db) == without_pat(before)  # the server is back, Pat is not
    ledger = bot.runtime.erasures.ledger.get(receipt.erasure_id)
    assert ledger is not None and [e["event"] for e in ledger.events] == ["reapplied"]
    assert ledger.events[0]["left_out"] == held.rows and ledger.events[0]["counts"] == {}
    reapplied = [r for r in bot.audit_rows() if r.command == "forget-user" and r.outcome == "reapplied"]
    assert len(reapplied) == 1 and EMAIL not in str(reapplied[0]).lower()


def test_a_restore_leaves_out_the_rows_of_a_person_who_used_other_servers_too(make_bot, pat_db):
    """Pat also used srv_s1, so deleting srv_s3 keeps her user row but backs up her session there; once she
    is forgotten, that session would point at a user row that is gone: the restore leaves her rows out."""
    pat_db.execute(
        "INSERT INTO mcp_server_session (mcp_server_session_id, mcp_server_slug, connection_date, mcp_server_user_id)"
        " SELECT 'ses_pat_s1', slug, current_date, 'msu_pat' FROM mcp_servers WHERE id = 'srv_s1'"
    )
    bot = make_bot({"dev": pat_db.url})
    root = Path(bot.env["BACKUP_DIR"])
    before = fingerprints(pat_db)
    slug = pat_db.scalar("SELECT slug FROM mcp_servers WHERE id = 'srv_s3'")
    request_id = start_delete(bot, slug, extra="--backup")
    press(bot, request_id, "Delete", OPERATOR)
    assert wait_state(bot, request_id, {"done", "failed"}).state == "done"
    assert pat_db.scalar("SELECT count(*) FROM mcp_server_user WHERE id = 'msu_pat'") == 1  # not orphaned
    receipt = forget_pat(bot, purge=False)
    [held] = receipt.backups
    assert held.dropped == {"public.mcp_server_session": 1, "public.mcp_tool_calls": 2}
    files = _files(root)

    dry = bot.command(f"restore {request_id} --stage dev --dry-run").text(timeout=60)
    assert f"erasure #{receipt.erasure_id} ({receipt.label}): 3 rows" in dry and "left out" in dry, dry
    reply = bot.command(f"restore {request_id} --stage dev").text(timeout=60)
    assert "Restored backup" in reply and f"erasure #{receipt.erasure_id}" in reply, reply
    assert "msu_pat" not in reply
    gone = {**PAT_ROWS, "public.mcp_server_session": {"ses_pat", "ses_pat_s1"}}
    after = fingerprints(pat_db)
    assert after == {t: {k: v for k, v in rows.items() if k not in gone.get(t, set())} for t, rows in before.items()}
    assert _files(root) == files  # the backup itself is as it was (not purged); the restore read copies


def test_the_dry_run_of_a_restore_names_the_erasure_it_would_apply_again(make_bot, pat_db):
    bot = make_bot({"dev": pat_db.url})
    request_id = delete_small_server_with_backup(bot, pat_db)
    receipt = forget_pat(bot, purge=False)
    reply = bot.command(f"restore {request_id} --stage dev --dry-run").text(timeout=60)
    assert f"#{receipt.erasure_id} ({receipt.label})" in reply
    assert pat_db.scalar("SELECT count(*) FROM mcp_servers WHERE id = 'srv_s3'") == 0


def test_a_restore_that_cannot_apply_the_erasure_again_is_refused_naming_it(make_bot, pat_db):
    bot = make_bot({"dev": pat_db.url})
    request_id = delete_small_server_with_backup(bot, pat_db)
    receipt = forget_pat(bot, purge=False)
    # Since the erasure a user row under Pat's email came back, and a legal hold protects it: applying the
    # erasure again after restoring would delete it, which the hold refuses.
    pat_db.execute(
        "INSERT INTO mcp_server_user (id, email) VALUES ('msu_pat_again', 'PAT.Smith@example.org');"
        " CREATE TABLE legal_holds (user_id text PRIMARY KEY REFERENCES mcp_server_user(id) ON DELETE RESTRICT);"
        " INSERT INTO legal_holds VALUES ('msu_pat_again')"
    )
    reply = bot.command(f"restore {request_id} --stage dev").text(timeout=60)
    assert f"erasure #{receipt.erasure_id} ({receipt.label})" in reply and "nothing was restored" in reply, reply
    assert pat_db.scalar("SELECT count(*) FROM mcp_servers WHERE id = 'srv_s3'") == 0
    assert pat_db.scalar("SELECT count(*) FROM mcp_server_user WHERE id = 'msu_pat'") == 0


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _mentions_pat(files: dict[str, bytes]) -> list[str]:
    found = []
    for name, data in files.items():
        text = (gzip.decompress(data) if name.endswith(".gz") else data).decode().lower()
        if "msu_pat" in text or "ses_pat" in text or EMAIL in text:
            found.append(name)
    return found


def test_purge_rewrites_a_local_backup_without_the_person_and_it_still_restores(make_bot, pat_db):
    bot = make_bot({"dev": pat_db.url})
    root = Path(bot.env["BACKUP_DIR"])
    before = fingerprints(pat_db)
    request_id = delete_small_server_with_backup(bot, pat_db)
    assert _mentions_pat(_files(root))  # the backup holds Pat
    receipt = forget_pat(bot, purge=True)
    [purged] = receipt.backups
    assert purged.action == "rewritten" and receipt.purged
    files = _files(root)
    assert _mentions_pat(files) == []
    [manifest_name] = [n for n in files if n.endswith("manifest.json")]
    manifest = json.loads(files[manifest_name])
    assert manifest["purged"] == [{"erasure": receipt.erasure_id, "person": receipt.label, "rows": purged.rows}]
    assert len(files) == len(manifest["steps"]) + 1  # the old files are gone, the new ones named in the manifest
    row = bot.runtime.backups.index.get(purged.backup_id)
    assert row is not None and row.row_counts["public.mcp_server_user"] == manifest_users(manifest)
    assert [e["event"] for e in bot.runtime.erasures.ledger.get(receipt.erasure_id).events] == ["purged"]

    reply = bot.command(f"restore {request_id} --stage dev").text(timeout=60)
    assert "Restored backup" in reply, reply
    assert fingerprints(pat_db) == without_pat(before)


def manifest_users(manifest: dict) -> int:
    return sum(s["rows"] for s in manifest["steps"] if s["table"] == "mcp_server_user" and s["action"] == "delete")


def test_purge_rewrites_s3_objects(make_bot, make_bucket, pat_db):
    make_bucket("mcp-ops-backups")
    bot = make_bot({"dev": pat_db.url}, BACKUP_BUCKET="mcp-ops-backups", BACKUP_PREFIX="team")
    delete_small_server_with_backup(bot, pat_db)
    s3 = boto3.client("s3")

    def objects() -> dict[str, bytes]:
        listed = s3.list_objects_v2(Bucket="mcp-ops-backups", Prefix="team/dev/scoped/").get("Contents", [])
        return {o["Key"]: s3.get_object(Bucket="mcp-ops-backups", Key=o["Key"])["Body"].read() for o in listed}

    old = objects()
    assert _mentions_pat(old)
    receipt = forget_pat(bot, purge=True)
    assert [b.action for b in receipt.backups] == ["rewritten"]
    new = objects()
    assert _mentions_pat(new) == []
    replaced = set(old) - set(new)
    assert replaced and all(".erased-" not in k for k in replaced)  # the files that held Pat were removed
    assert {k for k in new if ".erased-" in k} and len(new) == len(old)


def test_forget_user_with_purge_backups_through_slack(make_bot, pat_db):
    """The whole path: the request with `--purge-backups`, the confirmation, the receipt naming the backup."""
    bot = make_bot({"dev": pat_db.url})
    root = Path(bot.env["BACKUP_DIR"])
    delete_small_server_with_backup(bot, pat_db)
    before = {r.id for r in requests_rows(bot)}
    body = bot.command(f"forget-user {EMAIL} --stage dev --purge-backups").text(timeout=60)
    assert "is posted in this channel as request" in body, body
    [request_id] = [r.id for r in requests_rows(bot) if r.id not in before]
    press(bot, request_id, "Forget", OPERATOR)
    row = wait_state(bot, request_id, {"done", "failed", "stale"})
    assert row.state == "done", row.error
    [backup] = row.result["backups"]
    assert backup["action"] == "rewritten" and backup["rows"] >= 4
    receipt = message_text(wait_update(bot, request_id, ": done"))
    assert f"scoped backup `{backup['backup_id']}`" in receipt and "rewritten without them" in receipt
    assert _mentions_pat(_files(root)) == []
    assert pat_db.scalar("SELECT count(*) FROM support_requests WHERE id = 'sr_pat'") == 0


def test_purge_backups_later_for_a_person_already_erased(make_bot, pat_db):
    """Erased without --purge-backups: the same command with --purge-backups purges the backups that still hold
    the person, from the ledger's digests; asked again, nothing is left to purge."""
    bot = make_bot({"dev": pat_db.url})
    root = Path(bot.env["BACKUP_DIR"])
    delete_small_server_with_backup(bot, pat_db)
    receipt = forget_pat(bot, purge=False)
    [held] = receipt.backups
    assert held.action == "found" and _mentions_pat(_files(root))
    assert "nothing on this stage matches" in bot.command(
        "forget-user nobody@example.org --stage dev --purge-backups"
    ).text(timeout=60)

    reply = bot.command(f"forget-user {EMAIL.upper()} --stage dev --purge-backups")
    body = reply.text(timeout=60)
    assert reply.message()["response_type"] == "in_channel"
    assert f"by erasure #{receipt.erasure_id}" in body and f"scoped backup `{held.backup_id}`" in body, body
    assert "rewritten without them" in body and EMAIL not in body.lower()
    assert _mentions_pat(_files(root)) == []
    ledger = bot.runtime.erasures.ledger.get(receipt.erasure_id)
    assert ledger is not None and [e["event"] for e in ledger.events] == ["purged"]
    assert [b["action"] for b in ledger.backups] == ["rewritten"]

    again = bot.command("forget-user ' Pat.Smith@example.ORG' --stage dev --purge-backups").text(timeout=60)
    assert "holds the person any more" in again, again
    ledger = bot.runtime.erasures.ledger.get(receipt.erasure_id)  # what it purged stays recorded
    assert ledger is not None and [(b["backup_id"], b["action"]) for b in ledger.backups] == [
        (held.backup_id, "rewritten")
    ]
    purges = [r for r in bot.audit_rows() if r.command == "forget-user" and r.outcome == "rewritten"]
    assert len(purges) == 1 and EMAIL not in str(purges[0]).lower()


def test_purging_later_updates_the_receipt_of_the_erasure_request(make_bot, pat_db):
    """Asked through Slack without --purge-backups, the receipt lists the backup as still holding the person;
    the purge later rewrites the backup and the receipt (the request's message) says so."""
    bot = make_bot({"dev": pat_db.url})
    delete_small_server_with_backup(bot, pat_db)
    before = {r.id for r in requests_rows(bot)}
    assert "is posted in this channel as request" in bot.command(f"forget-user {EMAIL} --stage dev").text(timeout=60)
    [request_id] = [r.id for r in requests_rows(bot) if r.id not in before]
    press(bot, request_id, "Forget", OPERATOR)
    row = wait_state(bot, request_id, {"done", "failed", "stale"})
    assert row.state == "done", row.error
    [backup] = row.result["backups"]
    assert backup["action"] == "found"
    receipt = message_text(wait_update(bot, request_id, ": done"))
    assert "still holds them" in receipt and "To purge them later" in receipt

    reply = bot.command("forget-user PAT.SMITH@example.org --stage dev --purge-backups").text(timeout=60)
    assert f"by erasure #{row.result['erasure']}" in reply and "rewritten without them" in reply, reply
    assert _mentions_pat(_files(Path(bot.env["BACKUP_DIR"]))) == []
    amended = next(r for r in requests_rows(bot) if r.id == request_id)
    assert amended.state == "done" and amended.result["purged"] is True
    assert [(b["backup_id"], b["action"]) for b in amended.result["backups"]] == [(backup["backup_id"], "rewritten")]

    def updated() -> str | None:
        texts = [message_text(p) for p in updates_of(bot, request_id)]
        return next((t for t in texts if "rewritten without them" in t), None)

    body = eventually(updated, timeout=30)
    assert body and f"scoped backup `{backup['backup_id']}`" in body, body
    assert "To purge them later" not in body and "still holds them" not in body and EMAIL not in body.lower()
