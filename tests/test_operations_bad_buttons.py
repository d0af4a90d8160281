"""Operation buttons whose value is not one the bot made (an old message, a crafted payload): every click gets
a short ephemeral answer and an audit line, nothing is asked, nothing reaches the stage. Signed HTTP, fake Slack.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import CHANNEL, OPERATOR, BotHarness, StageDb, eventually, message_text
from tests.deletion_support import ephemeral_on, requests_rows


@pytest.fixture
def bot(make_bot, stage_db: StageDb) -> BotHarness:
    return make_bot({"dev": stage_db.url, "production": stage_db.url})


def press_raw(bot: BotHarness, action_id: str, value: Any) -> str:
    element = {"type": "button", "action_id": action_id, "text": {"type": "plain_text", "text": "x"}}
    element["value"] = value if isinstance(value, str) else json.dumps(value)
    url = bot.sender.new_response_url()
    assert bot.sender.block_actions(element, user=OPERATOR, channel=CHANNEL, response_url=url).status == 200
    return message_text(ephemeral_on(bot, url))


CRAFTED = [
    ("cancel", {}),
    ("cancel", {"pid": "not a number", "backend_start": "2024-01-01T00:00:00+00:00", "expect": "active"}),
    ("terminate", {"pid": 4242, "backend_start": "yesterday", "expect": "active", "query_start": None}),
    ("terminate", {"pid": [1], "backend_start": None}),
    ("terminate", {"pid": 4242, "backend_start": "garbage", "expect": "idle in transaction", "xact_start": "x"}),
    ("create-index", {"schema": "public", "table": "mcp_tool_calls"}),
    ("create-index", {"schema": "public", "table": "mcp_tool_calls", "columns": [7]}),
    ("drop-index", {"schema": "public", "index": "x", "definition": "d", "reason": "bored"}),
    ("drop-index", {"schema": 3}),
    ("no-such-kind", {"pid": 1}),
]


def test_a_button_value_the_bot_did_not_make_gets_a_short_answer(bot):
    for kind, target in CRAFTED:
        answer = press_raw(bot, f"op:{kind}:0", {"k": kind, "s": "dev", "t": target})
        assert answer and "Traceback" not in answer and "unexpected" not in answer, (kind, target, answer)
        assert len(answer) < 300, answer
        assert any(r.command == kind for r in bot.audit_rows()), (kind, [r.command for r in bot.audit_rows()])
    for value in ("{not json", json.dumps({"k": "cancel"}), json.dumps([1, 2])):
        answer = press_raw(bot, "op:cancel:0", value)
        assert "that button's data is not readable" in answer, answer
    assert requests_rows(bot) == []

    # The unreadable ones are refusals too: audited, with the button they named.
    def clicks() -> list[Any]:
        return [r for r in bot.audit_rows() if r.command == "click"]

    assert eventually(lambda: len(clicks()) == 3), clicks()
    assert {(r.args, r.outcome) for r in clicks()} == {("op:cancel:0", "bad_input")}


def test_every_button_under_an_alert_that_no_longer_exists_is_answered_and_audited(bot):
    """An old alert message (its row pruned) or a crafted one: each button gets a short private answer and an
    audit line; Acknowledge and Snooze, which name the alert, are refused as `not_found`."""
    gone = 424242
    block = f"alert:{gone}"

    def press(element: dict[str, Any]) -> str:
        element = {"type": "button", "text": {"type": "plain_text", "text": "x"}} | element
        url = bot.sender.new_response_url()
        reply = bot.sender.block_actions(element, user=OPERATOR, channel=CHANNEL, block_id=block, response_url=url)
        assert reply.status == 200
        answer = ephemeral_on(bot, url)
        assert answer["response_type"] == "ephemeral", answer
        return message_text(answer)

    assert "This alert no longer exists." in press({"action_id": "alert_ack", "value": str(gone)})
    snooze = {"type": "static_select", "action_id": "alert_snooze", "selected_option": {"value": f"{gone}:4"}}
    assert "This alert no longer exists." in press(snooze)
    explain = press({"action_id": "explain_query", "value": json.dumps({"t": "explain 987654321 --stage dev"})})
    assert "987654321" in explain and "Traceback" not in explain, explain
    backend = {"pid": 2**31 - 7, "backend_start": "2024-01-01T00:00:00+00:00", "expect": "active"}
    for kind, target in (
        ("cancel", backend | {"query_start": "2024-01-01T00:00:00+00:00"}),
        ("terminate", backend | {"query_start": "2024-01-01T00:00:00+00:00"}),
        ("create-index", {"schema": "public", "table": "no_such_table", "columns": ["x"]}),
        ("drop-index", {"schema": "public", "index": "no_such_index", "definition": "d", "reason": "unused"}),
    ):
        answer = press({"action_id": f"op:{kind}:0", "value": json.dumps({"k": kind, "s": "dev", "t": target})})
        assert answer and len(answer) < 300 and "Traceback" not in answer, (kind, answer)

    def rows() -> list[Any]:
        return bot.audit_rows()

    expected = {"click", "explain", "cancel", "terminate", "create-index", "drop-index"}
    assert eventually(lambda: expected <= {r.command for r in rows()} and len(rows()) >= 7, timeout=10), rows()
    clicks = {(r.actor, r.args, r.outcome) for r in rows() if r.command == "click"}
    assert clicks == {
        (OPERATOR, f"acknowledge alert #{gone}", "not_found"),
        (OPERATOR, f"snooze alert #{gone}", "not_found"),
    }
    assert requests_rows(bot) == []
