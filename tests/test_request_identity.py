"""Requests are bound to identity, not names: the server's primary key, the scope's snapshot hash,
the exact backup id. A slug reused between the request and the click never deletes another server.

End to end: signed Slack requests to the real HTTP endpoint, the fake Slack Web API, real PostgreSQL.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text

from bot.backups.manifest import BackupContext
from tests.backups.deleting import delete_with_backup
from tests.conftest import APPROVER, OPERATOR, TEST_SPEC, BotHarness, StageDb, message_text
from tests.deletion_support import (
    checksums,
    left_running,
    press,
    request_message,
    requests_rows,
    start_delete,
    wait_state,
    wait_update,
)

REASON = '--reason "retired customer"'
BIG = TEST_SPEC.big_slug
SLUG = "reused-slug"


def add_bare_server(db: StageDb, server_id: str, org: str) -> None:
    """A server with no dependents: another one like it has the very same impact snapshot (and hash)."""
    db.execute(
        "INSERT INTO mcp_servers (id, organization_id, name, product_platform_or_tool, slug)"
        " VALUES (:id, :org, 'Bare', 'github', :slug)",
        id=server_id,
        org=org,
        slug=SLUG,
    )


def reuse_slug(db: StageDb) -> None:
    """Between request and click: the approved server is deleted and another organisation's takes its slug."""
    db.execute("DELETE FROM mcp_servers WHERE id = 'srv_first'")
    add_bare_server(db, "srv_second", "org_2")


@pytest.fixture
def app(make_bot, stage_db: StageDb) -> BotHarness:
    add_bare_server(stage_db, "srv_first", "org_1")
    return make_bot({"dev": stage_db.url, "production": stage_db.url})


def assert_stale_for_another_server(bot: BotHarness, request_id: int) -> None:
    row = wait_state(bot, request_id, {"done", "failed", "stale"})
    assert row.state == "stale", (row.state, row.error)
    assert row.server_key == {"id": "srv_first"}
    assert "the server (id=srv_first) no longer exists" in row.error
    assert f"`{SLUG}` now names another server (id=srv_second)" in row.error
    assert row.replaced_by is None  # no fresh request for a server nobody asked to delete
    body = message_text(wait_update(bot, request_id, ": stale"))
    assert "Stale, nothing was deleted" in body and "This is not what was approved" in body


def test_a_slug_reused_before_approval_never_deletes_the_other_server(app, stage_db):
    request_id = start_delete(app, slug=SLUG, stage="production", extra=REASON)
    assert requests_rows(app)[0].server_key == {"id": "srv_first"}
    reuse_slug(stage_db)
    before = checksums(stage_db)  # same counts, same snapshot hash: only the key tells them apart

    press(app, request_id, "Approve", APPROVER)
    assert_stale_for_another_server(app, request_id)
    assert checksums(stage_db) == before
    assert stage_db.scalar("SELECT organization_id FROM mcp_servers WHERE slug = :s", s=SLUG) == "org_2"
    assert [r.id for r in requests_rows(app)] == [request_id]
    assert not [p for p in app.runtime.backups.latest(stage="production", slug=None, limit=5)]


def test_a_dev_confirmation_after_the_slug_was_reused_deletes_nothing(app, stage_db):
    request_id = start_delete(app, slug=SLUG, stage="dev")
    reuse_slug(stage_db)
    before = checksums(stage_db)
    press(app, request_id, "Delete", OPERATOR)
    assert_stale_for_another_server(app, request_id)
    assert checksums(stage_db) == before


def test_a_server_gone_before_the_confirmation_makes_the_request_stale(app, stage_db):
    request_id = start_delete(app, slug=SLUG, stage="dev")
    stage_db.execute("UPDATE mcp_servers SET slug = 'renamed-slug' WHERE id = 'srv_first'")
    before = checksums(stage_db)
    press(app, request_id, "Delete", OPERATOR)
    row = wait_state(app, request_id, {"done", "failed", "stale"})
    assert row.state == "stale", row.error
    assert "the server (id=srv_first) is now called `renamed-slug`, not `reused-slug`" in row.error
    assert checksums(stage_db) == before


def test_a_protected_request_for_a_missing_server_goes_stale(app, stage_db):
    request_id = start_delete(app, slug=SLUG, stage="production", extra=REASON)
    stage_db.execute("DELETE FROM mcp_servers WHERE id = 'srv_first'")
    press(app, request_id, "Approve", APPROVER)
    row = wait_state(app, request_id, {"done", "failed", "stale"})
    assert row.state == "stale" and "no longer exists" in row.error, row.error
    assert row.replaced_by is None


def test_rows_that_block_since_the_request_make_it_stale_with_their_words(app, stage_db):
    stage_db.execute(
        "CREATE TABLE legal_holds (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE RESTRICT)"
    )
    request_id = start_delete(app, slug=SLUG, stage="production", extra=REASON)
    stage_db.execute("INSERT INTO legal_holds VALUES (7, 'srv_first')")  # the counts in scope did not move
    before = checksums(stage_db)
    press(app, request_id, "Approve", APPROVER)
    row = wait_state(app, request_id, {"done", "failed", "stale"})
    assert row.state == "stale", (row.state, row.error)
    assert row.error.startswith("the database would now refuse the delete: 1 row of legal_holds outside the delete")
    assert row.replaced_by is None  # nothing to approve again until the hold is lifted
    assert checksums(stage_db) == before
    assert stage_db.scalar("SELECT count(*) FROM legal_holds") == 1


def test_an_approved_snapshot_altered_in_the_bot_database_never_runs(app, stage_db):
    request_id = start_delete(app, slug=SLUG, stage="production", extra=REASON)
    with app.runtime.bot_engine.begin() as conn:  # the counts changed behind the approvers' backs
        conn.execute(
            text("UPDATE delete_requests SET snapshot = snapshot || '{\"public.mcp_servers\": 2}' WHERE id = :id"),
            {"id": request_id},
        )
    before = checksums(stage_db)
    press(app, request_id, "Approve", APPROVER)
    row = wait_state(app, request_id, {"done", "failed", "stale"})
    assert row.state == "stale", (row.state, row.error)
    assert "the approved snapshot does not match its hash (the request was altered)" in row.error
    assert checksums(stage_db) == before


def scoped_backup(bot: BotHarness, request_id: str, server_id: str, slug: str) -> str:
    stage = bot.runtime.stages.get("production")
    backup = bot.runtime.backups.scoped(
        BackupContext(
            stage="production",
            request_id=request_id,
            requested_by=OPERATOR,
            server_id=server_id,
            slug=slug,
            approved_by=(APPROVER,),
        )
    )
    record, _steps, _result = delete_with_backup(stage, backup, slug)
    return record.backup_id


def test_an_approved_restore_runs_exactly_the_backup_the_approvers_saw(app, stage_db):
    first = scoped_backup(app, "req_shared", "srv_big", BIG)
    reply = app.command(f"restore req_shared --stage production {REASON}").text(timeout=60)
    assert "posted in this channel as request" in reply
    [request] = requests_rows(app)
    assert request.options["backup_id"] == first
    assert first in message_text(request_message(app, request.id))

    # Meanwhile a newer backup is filed under the same request id (another server's rows).
    second = scoped_backup(app, "req_shared", "srv_first", SLUG)
    assert second != first
    press(app, request.id, "Approve", APPROVER)
    row = wait_state(app, request.id, {"done", "failed", "stale"})
    assert row.state == "done", row.error
    assert row.result["backup_id"] == first
    assert stage_db.scalar("SELECT count(*) FROM mcp_servers WHERE slug = :s", s=BIG) == 1
    assert stage_db.scalar("SELECT count(*) FROM mcp_servers WHERE id = 'srv_first'") == 0


def test_an_approved_restore_whose_backup_is_gone_goes_stale(app, stage_db):
    first = scoped_backup(app, "req_gone", "srv_big", BIG)
    app.command(f"restore req_gone --stage production {REASON}").text(timeout=60)
    [request] = requests_rows(app)
    with app.runtime.bot_engine.begin() as conn:
        conn.execute(text("UPDATE backups SET state = 'expired' WHERE id = :id"), {"id": first})
    scoped_backup(app, "req_gone", "srv_first", SLUG)
    after = checksums(stage_db)
    press(app, request.id, "Approve", APPROVER)
    row = wait_state(app, request.id, {"done", "failed", "stale"})
    assert row.state == "stale", row.error
    assert f"backup `{first}` of request `req_gone`" in row.error and "no longer available" in row.error
    assert checksums(stage_db) == after
    assert "Stale, nothing was restored" in message_text(wait_update(app, request.id, ": stale"))


def test_a_restore_the_bot_died_in_is_judged_by_the_servers_key_not_its_slug(make_bot, app, stage_db):
    scoped_backup(app, "req_dead", "srv_big", BIG)
    app.command(f"restore req_dead --stage production {REASON}").text(timeout=60)
    [request] = requests_rows(app)
    assert request.server_key["server_id"] == "srv_big"
    # The bot died while restoring (its transaction rolled back): the row says running, nobody holds its
    # runner lock; meanwhile another organisation's new server took the slug.
    left_running(app, request.id)
    app.close()
    stage_db.execute(
        "INSERT INTO mcp_servers (id, organization_id, name, product_platform_or_tool, slug)"
        " VALUES ('srv_new', 'org_2', 'New', 'github', :slug)",
        slug=BIG,
    )
    restarted = make_bot({"dev": stage_db.url, "production": stage_db.url})
    row = wait_state(restarted, request.id, {"done", "failed"})
    assert row.state == "failed", row.result
    assert "the bot stopped while the restore ran" in row.error and "nothing was restored" in row.error
