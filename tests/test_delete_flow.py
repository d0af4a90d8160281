"""`/mcp impact` and `/mcp delete` through the real HTTP endpoint and the fake Slack API."""

from __future__ import annotations

import json
import threading
import time

import pytest

from bot.pii import EMAIL_RE
from handlers import render_impact
from tests.conftest import APPROVER, OPERATOR, VIEWER, BotHarness, message_text
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
    updates_of,
    wait_state,
    wait_update,
)

OPERATOR2 = "UOPERATOR2"


@pytest.fixture
def app(make_bot, db) -> BotHarness:
    return make_bot({"dev": db.url, "production": db.url}, OPERATORS=f"{OPERATOR},{OPERATOR2}")


def test_impact_reports_counts_warnings_and_discovered_tables(app, db, monkeypatch):
    before = checksums(db)
    body = app.command(f"impact {BIG} --stage dev").text(timeout=30)
    expected = truth(db)
    assert f"*{len(expected['public.mcp_tool_calls']):,}* rows to delete" in body
    for table in ("deploy_logs", "billing.usage_records", "server_notes", "user_prefs", "session_bookmarks"):
        assert table in body
    assert f"{len(expected['public.mcp_server_user']):,} orphaned users" in body
    # On this small data the per-row scans are cheap: listed, not shouted about.
    assert "without an index" in body and "`mcp_tool_calls(mcp_server_user_id)` (" in body
    monkeypatch.setattr(render_impact, "SLOW_KEY_WARN_S", 0.0)
    loud = app.command(f"impact {BIG} --stage dev").text(timeout=30)
    assert "`mcp_tool_calls(mcp_server_user_id)` has no index" in loud
    assert "CREATE INDEX CONCURRENTLY IF NOT EXISTS mcp_tool_calls_mcp_server_user_id_idx" in loud
    protected = app.command(f"impact {BIG} --stage production").text(timeout=30)
    assert "This stage is protected" in protected
    assert checksums(db) == before  # impact only reads


def test_rows_of_other_servers_reached_through_orphaned_users_are_flagged(app, db):
    orphan = sorted(truth(db)["public.mcp_server_user"])[0]
    # A tool call on another server's session that names one of this server's orphaned users.
    db.execute(
        "INSERT INTO mcp_tool_calls (id, mcp_server_id, tool_name, mcp_server_session_id, mcp_server_user_id)"
        " VALUES ('tc_cross', 'srv_s1', 'odd', 'ses_s1_0', :u)",
        u=orphan,
    )
    body = app.command(f"impact {BIG} --stage dev").text(timeout=30)
    assert "*1* row of `mcp_tool_calls` in the delete does not belong to this server" in body
    assert "mcp_tool_calls(mcp_server_id) → mcp_servers(id) ON DELETE NO ACTION points elsewhere" in body
    small = db.scalar("SELECT slug FROM mcp_servers WHERE id = 'srv_s2'")
    assert "do not belong to this server" not in app.command(f"impact {small} --stage dev").text(timeout=30)


def test_bad_slugs_and_stages_answer_clearly(app):
    assert "no server with slug `no-such-server`" in app.command("impact no-such-server --stage dev").text()
    close = app.command("delete acme-analytics --stage dev").text()
    assert "no server with slug `acme-analytics`" in close and "`acme-analytics-mcp`" in close
    assert "unknown stage `nowhere`" in app.command(f"impact {BIG} --stage nowhere").text()
    assert "name a stage" in app.command(f"delete {BIG}").text()
    assert "missing <slug>" in app.command("delete --stage dev").shown()
    assert "not a valid slug" in app.command("delete 'x;drop table' --stage dev").text()
    assert "only operators" in app.command(f"delete {BIG} --stage dev", user=VIEWER).text()
    assert requests_rows(app) == []


def test_protected_stage_needs_a_reason(app, db):
    reply = app.command(f"delete {BIG} --stage production")
    assert '--reason "..."' in reply.text(timeout=30)
    assert requests_rows(app) == []
    assert db.scalar("SELECT count(*) FROM mcp_servers WHERE slug = :s", s=BIG) == 1


def test_only_the_requester_can_confirm_and_the_delete_runs_once(app, db):
    expected = truth(db)
    request_id = start_delete(app)
    payload = request_message(app, request_id)
    delete_button = buttons(payload)["Delete"]
    assert delete_button["style"] == "danger"
    assert (
        delete_button["confirm"]["style"] == "danger" and "can't be undone" in delete_button["confirm"]["text"]["text"]
    )
    assert "Cancel" in buttons(payload)

    for intruder in (OPERATOR2, APPROVER, VIEWER):
        refusal = ephemeral_on(app, press(app, request_id, "Delete", intruder))
        assert refusal["response_type"] == "ephemeral"
        assert f"only <@{OPERATOR}>, who asked for it, can confirm it" in message_text(refusal)
    assert ephemeral_on(app, press(app, request_id, "Cancel", OPERATOR2))["response_type"] == "ephemeral"
    assert wait_state(app, request_id, {"pending"}).state == "pending"
    assert db.scalar("SELECT count(*) FROM mcp_servers WHERE slug = :s", s=BIG) == 1
    denied = [r for r in app.audit_rows() if r.command == "delete" and r.outcome == "denied"]
    assert {r.actor for r in denied} == {OPERATOR2, APPROVER, VIEWER}

    press(app, request_id, "Delete", OPERATOR)
    row = wait_state(app, request_id, {"done", "failed"})
    assert row.state == "done", row.error
    done = wait_update(app, request_id, ": done")
    body = message_text(done)
    assert f"deleted *{sum(len(v) for v in expected.values()):,} rows*" in body
    assert "`mcp_tool_calls`: " + f"{len(expected['public.mcp_tool_calls']):,} rows deleted" in body
    assert not buttons(done)
    assert db.scalar("SELECT count(*) FROM mcp_servers WHERE slug = :s", s=BIG) == 0
    assert db.scalar("SELECT count(*) FROM mcp_tool_calls WHERE mcp_server_id = 'srv_big'") == 0
    app.wait_audit(len(app.audit_rows()) + 0)
    outcomes = audit_outcomes(app)
    for step in ("requested", "confirmed", "running", "done"):
        assert outcomes.count(step) == 1, (step, outcomes)
    late = ephemeral_on(app, press(app, request_id, "Delete", OPERATOR, payload))  # a stale copy of the message
    assert "already done" in message_text(late)


def test_cancel_by_the_requester(app, db):
    request_id = start_delete(app)
    original = request_message(app, request_id)
    press(app, request_id, "Cancel", OPERATOR)
    assert wait_state(app, request_id, {"cancelled"}).decided_by == OPERATOR
    cancelled = wait_update(app, request_id, ": cancelled")
    assert "Cancelled by <@UOPERATOR1>" in message_text(cancelled)
    late = ephemeral_on(app, press(app, request_id, "Delete", OPERATOR, original))
    assert "already cancelled" in message_text(late)
    assert db.scalar("SELECT count(*) FROM mcp_servers WHERE slug = :s", s=BIG) == 1
    assert "cancelled" in audit_outcomes(app)


def test_dry_run_reports_real_counts_and_changes_nothing(app, db):
    before = checksums(db)
    body = app.command(f"delete {BIG} --stage dev --dry-run").text(timeout=60)
    expected = truth(db)
    assert "Dry run" in body and "rolled back" in body
    assert f"*{sum(len(v) for v in expected.values()):,} rows*" in body
    assert f"`deploy_logs`: {len(expected['public.deploy_logs'])} rows deleted" in body
    assert checksums(db) == before
    assert requests_rows(app) == []


def test_blocked_delete_shows_the_rows_and_creates_no_request(app, db):
    db.execute(
        "CREATE TABLE email_holds (email text PRIMARY KEY,"
        " user_id text REFERENCES mcp_server_user(id) ON DELETE RESTRICT);"
        "INSERT INTO email_holds VALUES ('jane.doe@example.com', 'msu_big_2')"
    )
    body = app.command(f"delete {BIG} --stage dev").text(timeout=30)
    assert "can't be deleted" in body and "email_holds" in body and "msu_big_2" in body
    assert "j***@example.com" in body and "jane.doe@example.com" not in body
    assert requests_rows(app) == []


def test_failure_mid_plan_is_reported_and_rolled_back(app, db):
    db.execute(
        """
        CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'sessions are frozen'; END $$;
        CREATE TRIGGER frozen_sessions BEFORE DELETE ON mcp_server_session FOR EACH STATEMENT EXECUTE FUNCTION refuse();
        """
    )
    before = checksums(db)
    request_id = start_delete(app)
    press(app, request_id, "Delete", OPERATOR)
    row = wait_state(app, request_id, {"done", "failed"})
    assert row.state == "failed"
    failed = message_text(wait_update(app, request_id, ": failed"))
    assert "Failed and rolled back, nothing was deleted" in failed and "mcp_server_session" in failed
    assert checksums(db) == before
    assert "failed" in audit_outcomes(app)


def test_long_delete_reports_progress(app, db):
    db.execute(
        """
        CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_sleep(0.4); RETURN NULL; END $$;
        CREATE TRIGGER slow_logs BEFORE DELETE ON deploy_logs FOR EACH STATEMENT EXECUTE FUNCTION slow();
        CREATE TRIGGER slow_steps BEFORE DELETE ON deploy_steps FOR EACH STATEMENT EXECUTE FUNCTION slow();
        """
    )
    app.runtime.deletion.progress_interval_s = 0.0
    app.runtime.deletion.heartbeat_s = 0.2
    request_id = start_delete(app)
    press(app, request_id, "Delete", OPERATOR)
    assert wait_state(app, request_id, {"done", "failed"}).state == "done"
    wait_update(app, request_id, ": done")
    running = [message_text(p) for p in updates_of(app, request_id) if ": running" in p.get("text", "")]
    assert any("Running: deleting from `deploy_logs`" in t and "rows so far" in t and "elapsed" in t for t in running)


def test_no_email_reaches_slack(app, db):
    app.command(f"impact {BIG} --stage dev").text(timeout=30)
    request_id = start_delete(app)
    press(app, request_id, "Delete", OPERATOR)
    wait_state(app, request_id, {"done"})
    wait_update(app, request_id, ": done")
    app.wait_audit(1)
    for call in app.slack.calls:
        dumped = json.dumps(call.payload)
        assert not EMAIL_RE.search(dumped), (call.method, EMAIL_RE.search(dumped))


def test_twenty_concurrent_confirmations_on_two_instances_run_once(make_bot, db):
    first = make_bot({"dev": db.url}, OPERATORS=OPERATOR)
    second = make_bot({"dev": db.url}, OPERATORS=OPERATOR)
    request_id = start_delete(first)
    payload = request_message(first, request_id)
    row = next(r for r in requests_rows(first) if r.id == request_id)
    barrier = threading.Barrier(20)
    statuses: list[int] = []

    def click(index: int) -> None:
        harness = first if index % 2 else second
        barrier.wait()
        reply = harness.sender.block_actions(
            buttons(payload)["Delete"], user=OPERATOR, channel=row.channel, message=payload, message_ts=row.message_ts
        )
        statuses.append(reply.status)

    threads = [threading.Thread(target=click, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 20
    assert wait_state(first, request_id, {"done", "failed"}).state == "done"
    wait_update(first, request_id, ": done")
    time.sleep(1.5)  # give a duplicate every chance to show up
    assert sum(1 for p in updates_of(first, request_id) if ": done" in p.get("text", "")) == 1
    outcomes = audit_outcomes(first)
    assert outcomes.count("running") == 1 and outcomes.count("done") == 1 and outcomes.count("confirmed") == 1


def test_counts_that_changed_after_the_plan_was_posted_stop_the_delete(app, db):
    request_id = start_delete(app)
    db.execute(
        "INSERT INTO mcp_tool_calls (id, mcp_server_id, tool_name, mcp_server_session_id)"
        " VALUES ('tc_late', 'srv_big', 'late', 'ses_big_0')"
    )
    before = checksums(db)
    press(app, request_id, "Delete", OPERATOR)
    assert wait_state(app, request_id, {"done", "failed"}).state == "failed"
    failed = message_text(wait_update(app, request_id, ": failed"))
    assert "changed since the plan was confirmed" in failed and "public.mcp_tool_calls" in failed
    assert checksums(db) == before
