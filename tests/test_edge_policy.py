"""Policy at the HTTP edge: only the configured workspaces are served, and a request Slack
retries runs once, whichever replica each delivery reaches."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, urlencode

from sqlalchemy import text

from bot.console.client import SlackRequestSender
from tests.conftest import APPROVER, CHANNEL, OPERATOR, SIGNING_SECRET, TEST_SPEC, StageDb, eventually, message_text
from tests.deletion_support import (
    audit_outcomes,
    buttons,
    ephemeral_on,
    request_message,
    requests_rows,
    start_delete,
    wait_state,
)


def sender_for(bot, team_id: str) -> SlackRequestSender:
    return SlackRequestSender(
        bot.server.events_url,
        SIGNING_SECRET,
        response_base=bot.slack.base_url,
        team_id=team_id,
        on_reply=bot.slack.check_ack,
    )


def test_requests_from_another_workspace_get_403_and_an_audit_line(make_bot, stage_db: StageDb):
    bot = make_bot({"dev": stage_db.url}, SLACK_TEAM_ID="T0LOCAL,E0ORG1")
    assert "/mcp find" in bot.command("help").text()  # the sender's own workspace, T0LOCAL
    # Slack's checks of the endpoint carry no workspace: answered (signed, like everything else).
    check = {"token": "legacy-verification-token-unused", "challenge": "c-123", "type": "url_verification"}
    challenge = bot.sender.post(json.dumps(check).encode(), content_type="application/json")
    assert (challenge.status, challenge.json()) == (200, {"challenge": "c-123"})
    assert (
        bot.sender.post(urlencode({"ssl_check": "1", "token": "legacy-verification-token-unused"}).encode()).status
        == 200
    )

    foreign = sender_for(bot, "TOTHER001")
    url = foreign.new_response_url()
    replies = [
        foreign.slash(f"find {TEST_SPEC.big_slug} --stage dev", user=OPERATOR, channel=CHANNEL, response_url=url),
        foreign.block_actions({"action_id": "page_more", "value": "{}"}, user=OPERATOR, channel=CHANNEL),
        foreign.event({"type": "app_home_opened", "user": OPERATOR, "tab": "home"}),
    ]
    assert [r.status for r in replies] == [403, 403, 403]

    # A workspace of an allowed Enterprise Grid organisation is served.
    member = sender_for(bot, "TMEMBER01")
    fields = dict(parse_qsl(member.slash_body("help", user=OPERATOR, channel=CHANNEL).decode()))
    assert member.post(urlencode({**fields, "enterprise_id": "E0ORG1"}).encode()).status == 200

    assert eventually(lambda: len([r for r in bot.audit_rows() if r.command == "request"]) == 3, timeout=15)
    rows = [r for r in bot.audit_rows() if r.command == "request"]
    assert {r.outcome for r in rows} == {"denied"}
    assert {r.detail["team_id"] for r in rows} == {"TOTHER001"}
    assert eventually(lambda: any("request" in c.payload.get("text", "") for c in bot.audit_posts()))
    # Nothing ran for the other workspace: no answer, no find audited.
    assert not [c for c in bot.slack.calls if c.path.endswith(url.rsplit("/", 1)[1])]
    assert not [r for r in bot.audit_rows() if r.command == "find"]


def test_a_retried_delete_command_runs_once_across_two_replicas(make_bot, stage_db: StageDb):
    first = make_bot({"dev": stage_db.url})
    second = make_bot({"dev": stage_db.url})  # another replica on the same bot database
    sender = first.sender
    url = sender.new_response_url()
    command = f"delete {TEST_SPEC.big_slug} --stage dev"
    body = sender.slash_body(command, user=OPERATOR, channel=CHANNEL, response_url=url)
    assert first.sender.post(body).status == 200
    assert eventually(lambda: requests_rows(first), timeout=30)
    # Slack believed the first delivery timed out: the same payload again, to the other replica.
    retry = second.sender.post(body, headers={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
    assert retry.status == 200 and not retry.body.strip()
    again = first.sender.post(body, headers={"X-Slack-Retry-Num": "2", "X-Slack-Retry-Reason": "http_timeout"})
    assert again.status == 200

    plans = eventually(
        lambda: [c for c in first.slack.calls_to("chat.postMessage") if c.payload.get("channel") == CHANNEL], 20
    )
    assert len(requests_rows(first)) == 1
    # The one request's plan was posted once; the command was audited (and rate-counted) once.
    path = url.split(first.slack.base_url, 1)[1]
    first.slack.wait_for_call("response_url", lambda c: c.path == path, 20)
    assert len(plans) == 1
    assert [r.outcome for r in first.audit_rows() if r.command == "delete"] == ["requested", "ok"]
    with first.runtime.bot_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM rate_limit_hits")).scalar() == 1


def retried(bot, body: bytes, num: str = "1", content_type: str = "application/x-www-form-urlencoded"):
    headers = {"X-Slack-Retry-Num": num, "X-Slack-Retry-Reason": "http_timeout"}
    return bot.sender.post(body, content_type=content_type, headers=headers)


def settled(*bots) -> bool:
    return eventually(lambda: all(b.runtime.in_flight == 0 for b in bots), timeout=30)


def test_a_retried_approve_click_votes_once_and_answers_nothing(make_bot, stage_db: StageDb):
    first = make_bot({"dev": stage_db.url, "production": stage_db.url})
    second = make_bot({"dev": stage_db.url, "production": stage_db.url})  # another replica, same bot database
    request_id = start_delete(first, stage="production", extra='--reason "retried click"')
    message = request_message(first, request_id)
    row = next(r for r in requests_rows(first) if r.id == request_id)
    url = first.sender.new_response_url()
    payload = {
        **first.sender._interaction_head(APPROVER),
        "channel": {"id": row.channel, "name": "local"},
        "container": {"type": "message", "message_ts": row.message_ts, "channel_id": row.channel},
        "message": message,
        "response_url": url,
        "actions": [{**buttons(message)["Approve"], "block_id": "actions", "action_ts": "1.0"}],
    }
    body = urlencode({"payload": json.dumps(payload)}).encode()
    assert first.sender.post(body).status == 200
    assert wait_state(first, request_id, {"done", "failed"}).state == "done"
    # Slack believed the click timed out: the same payload again, to either replica.
    for bot, num in ((second, "1"), (first, "2")):
        reply = retried(bot, body, num)
        assert reply.status == 200 and not reply.body.strip()
    assert settled(first, second)
    path = url.split(first.slack.base_url, 1)[1]
    assert [c for c in first.slack.calls if c.path == path] == []  # no "already done" for a click made once
    assert audit_outcomes(first).count("approved") == 1

    # The same click sent again without the header is not a retry: it is answered as a second click.
    assert first.sender.post(body).status == 200
    assert "already done" in message_text(ephemeral_on(first, url))


def test_a_retried_event_is_handled_once(make_bot, stage_db: StageDb):
    bot = make_bot({"dev": stage_db.url}, HOME_PUBLISH_INTERVAL_SECONDS="3600")
    event = {
        "token": "legacy-verification-token-unused",
        "team_id": "T0LOCAL",
        "api_app_id": "A0LOCAL",
        "type": "event_callback",
        "event_id": "Ev0RETRIED1",
        "event_time": 1,
        "event": {"type": "app_home_opened", "user": OPERATOR, "tab": "home", "event_ts": "1.0"},
    }
    body = json.dumps(event).encode()
    assert bot.sender.post(body, content_type="application/json").status == 200
    assert len(bot.slack.calls_to("views.publish")) == 1
    reply = retried(bot, body, content_type="application/json")
    assert reply.status == 200 and not reply.body.strip()
    assert settled(bot)
    # Handled again, it would have queued the tab for the person's next publish slot.
    assert bot.runtime.outbox.backlog() == 0
    assert len(bot.slack.calls_to("views.publish")) == 1
