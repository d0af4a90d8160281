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
