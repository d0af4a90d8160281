"""The HTTP endpoint's checks, the audit trail and its durable delivery to Slack."""

from __future__ import annotations

import json
import time
import urllib.request

from bot.console.client import sign
from tests.conftest import AUDIT_CHANNEL, BOT_TOKEN, OPERATOR, SIGNING_SECRET, TEST_SPEC, message_text

BIG = TEST_SPEC.big_slug


def test_signatures_bad_missing_and_stale_get_401(bot):
    body = bot.sender.slash_body(f"find {BIG} --stage dev", user=OPERATOR, channel="C1")
    assert bot.sender.post(body).status == 200
    assert bot.sender.post(body, signature="v0=" + "0" * 64).status == 401
    assert bot.sender.post(body, signature=sign("another-secret", body, int(time.time()))).status == 401
    stale = int(time.time()) - 6 * 60
    assert bot.sender.post(body, timestamp=stale, signature=sign(SIGNING_SECRET, body, stale)).status == 401
    request = urllib.request.Request(bot.server.events_url, data=body, method="POST")
    try:
        urllib.request.urlopen(request, timeout=5)
        status = 200
    except urllib.error.HTTPError as exc:
        status = exc.code
    assert status == 401
    # Only the first, valid request reached a listener and was audited.
    rows = bot.wait_audit(1)
    time.sleep(0.3)
    assert len(bot.audit_rows()) == 1
    assert rows[0].command == "find"


def test_every_command_and_refusal_is_audited_and_posted(bot):
    bot.command(f"find {BIG} --stage dev").message()
    bot.command("stats nope --stage dev").message()
    bot.command("frobnicate").message()
    rows = bot.wait_audit(3)
    by_command = {row.command: row for row in rows}
    assert by_command["find"].outcome == "ok"
    assert by_command["find"].stage == "dev"
    assert by_command["find"].actor == OPERATOR
    assert by_command["find"].duration_ms is not None
    assert by_command["stats"].outcome == "not_found"
    assert by_command["frobnicate"].outcome == "bad_input"
    posts = bot.slack.wait_for(
        lambda calls: (p := [c for c in calls if c.payload.get("channel") == AUDIT_CHANNEL]) and len(p) >= 3 and p
    )
    texts = [p.payload["text"] for p in posts]
    assert any(f"`find {BIG}`" in t and "ok" in t for t in texts)
    assert any("frobnicate" in t and "bad_input" in t for t in texts)


def test_audit_survives_a_slack_outage_and_posts_each_entry_once(bot):
    bot.slack.fail("chat.postMessage", status=500, times=6)
    for _ in range(3):
        assert "srv_big" in bot.command(f"find {BIG} --stage dev").text()
    # The outbox keeps retrying; when Slack recovers every entry is delivered exactly once.
    posts = bot.slack.wait_for(
        lambda calls: (p := [c for c in calls if c.method == "chat.postMessage"]) and len(p) >= 3 and p,
        timeout=30,
    )
    time.sleep(1.5)
    delivered = [c for c in bot.slack.calls_to("chat.postMessage") if c.payload.get("channel") == AUDIT_CHANNEL]
    assert len(delivered) == 3 == len(posts)
    failed = [c for c in bot.slack.calls if not c.ok]
    assert len(failed) >= 3
    with bot.runtime.bot_engine.connect() as conn:
        pending = conn.exec_driver_sql("SELECT count(*) FROM outbox WHERE delivered_at IS NULL").scalar()
        retried = conn.exec_driver_sql("SELECT max(attempts) FROM outbox").scalar()
    assert pending == 0
    assert retried >= 2


def test_rate_limited_posts_wait_for_retry_after(bot):
    bot.slack.fail("chat.postMessage", status=429, times=1, retry_after=1)
    bot.command(f"find {BIG} --stage dev").message()
    first_try = bot.slack.wait_for(lambda calls: [c for c in bot.slack.calls if c.method == "chat.postMessage"])
    delivered = bot.slack.wait_for_call("chat.postMessage", timeout=15)[0]
    assert delivered.at - first_try[0].at >= 0.9
    # The outbox records the delivery right after Slack answers: give its commit a moment.
    deadline = time.monotonic() + 5
    while True:
        with bot.runtime.bot_engine.connect() as conn:
            row = conn.exec_driver_sql("SELECT delivered_at, last_error FROM outbox").one()
        if row.delivered_at is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert row.delivered_at is not None and row.last_error is None


def test_nothing_personal_or_secret_reaches_slack_or_audit(bot, stage_db):
    emails = [r.email for r in stage_db.rows("SELECT email FROM mcp_server_user WHERE email IS NOT NULL")]
    bot.command(f"users {BIG} --stage dev --limit 100").message()
    bot.command("find alice.big1@example.com --stage dev").message()
    bot.wait_audit(2)
    time.sleep(0.5)
    slack_traffic = json.dumps([c.payload for c in bot.slack.calls])
    audit = json.dumps([dict(r._mapping) for r in bot.audit_rows()], default=str)
    for blob in (slack_traffic, audit):
        assert not any(email in blob for email in emails)
        assert BOT_TOKEN not in blob
        assert SIGNING_SECRET not in blob
        assert "postgresql://" not in blob


def test_healthz_and_unknown_paths(bot):
    with urllib.request.urlopen(bot.server.base_url + "/healthz", timeout=5) as response:
        assert response.status == 200
    try:
        urllib.request.urlopen(bot.server.base_url + "/nope", timeout=5)
        status = 200
    except urllib.error.HTTPError as exc:
        status = exc.code
    assert status == 404


def test_the_ack_comes_before_the_work(bot, stage_db):
    """A slow query must not hold the HTTP response: the ack is empty and the answer follows."""
    holder = stage_db.engine.connect()
    transaction = holder.begin()
    holder.exec_driver_sql("LOCK TABLE mcp_servers IN ACCESS EXCLUSIVE MODE")
    try:
        reply = bot.command(f"find {BIG} --stage dev")
        assert reply.http.status == 200
        assert reply.http.body == ""
        assert bot.slack.calls_to("response_url") == []
    finally:
        transaction.rollback()
        holder.close()
    assert "srv_big" in message_text(reply.responses()[0])
