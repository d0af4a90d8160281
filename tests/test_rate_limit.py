"""A per-user limit on mutating commands, shared by replicas through the bot database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from bot.botdb import create_bot_engine
from bot.commands import VERBS, Verb, register
from bot.config import parse_database_url
from bot.errors import PermissionDenied, RateLimited
from bot.ratelimit import RateLimiter, RateLimitUnavailable
from bot.service import OPERATIONS, CommandService, Invocation, operation
from handlers.blocks import message, section
from handlers.render import RENDERERS, renders
from tests.conftest import CHANNEL, OPERATOR, VIEWER, dead_database_url, eventually

TEST_VERB = "poke"


@pytest.fixture
def mutating_verb() -> Iterator[Verb]:
    """A mutating verb that exists only for this test (nothing like it ships)."""
    verb = register(Verb(TEST_VERB, "test only: a change that changes nothing", mutating=True))

    @operation(TEST_VERB)
    def run_poke(runtime, request):
        return "poked"

    @renders(TEST_VERB)
    def render_poke(request, result):
        return message(result, [section(result)])

    yield verb
    del VERBS[TEST_VERB], OPERATIONS[TEST_VERB], RENDERERS[TEST_VERB]


def invocation(user: str = OPERATOR) -> Invocation:
    return Invocation(user_id=user, channel_id=CHANNEL, text=f"{TEST_VERB} --stage dev")


def test_the_limit_applies_per_user_and_across_replicas(make_bot, stage_db, mutating_verb):
    first = make_bot({"dev": stage_db.url}, RATE_LIMIT_PER_MINUTE="3", OPERATORS=f"{OPERATOR},UOPERATOR2")
    second = make_bot({"dev": stage_db.url}, RATE_LIMIT_PER_MINUTE="3", OPERATORS=f"{OPERATOR},UOPERATOR2")
    one, two = CommandService(first.runtime), CommandService(second.runtime)
    one.prepare(invocation())
    two.prepare(invocation())
    one.prepare(invocation())
    with pytest.raises(RateLimited) as refused:
        two.prepare(invocation())
    assert "at most 3 changing commands a minute" in refused.value.message
    assert "try again in" in refused.value.message
    # Another operator has a quota of their own.
    two.prepare(invocation("UOPERATOR2"))
    # A refusal for another reason costs nothing, and read-only verbs never count.
    with pytest.raises(PermissionDenied):
        one.prepare(invocation(VIEWER))
    for _ in range(5):
        one.prepare(Invocation(OPERATOR, CHANNEL, "find some-slug --stage dev"))


def test_the_window_slides(make_bot, stage_db):
    harness = make_bot({"dev": stage_db.url})
    now = [datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)]
    limiter = RateLimiter(harness.runtime.bot_engine, 2, clock=lambda: now[0])
    limiter.check(OPERATOR)
    now[0] += timedelta(seconds=30)
    limiter.check(OPERATOR)
    now[0] += timedelta(seconds=20)
    with pytest.raises(RateLimited) as refused:
        limiter.check(OPERATOR)
    assert "try again in 10 s" in refused.value.message
    now[0] += timedelta(seconds=11)  # the first one has aged out
    limiter.check(OPERATOR)
    with pytest.raises(RateLimited):
        limiter.check(OPERATOR)


def test_the_person_gets_a_clear_reply_and_the_refusal_is_audited(make_bot, stage_db, mutating_verb):
    bot = make_bot({"dev": stage_db.url}, RATE_LIMIT_PER_MINUTE="2")
    for _ in range(2):
        assert "poked" in bot.command(f"{TEST_VERB} --stage dev").text()
    refused = bot.command(f"{TEST_VERB} --stage dev")
    assert refused.http.status == 200
    assert refused.ack is not None and refused.ack["response_type"] == "ephemeral"
    assert "slow down: at most 2 changing commands a minute per person" in refused.text()
    rows = bot.wait_audit(3)
    assert [r.outcome for r in rows] == ["ok", "ok", "rate_limited"]


# Real mutating verbs, each with arguments that pass parsing, access and stage checks (so the
# command counts) and an operation that stays cheap: nothing to find, or a small pg_dump.
REAL_MUTATING = {
    "delete": "delete no-such-server --stage dev",
    "backup": "backup --stage dev",
    "restore": "restore 424242 --stage dev",
}


@pytest.mark.parametrize("verb", sorted(REAL_MUTATING))
def test_real_mutating_verbs_are_limited_per_user(make_bot, stage_db, verb):
    assert VERBS[verb].mutating
    other = "UOPERATOR2"
    bot = make_bot({"dev": stage_db.url}, RATE_LIMIT_PER_MINUTE="2", OPERATORS=f"{OPERATOR},{other}")
    command = REAL_MUTATING[verb]
    for _ in range(2):
        accepted = bot.command(command)
        assert accepted.http.status == 200
        assert accepted.ack is None or "slow down" not in str(accepted.ack)
    refused = bot.command(command)
    assert refused.http.status == 200
    assert refused.ack is not None and refused.ack["response_type"] == "ephemeral"
    assert "slow down: at most 2 changing commands a minute per person" in refused.text()
    assert "try again in" in refused.text()
    # Another operator has a quota of their own: the same command is not refused for them.
    theirs = bot.command(command, user=other)
    assert theirs.http.status == 200
    assert theirs.ack is None or "slow down" not in str(theirs.ack)

    def outcomes(actor: str) -> list[str]:
        return [r.outcome for r in bot.audit_rows() if r.command == verb and r.actor == actor]

    # The refusal is audited (a backup also writes a `started` row before its result).
    assert eventually(lambda: "rate_limited" in outcomes(OPERATOR) and outcomes(other), timeout=60)
    assert outcomes(OPERATOR).count("rate_limited") == 1
    assert outcomes(other) and "rate_limited" not in outcomes(other)
    limited = next(r for r in bot.audit_rows() if r.outcome == "rate_limited")
    assert (limited.actor, limited.command) == (OPERATOR, verb)
    assert "slow down: at most 2 changing commands a minute per person" in limited.detail["reason"]


def test_an_unreachable_bot_database_refuses_changes():
    engine = create_bot_engine(parse_database_url("BOT_DATABASE_URL", dead_database_url()))
    with pytest.raises(RateLimitUnavailable) as refused:
        RateLimiter(engine, 5).check(OPERATOR)
    assert "no change can run now" in refused.value.message
    assert "hunter2" not in refused.value.message
    engine.dispose()
