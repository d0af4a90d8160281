"""Signed payloads no listener was written for: Slack still gets a fast ack (or a 4xx when it is no Slack
payload at all), the person a short private answer, the audit a line; nothing is half-done. Real HTTP
endpoint, fake Slack (which checks every reply and call), real bot database.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode

from handlers import render_requests
from tests.approval_support import production_bots, request_prod
from tests.conftest import APPROVER, CHANNEL, OPERATOR, BotHarness, eventually, message_text
from tests.deletion_support import ephemeral_on, requests_rows, wait_state
from tests.test_http_bad_input import assert_clean, send, signed_headers

TEAM = {"id": "T0LOCAL", "domain": "local"}


def interaction(bot: BotHarness, payload: dict[str, Any]) -> tuple[int, str]:
    body = urlencode({"payload": json.dumps(payload)}).encode()
    return send(bot.server.events_url, body, signed_headers(body))


def event_body(bot: BotHarness, body: Any) -> tuple[int, str]:
    raw = json.dumps(body).encode()
    return send(bot.server.events_url, raw, signed_headers(raw, content_type="application/json"))


def head(kind: str, user: str = OPERATOR, **extra: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "team": TEAM,
        "user": {"id": user},
        "api_app_id": "A0LOCAL",
        "trigger_id": f"t.{time.time()}",
    } | extra


def audited(bot: BotHarness, command: str, count: int = 1) -> list[Any]:
    """The audit rows of `command`, once there are `count` of them (refusals are written after the ack)."""

    def rows() -> list[Any]:
        return [r for r in bot.audit_rows() if r.command == command]

    eventually(lambda: len(rows()) >= count, timeout=10)
    return rows()


def test_a_button_no_listener_knows_gets_a_private_answer_and_an_audit_line(bot):
    url = bot.sender.new_response_url()
    element = {"action_id": "from_an_older_version", "value": "{}", "text": {"type": "plain_text", "text": "Go"}}
    assert bot.sender.block_actions(element, user=OPERATOR, channel=CHANNEL, response_url=url).status == 200
    answer = ephemeral_on(bot, url)
    assert answer["response_type"] == "ephemeral" and answer["replace_original"] is False
    assert "not one this version of mcp-ops knows" in message_text(answer)
    [row] = audited(bot, "click")
    assert (row.actor, row.args, row.outcome) == (OPERATOR, "from_an_older_version", "bad_input")


def test_shortcuts_and_other_slash_commands_are_answered_privately_and_audited(bot):
    status, _ = interaction(bot, head("shortcut", callback_id="open_console"))
    assert status == 200
    opened = bot.slack.wait_for_call("views.open")[0].payload
    assert "mcp-ops has no shortcuts" in message_text(opened["view"])
    url = bot.sender.new_response_url()
    status, _ = interaction(
        bot, head("message_action", callback_id="x", channel={"id": CHANNEL}, message={}, response_url=url)
    )
    assert status == 200 and "mcp-ops has no shortcuts" in message_text(ephemeral_on(bot, url))
    body = bot.sender.slash_body("help", user=OPERATOR, channel=CHANNEL, command="/other")
    status, ack = send(bot.server.events_url, body, signed_headers(body))
    assert status == 200
    bot.slack.check_ack(status, ack)
    assert json.loads(ack)["response_type"] == "ephemeral" and "answers `/mcp` only" in ack
    assert len(audited(bot, "shortcut", 2)) == 2 and [r.outcome for r in audited(bot, "/other")] == ["bad_input"]


def test_closed_or_foreign_forms_menus_and_other_events_are_acknowledged(bot):
    modal = {"type": "modal", "id": "V1", "callback_id": "not_ours", "state": {"values": {}}}
    assert interaction(bot, head("view_submission", view=modal)) == (200, "")
    assert interaction(bot, head("view_closed", view=modal | {"callback_id": render_requests.REJECT_MODAL})) == (
        200,
        "",
    )
    status, text = interaction(bot, head("block_suggestion", action_id="pick", block_id="b", value="ab"))
    assert status == 200 and json.loads(text) == {"options": []}
    # An event the app does not act on, or Slack saying it holds events back: a 200, else Slack retries
    # and in the end turns the subscriptions off.
    for event in ({"type": "reaction_added", "user": OPERATOR}, {"type": "message", "text": "hi", "channel": CHANNEL}):
        assert bot.sender.event(event).status == 200
    assert event_body(bot, {"type": "app_rate_limited", "team_id": "T0LOCAL", "minute_rate_limited": 1})[0] == 200
    assert event_body(bot, {"type": "url_verification", "challenge": "c-123"}) == (200, '{"challenge": "c-123"}')
    assert bot.slack.calls_to("response_url") == [] and bot.audit_rows() == []


def test_signed_bodies_that_are_no_slack_payload_get_400(bot):
    broken = [
        head("block_actions"),  # no actions
        head("block_actions", actions="x"),
        head("block_actions", actions=[]),
        head("block_actions", actions=[{"action_id": "page_more", "value": "{}"}]) | {"user": "U1"},  # not an object
        head("view_submission", view={"callback_id": render_requests.REJECT_MODAL}),  # a view without its type
        head("view_closed"),
        {"type": "something_else", "team": TEAM},
        head("block_actions", actions=[{"value": "{}"}]),  # an action without its action_id
        head("block_actions", channel="C1", actions=[{"action_id": "page_more", "value": "{}"}]),
        head("block_actions", response_url=5, actions=[{"action_id": "page_more", "value": "{}"}]),
        head("block_suggestion", action_id=5),
        # The bot answers at the response_url: only one Slack (or the configured Slack API's host) would give.
        head(
            "block_actions", response_url="http://169.254.169.254/latest", actions=[{"action_id": "x", "value": "{}"}]
        ),
    ]
    for payload in broken:
        status, text = interaction(bot, payload)
        assert status == 400, (payload, status, text)
        assert_clean(status, text)
    slash = {"command": "/mcp", "text": "help", "user_id": OPERATOR, "team_id": "T0LOCAL", "channel_id": CHANNEL}
    for fields in (
        slash,  # no response_url
        slash | {"response_url": "https://hooks.slack.com.evil.example/commands/1", "user_id": OPERATOR},
        slash | {"response_url": "http://hooks.slack.com/commands/1"},  # not https
        slash | {"response_url": bot.sender.new_response_url(), "user_id": ""},
    ):
        raw = urlencode(fields).encode()
        assert send(bot.server.events_url, raw, signed_headers(raw))[0] == 400, fields
    for body in (
        {"type": "event_callback", "team_id": "T0LOCAL", "event_id": "Ev1"},
        {"type": "event_callback", "team_id": "T0LOCAL", "event_id": "Ev2", "event": "app_home_opened"},
        {"type": "event_callback", "team_id": "T0LOCAL", "event_id": "Ev3", "event": {"user": OPERATOR}},
    ):
        assert event_body(bot, body)[0] == 400, body
    for raw, content_type in (
        (b"\x01garbage&&==%%", "application/x-www-form-urlencoded"),
        (b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\nb\r\n--x--', "multipart/form-data; boundary=x"),
        (b"a" * (1024 * 1024), "application/x-www-form-urlencoded"),  # exactly the cap: read, but nothing Slack sends
    ):
        assert send(bot.server.events_url, raw, signed_headers(raw, content_type=content_type))[0] == 400
    for method, path, expected in (("GET", "/slack/events", 405), ("PUT", "/slack/events", 405), ("GET", "/x", 404)):
        request = urllib.request.Request(
            bot.server.base_url + path, method=method, data=b"" if method == "PUT" else None
        )
        try:
            status = urllib.request.urlopen(request, timeout=5).status
        except urllib.error.HTTPError as exc:
            status = exc.code
        assert status == expected, (method, path)
    assert bot.slack.calls_to("response_url") == [] and bot.audit_rows() == []


def test_a_request_id_past_the_databases_range_is_unreadable_not_a_database_error(bot):
    for action_id in ("delete_approve", "delete_reject", "delete_confirm"):
        for request_id in (10**30, -1, True, "12abc"):
            url = bot.sender.new_response_url()
            element = {"action_id": action_id, "value": json.dumps({"r": request_id})}
            assert bot.sender.block_actions(element, user=OPERATOR, channel=CHANNEL, response_url=url).status == 200
            text = message_text(ephemeral_on(bot, url))
            assert "that button's data is not readable" in text, (action_id, request_id, text)
    # A readable id of no request: said so, and audited like the rest.
    url = bot.sender.new_response_url()
    element = {"action_id": "delete_approve", "value": json.dumps({"r": 424242})}
    assert bot.sender.block_actions(element, user=OPERATOR, channel=CHANNEL, response_url=url).status == 200
    assert "That request no longer exists." in message_text(ephemeral_on(bot, url))
    rows = audited(bot, "click", 13)
    assert len(rows) == 13
    assert sorted({(r.outcome, r.args) for r in rows if r.outcome == "not_found"}) == [("not_found", "approve #424242")]
    assert {(r.actor, r.outcome) for r in rows if r.outcome != "not_found"} == {(OPERATOR, "bad_input")}
    assert requests_rows(bot) == []


def test_the_reject_form_says_what_is_wrong_in_the_form_and_changes_nothing(make_bot, db, fake_slack):
    prod = production_bots(make_bot, db, fake_slack)()
    request_id = request_prod(prod)
    modal = render_requests.reject_modal(request_id)

    def submit(reason: Any, view: dict[str, Any] = modal) -> dict[str, Any]:
        values = {"reason": {"reason": {"type": "plain_text_input", "value": reason}}}
        reply = prod.sender.view_submission(view, values, user=APPROVER)
        assert reply.status == 200
        return reply.json()

    def error(answer: dict[str, Any]) -> str:
        assert answer["response_action"] == "errors", answer
        return answer["errors"]["reason"]

    assert error(submit("x" * 3000)) == "At most 500 characters, please (this is 3,000)."
    assert "control character (U+0000)" in error(submit("wrong\x00server"))
    assert error(submit("\u200b \u00a0")) == "Say why you reject it."  # only invisible and no-break spaces
    for metadata in ("not json", "[1]", json.dumps({"r": 10**30}), ""):
        assert "This form can't be read" in error(submit("why", modal | {"private_metadata": metadata}))
    gone = modal | {"private_metadata": json.dumps({"r": request_id + 1000})}
    assert error(submit("why", gone)) == "That request no longer exists; close this form."
    assert wait_state(prod, request_id, {"pending"}).state == "pending"
    assert not any(r.outcome == "rejected" for r in prod.audit_rows())
    # A real reason, with a pasted zero-width space, rejects it.
    assert submit("wrong\u200b server") is None
    row = wait_state(prod, request_id, {"rejected"})
    assert row.decision_reason == "wrong server" and [r.id for r in requests_rows(prod)] == [request_id]


def test_an_alert_button_with_an_id_past_the_databases_range_is_unreadable(bot):
    for action_id, value in (("alert_ack", "9" * 30), ("alert_ack", "\u0663"), ("alert_snooze", f"{'9' * 30}:4")):
        url = bot.sender.new_response_url()
        element = {"action_id": action_id, "value": value}
        assert bot.sender.block_actions(element, user=OPERATOR, channel=CHANNEL, response_url=url).status == 200
        text = message_text(ephemeral_on(bot, url))
        assert "that button's data is not readable; look at the alert again" in text, (value, text)
    rows = audited(bot, "click", 3)
    assert len(rows) == 3
    assert {(r.args, r.outcome) for r in rows} == {("alert_ack", "bad_input"), ("alert_snooze", "bad_input")}


def test_an_unreadable_app_home_button_is_answered_in_a_small_form(bot):
    """An App Home click has no response_url and no channel: the answer opens as a form only the clicker sees."""
    for element, expected in (
        ({"action_id": "gone_in_this_version", "value": "{}"}, "not one this version of mcp-ops knows"),
        ({"action_id": "delete_approve", "value": "{garbled"}, "that button's data is not readable"),
    ):
        assert bot.sender.view_actions(element, user=OPERATOR).status == 200
        opened = bot.slack.wait_for_call("views.open", lambda c, e=expected: e in message_text(c.payload["view"]))
        assert opened[0].payload["view"]["type"] == "modal"
    assert {r.args for r in audited(bot, "click", 2)} == {"gone_in_this_version", "delete_approve"}
