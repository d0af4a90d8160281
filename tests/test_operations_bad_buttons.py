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
