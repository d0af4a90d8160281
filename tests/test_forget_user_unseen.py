"""`/mcp forget-user` through the real HTTP endpoint on cases nobody planned for: a RESTRICT reference (a legal
hold) beside a SET NULL one, a double click on Approve, an unreachable stage in `--all-stages`, a trigger that
copies the email where the check after the commit finds it, and an identifier typed with a trailing newline."""

from __future__ import annotations

import threading
from collections.abc import Callable

from sqlalchemy import text

from tests.conftest import APPROVER, OPERATOR, BotHarness, StageDb, message_text
from tests.deletion_support import (
    checksums,
    ephemeral_on,
    press,
    request_message,
    requests_rows,
    wait_state,
    wait_update,
)
from tests.test_bad_input_and_stages import dead_database_url
from tests.test_forget_user import assert_nowhere, log_lines  # noqa: F401 - the fixture

ROB = """
INSERT INTO mcp_server_user (id, distinct_id, email) VALUES ('msu_rob', 'did_rob', 'Rob.Stone@Example.net');
INSERT INTO mcp_server_session (mcp_server_session_id, mcp_server_slug, connection_date, mcp_server_user_id)
 SELECT 'ses_rob', slug, current_date, 'msu_rob' FROM mcp_servers WHERE id = 'srv_s1';
INSERT INTO support_requests (id, email, organization_id) VALUES ('sr_rob', 'rob.stone@example.net', 'org_1');
"""
EMAIL = "rob.stone@example.net"


def start(bot: BotHarness, command: str) -> int:
    before = {r.id for r in requests_rows(bot)}
    body = bot.command(command).text(timeout=60)
    assert "is posted in this channel as request" in body, body
    [new] = [r.id for r in requests_rows(bot) if r.id not in before]
    return new


def test_a_legal_hold_blocks_the_erasure_before_anyone_is_asked(make_bot, stage_db: StageDb, log_lines):  # noqa: F811
    stage_db.execute(
        ROB
        + """
        CREATE TABLE legal_holds (id text PRIMARY KEY, user_id text NOT NULL REFERENCES mcp_server_user(id)
            ON DELETE RESTRICT, note text);
        CREATE TABLE referrals (id text PRIMARY KEY, user_id text REFERENCES mcp_server_user(id) ON DELETE SET NULL);
        INSERT INTO legal_holds VALUES ('hold_2026_7', 'msu_rob', 'litigation');
        INSERT INTO referrals VALUES ('ref_1', 'msu_rob');
        """
    )
    bot = make_bot({"dev": stage_db.url})
    before = checksums(stage_db)
    for command in (f"forget-user {EMAIL} --stage dev", f"forget-user {EMAIL} --stage dev --dry-run"):
        body = bot.command(command).text(timeout=60)
        assert "the database would refuse" in body, body
        assert "1 row of legal_holds" in body and "RESTRICT" in body, body
        assert "`hold_2026_7`" in body, body  # the blocking row, by its key: what a DBA has to look at
    every = bot.command(f"forget-user {EMAIL} --all-stages").text(timeout=60)
    assert "*dev*: :warning: the database would refuse this erasure on dev: 1 row of legal_holds" in every, every
    assert requests_rows(bot) == []
    assert checksums(stage_db) == before
    assert_nowhere(bot, log_lines, EMAIL, "msu_rob", "did_rob")


def test_a_double_click_on_approve_erases_once(make_bot, stage_db: StageDb, make_stage_db: Callable[[], StageDb]):
    stage_db.execute(ROB)
    bot = make_bot({"dev": make_stage_db().url, "production": stage_db.url})
    request_id = start(bot, f'forget-user {EMAIL} --stage production --reason "ticket 9"')
    payload = request_message(bot, request_id)
    urls: list[str] = []
    clicks = [threading.Thread(target=lambda: urls.append(press(bot, request_id, "Approve", APPROVER, payload)))]
    clicks.append(threading.Thread(target=lambda: urls.append(press(bot, request_id, "Approve", APPROVER, payload))))
    for click in clicks:
        click.start()
    for click in clicks:
        click.join()
    row = wait_state(bot, request_id, {"done", "failed", "stale"}, timeout=60)
    assert row.state == "done", row.error
    wait_update(bot, request_id, ": done")
    with bot.runtime.bot_engine.connect() as conn:
        ledger = conn.execute(text("SELECT state, approved_by FROM erasures")).all()
    assert [(r.state, r.approved_by) for r in ledger] == [("done", [APPROVER])]
    assert stage_db.scalar("SELECT count(*) FROM mcp_server_user WHERE id = 'msu_rob'") == 0
    done = [r for r in bot.audit_rows() if r.command == "forget-user" and r.outcome == "done" and "backups" in r.detail]
    assert len(done) == 1, [(r.actor, r.args, r.outcome, r.ts if hasattr(r, "ts") else 0) for r in done]
    # A third click, on the old copy of the message, changes nothing and says why.
    late = message_text(ephemeral_on(bot, press(bot, request_id, "Approve", APPROVER, payload)))
    assert "done" in late or "already" in late, late


def test_every_stage_with_one_unreachable(make_bot, stage_db: StageDb, make_stage_db, log_lines):  # noqa: F811
    stage_db.execute(ROB)
    bot = make_bot({"dev": stage_db.url, "staging": dead_database_url(), "production": make_stage_db().url})
    body = bot.command(f"forget-user '{EMAIL}\n' --all-stages").text(timeout=90)
    assert "*staging*: :warning: stage staging is unreachable (connection refused)" in body, body
    assert "*production* (protected): nothing matches." in body and "*dev*: " in body, body
    assert "on 1 of 3 stages" in body, body
    assert_nowhere(bot, log_lines, EMAIL)


def test_the_receipt_says_what_a_trigger_left_behind(make_bot, stage_db: StageDb, log_lines):  # noqa: F811
    stage_db.execute(
        ROB
        + """
        CREATE TABLE user_audit (id serial PRIMARY KEY, email text);
        CREATE FUNCTION audit_user() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO user_audit (email) VALUES (OLD.email); RETURN OLD; END $$;
        CREATE TRIGGER user_audit AFTER DELETE ON mcp_server_user FOR EACH ROW EXECUTE FUNCTION audit_user();
        """
    )
    bot = make_bot({"dev": stage_db.url}, ERASURE_COLUMNS="support_requests.email,user_audit.email")
    request_id = start(bot, f"forget-user {EMAIL.upper()} --stage dev")
    pending = message_text(request_message(bot, request_id))
    assert "`user_audit` on `mcp_server_user`" in pending and "fires during the erasure" in pending, pending
    press(bot, request_id, "Forget", OPERATOR)
    row = wait_state(bot, request_id, {"done", "failed", "stale"}, timeout=60)
    receipt = message_text(wait_update(bot, request_id, ": done"))
    assert ":warning: The check after the commit found: " in receipt, receipt
    assert "user_audit: 1 row still holds the email" in receipt, receipt
    assert row.state == "done" and row.result["verified"] is False, row.error
    with bot.runtime.bot_engine.connect() as conn:
        verified = conn.execute(text("SELECT verified FROM erasures")).scalar_one()
    assert "user_audit: 1 row still holds the email" in verified
    assert EMAIL not in receipt.lower()
    assert_nowhere(bot, log_lines, EMAIL)


def test_a_trigger_refusing_midway_fails_the_request_naming_nobody(make_bot, stage_db: StageDb, log_lines):  # noqa: F811
    from tests.test_erasure_unseen import FROZEN

    stage_db.execute(FROZEN)
    before = checksums(stage_db)
    bot = make_bot({"dev": stage_db.url})
    request_id = start(bot, "forget-user msu_fay --stage dev")
    press(bot, request_id, "Forget", OPERATOR)
    row = wait_state(bot, request_id, {"done", "failed", "stale"}, timeout=60)
    assert row.state == "failed" and "a trigger or function refused" in (row.error or ""), (row.state, row.error)
    failed = message_text(wait_update(bot, request_id, ": failed"))
    assert "tc_fay" in failed and "is frozen" in failed, failed
    assert checksums(stage_db) == before
    with bot.runtime.bot_engine.connect() as conn:
        assert conn.execute(text("SELECT state FROM erasures")).scalars().all() == ["failed"]
    bot.wait_audit(1)
    assert_nowhere(bot, log_lines, "msu_fay", "did_fay", "fay@example.com")
