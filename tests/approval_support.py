"""Shared by the two-person approval tests: a bot whose `production` stage is protected, with approvers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import APPROVER, APPROVER2, OPERATOR, BotHarness, message_text
from tests.deletion_support import ephemeral_on, press, start_delete

GROUP = "SAPPROVERS"
GROUP_MEMBER = "UGROUPMEM1"
REASON = '--reason "customer asked to be forgotten"'


def production_bots(make_bot: Callable[..., BotHarness], db: Any, fake_slack: Any) -> Callable[..., BotHarness]:
    """`make(**env)`: a bot with stages dev and production (protected) on `db`, approvers including a user group."""
    fake_slack.usergroups[GROUP] = [GROUP_MEMBER]

    def make(**env: str) -> BotHarness:
        settings = {
            "OPERATORS": OPERATOR,
            "APPROVERS": f"{APPROVER},{APPROVER2},{OPERATOR},{GROUP}",
            **env,
        }
        return make_bot({"dev": db.url, "production": db.url}, **settings)

    return make


def request_prod(bot: BotHarness) -> int:
    return start_delete(bot, stage="production", extra=REASON)


def refusal_text(bot: BotHarness, request_id: int, label: str, user: str, payload: dict[str, Any] | None = None) -> str:
    reply = ephemeral_on(bot, press(bot, request_id, label, user, payload))
    assert reply["response_type"] == "ephemeral"
    return message_text(reply)


@pytest.fixture
def make_prod(make_bot: Callable[..., BotHarness], db: Any, fake_slack: Any) -> Callable[..., BotHarness]:
    """`make_prod(**env)`: production_bots as a fixture, for the approval test files."""
    return production_bots(make_bot, db, fake_slack)


@pytest.fixture
def prod(make_prod: Callable[..., BotHarness]) -> BotHarness:
    return make_prod()
