"""Repeated refusals of one person: every one a row in audit_log, one coalesced line in the channel."""

from __future__ import annotations

from sqlalchemy import text

from tests.conftest import OPERATOR, TEST_SPEC, VIEWER, BotHarness, eventually
from tests.deletion_support import press, start_delete

T0 = 1_900_000_000.0
STRANGER = "USTRANGER1"


def window_over(bot: BotHarness) -> None:
    """What AUDIT_COALESCE_SECONDS of waiting would do, then the scheduled job's run and a delivery."""
    with bot.runtime.bot_engine.begin() as conn:
        conn.execute(text("UPDATE audit_coalesce SET window_started_at = window_started_at - interval '1 hour'"))
    assert bot.runtime.scheduler.run_slot("audit:held-refusals", now=T0)
    bot.runtime.outbox.drain()
    # The outbox worker, nudged by the job, may be delivering the summary while drain() skips its row.
    assert eventually(lambda: bot.runtime.outbox.backlog() == 0)


def posts_about(bot: BotHarness, who: str) -> list[str]:
    return [c.payload["text"] for c in bot.audit_posts() if f"<@{who}>" in c.payload["text"]]


def test_forty_refused_deletes_are_forty_rows_and_two_posts(bot: BotHarness):
    for _ in range(40):
        reply = bot.command(f"delete {TEST_SPEC.big_slug} --stage dev", user=VIEWER)
        assert "only operators may run it" in reply.text()
    rows = bot.wait_audit(40)
    assert len([r for r in rows if (r.actor, r.command, r.outcome) == (VIEWER, "delete", "denied")]) == 40
    assert eventually(lambda: posts_about(bot, VIEWER))
    bot.runtime.outbox.drain()
    [first] = posts_about(bot, VIEWER)  # the first refusal at once; the others are counted
    assert "denied" in first

    window_over(bot)
    first, summary = posts_about(bot, VIEWER)
    assert "denied" in summary and "39 more times" in summary
    # The next refusal after the window is posted at once again, and other people are not held back.
    bot.command(f"delete {TEST_SPEC.big_slug} --stage dev", user=VIEWER).text()
    bot.command("frobnicate", user=OPERATOR).text()
    assert eventually(lambda: len(posts_about(bot, VIEWER)) == 3 and posts_about(bot, OPERATOR))


def test_ten_approve_clicks_by_a_stranger_are_ten_rows_and_two_posts(bot: BotHarness):
    request_id = start_delete(bot, stage="production", extra='--reason "coalesce"')
    for _ in range(10):
        press(bot, request_id, "Approve", STRANGER)
    denied = lambda: [r for r in bot.audit_rows() if (r.actor, r.outcome) == (STRANGER, "denied")]  # noqa: E731
    assert eventually(lambda: len(denied()) == 10)
    assert eventually(lambda: posts_about(bot, STRANGER))
    bot.runtime.outbox.drain()
    assert len(posts_about(bot, STRANGER)) == 1
    window_over(bot)
    assert len(posts_about(bot, STRANGER)) == 2 and "9 more times" in posts_about(bot, STRANGER)[1]


def test_the_summary_carries_the_count_and_none_of_what_was_typed(bot: BotHarness):
    """The refusals it counts may differ, and what they were typed with may be about people: each
    is in its audit_log row, the summary says who, which command, where and how many."""
    for index in range(3):
        typed = f'delete {TEST_SPEC.big_slug} --stage dev --reason "asked by caller {index} on +44 20 7946 0{index}58"'
        assert "only operators may run it" in bot.command(typed, user=VIEWER).text()
    rows = [r for r in bot.wait_audit(3) if r.actor == VIEWER]
    assert sorted(r.args[-5:] for r in rows) == ['0058"', '0158"', '0258"']  # the record keeps each
    assert eventually(lambda: posts_about(bot, VIEWER))
    bot.runtime.outbox.drain()
    window_over(bot)
    first, summary = posts_about(bot, VIEWER)
    assert "asked by caller" in first  # the first refusal is posted as typed (refusals are audited concurrently)
    assert summary == f":no_entry: <@{VIEWER}> `delete`: denied, 2 more times within 60 s of the first"
