"""The payload checker the fake Slack runs on every call: each rule refuses what Slack refuses."""

from __future__ import annotations

from typing import Any

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.console.localslack import LocalSlack
from bot.console.payloads import check
from bot.slacktext import actions, button, confirm_dialog, message, section, view

TEXT = {"type": "mrkdwn", "text": "x"}


def blocks_message(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"channel": "C1", "text": "fallback", "blocks": list(blocks)}


def sec(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def btn(**extra: Any) -> dict[str, Any]:
    return {"type": "button", "text": {"type": "plain_text", "text": "Go"}, "action_id": "go", **extra}


REFUSED = [
    ("text past 40,000", {"channel": "C1", "text": "x" * 40_001}, "msg_too_long"),
    ("text past the 4,000 Slack asks for", {"channel": "C1", "text": "x" * 4_001}, "msg_too_long"),
    ("nothing to post", {"channel": "C1"}, "no_text"),
    ("51 blocks", blocks_message(*[sec("x")] * 51), "invalid_blocks"),
    ("blocks text past ~12,000", blocks_message(*[sec("x" * 2_900)] * 5), "msg_blocks_too_long"),
    ("section text past 3,000", blocks_message(sec("x" * 3_001)), "invalid_blocks"),
    ("an empty section text", blocks_message(sec("")), "invalid_blocks"),
    ("11 fields", blocks_message({"type": "section", "fields": [TEXT] * 11}), "invalid_blocks"),
    (
        "a field past 2,000",
        blocks_message({"type": "section", "fields": [{"type": "mrkdwn", "text": "x" * 2_001}]}),
        "invalid_blocks",
    ),
    (
        "a header past 150",
        blocks_message({"type": "header", "text": {"type": "plain_text", "text": "x" * 151}}),
        "invalid_blocks",
    ),
    ("a mrkdwn header", blocks_message({"type": "header", "text": TEXT}), "invalid_blocks"),
    ("11 context elements", blocks_message({"type": "context", "elements": [TEXT] * 11}), "invalid_blocks"),
    ("an empty context", blocks_message({"type": "context", "elements": []}), "invalid_blocks"),
    (
        "button text past 75",
        blocks_message({"type": "actions", "elements": [btn(text={"type": "plain_text", "text": "x" * 76})]}),
        "invalid_blocks",
    ),
    (
        "action_id past 255",
        blocks_message({"type": "actions", "elements": [btn(action_id="a" * 256)]}),
        "invalid_blocks",
    ),
    (
        "button value past 2,000",
        blocks_message({"type": "actions", "elements": [btn(value="v" * 2_001)]}),
        "invalid_blocks",
    ),
    (
        "a mrkdwn confirm dialog",
        blocks_message(
            {
                "type": "actions",
                "elements": [
                    btn(
                        confirm={
                            "title": {"type": "plain_text", "text": "t"},
                            "text": {"type": "mrkdwn", "text": "`x`"},
                            "confirm": {"type": "plain_text", "text": "ok"},
                            "deny": {"type": "plain_text", "text": "no"},
                        }
                    )
                ],
            }
        ),
        "invalid_blocks",
    ),
    ("an unknown block type", blocks_message({"type": "sektion", "text": TEXT}), "invalid_blocks"),
    ("an unknown attribute", blocks_message({**sec("x"), "colour": "red"}), "invalid_blocks"),
    ("a live @channel", {"channel": "C1", "text": "hi <!channel>"}, "unexpected_markup"),
    ("a disguised link", blocks_message(sec("<https://evil.example|Approve here>")), "unexpected_markup"),
]


@pytest.mark.parametrize(("what", "payload", "error"), REFUSED, ids=[r[0] for r in REFUSED])
def test_each_limit_is_refused_with_slacks_error(what, payload, error):
    rejection = check("chat.postMessage", payload)
    assert rejection is not None, what
    assert rejection.error == error, rejection


def test_what_the_builders_make_is_accepted():
    dialog = confirm_dialog("Delete for good?", "Delete `acme` on dev: 1 row.", "Delete", danger=True)
    msg = message("ok", [section("<!here> & text"), actions(button("Delete", "go", {"r": 1}, confirm=dialog))])
    assert check("response_url", msg) is None
    assert check("chat.postMessage", {"channel": "C1", **msg}) is None
    assert check("views.publish", {"user_id": "U1", "view": view("home", [section("x")] * 120)}) is None
    assert (
        check("chat.postMessage", {"channel": "C1", "text": "<@UOPERATOR1> <https://slack.com/archives/C1/p1|msg>"})
        is None
    )


def test_views_and_view_acks_are_checked():
    too_many = {"type": "modal", "title": {"type": "plain_text", "text": "t"}, "blocks": [sec("x")] * 101}
    assert check("views.open", {"trigger_id": "t", "view": too_many}).error == "invalid_arguments"
    long_title = {"type": "modal", "title": {"type": "plain_text", "text": "x" * 25}, "blocks": [sec("x")]}
    assert check("views.open", {"trigger_id": "t", "view": long_title}) is not None
    assert check("ack", {"response_action": "errors", "errors": {"reason": "Say why."}}) is None
    assert check("ack", {"response_action": "errors"}) is not None


def test_the_fake_slack_answers_like_slack_and_keeps_what_it_refused():
    slack = LocalSlack().start()
    try:
        client = WebClient(token="xoxb-test", base_url=slack.api_url)
        with pytest.raises(SlackApiError) as refused:
            client.chat_postMessage(channel="C1", text="x", blocks=[sec("x" * 3_001)])
        assert refused.value.response["error"] == "invalid_blocks"
        assert client.chat_postMessage(channel="C1", text="fine")["ok"]
        assert [c.error for c in slack.rejections] == ["invalid_blocks"]
        assert "3000 characters" in slack.rejections[0].detail
        slack.check_ack(200, '{"text": "ok <!here>", "response_type": "ephemeral"}')
        slack.check_ack(200, "")  # an empty ack is what most listeners send
        assert [c.method for c in slack.rejections] == ["chat.postMessage", "ack"]
    finally:
        slack.stop()


def test_files_go_through_the_upload_flow_and_keep_their_content():
    slack = LocalSlack().start()
    try:
        client = WebClient(token="xoxb-test", base_url=slack.api_url)
        posted = client.chat_postMessage(channel="C1", text="report below")
        client.files_upload_v2(
            channel="C1", thread_ts=posted["ts"], filename="report.txt", title="Report", content=b"line 1\n"
        )
        [shared] = slack.shared_files("C1")
        assert (shared.filename, shared.title, shared.text, shared.thread_ts) == (
            "report.txt",
            "Report",
            "line 1\n",
            posted["ts"],
        )
        assert not slack.rejections
    finally:
        slack.stop()
