"""Slack answering 429 with Retry-After, or 500 for a while: audit posts arrive later, each exactly once."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import text

from tests.conftest import AUDIT_CHANNEL, eventually


def audit_texts(slack) -> list[str]:
    return [c.payload["text"] for c in slack.calls_to("chat.postMessage") if c.payload.get("channel") == AUDIT_CHANNEL]


def failed_posts(slack) -> int:
    return len([c for c in slack.calls if c.method == "chat.postMessage" and not c.ok])


def queue_audited_commands(bot, count: int) -> None:
    """Run `count` commands with the outbox worker stopped, so their posts wait in the table."""
    bot.runtime.outbox_worker.stop(flush=False)
    for index in range(count):
        bot.command(f"find missing-{index} --stage dev").text()
    assert len(bot.wait_audit(count)) == count
    assert eventually(lambda: bot.runtime.outbox.backlog() == count)


def make_due(bot) -> None:
    """Let the back-off pass: what a few seconds or minutes would do."""
    with bot.runtime.bot_engine.begin() as conn:
        conn.execute(text("UPDATE outbox SET next_attempt_at = now() WHERE delivered_at IS NULL"))
        conn.execute(text("UPDATE outbox_holds SET until = now() - interval '1 second'"))


def test_a_429_holds_back_every_queued_post_for_retry_after_then_each_is_delivered_once(bot):
    queue_audited_commands(bot, 3)
    bot.slack.fail("chat.postMessage", status=429, times=1, retry_after=30)
    first = bot.runtime.outbox.drain()
    assert (first.delivered, first.postponed) == (0, True)
    # Retry-After applies to the method on that channel, not just to the row that met it: nothing else is tried.
    again = bot.runtime.outbox.drain()
    assert (again.delivered, failed_posts(bot.slack), len(audit_texts(bot.slack))) == (0, 1, 0)
    with bot.runtime.bot_engine.connect() as conn:
        waits = conn.execute(
            text("SELECT until - now() FROM outbox_holds WHERE method = 'chat.postMessage' AND channel = :c"),
            {"c": AUDIT_CHANNEL},
        ).scalar_one()
        attempts = sorted(conn.execute(text("SELECT attempts FROM outbox ORDER BY id")).scalars())
    assert waits.total_seconds() > 20  # Retry-After: 30 was honoured for all three
    assert attempts == [0, 0, 1]  # and only the one call that met the 429 counts as an attempt

    make_due(bot)
    assert bot.runtime.outbox.drain().delivered == 3
    texts = audit_texts(bot.slack)
    assert len(texts) == 3 and len(set(texts)) == 3
    assert bot.runtime.outbox.backlog() == 0
    assert bot.runtime.outbox.drain().delivered == 0


def test_a_500_streak_postpones_and_nothing_is_lost_or_doubled(bot):
    queue_audited_commands(bot, 4)
    bot.slack.fail("chat.postMessage", status=500, times=6)
    for _ in range(20):
        bot.runtime.outbox.drain()
        if bot.runtime.outbox.backlog() == 0:
            break
        make_due(bot)
    assert failed_posts(bot.slack) == 6
    texts = audit_texts(bot.slack)
    assert len(texts) == 4 and len(set(texts)) == 4
    with bot.runtime.bot_engine.connect() as conn:
        row = conn.execute(
            text("SELECT count(*) FILTER (WHERE delivered_at IS NOT NULL), sum(attempts) FROM outbox")
        ).one()
    assert tuple(row) == (4, 10)


def test_the_running_worker_rides_out_a_streak_of_errors(bot):
    bot.slack.fail("chat.postMessage", status=500, times=3)
    bot.slack.fail("chat.postMessage", status=429, times=1, retry_after=1)
    for index in range(5):
        bot.command(f"find streak-{index} --stage dev").text()
    assert eventually(lambda: len(audit_texts(bot.slack)) >= 5, timeout=60)
    assert eventually(lambda: bot.runtime.outbox.backlog() == 0)
    counts = Counter(audit_texts(bot.slack))
    assert len(counts) == 5 and set(counts.values()) == {1}
    assert failed_posts(bot.slack) == 4


def test_an_update_retried_after_a_newer_one_never_rolls_a_message_back(make_bot, stage_db):
    from tests.deletion_support import press, request_message, requests_rows, start_delete, wait_state

    bot = make_bot({"dev": stage_db.url})
    request_id = start_delete(bot)
    request_message(bot, request_id)
    bot.slack.fail("chat.update", status=500, times=1)  # the "confirmed, starting" update meets a 500
    press(bot, request_id, "Delete", "UOPERATOR1")
    assert wait_state(bot, request_id, {"done", "failed"}).state == "done"
    assert eventually(lambda: bot.runtime.outbox.backlog() == 0, timeout=20)
    row = next(r for r in requests_rows(bot) if r.id == request_id)
    final = bot.slack.messages[(row.channel, row.message_ts)].payload
    assert ": done" in final["text"], final["text"]
    with bot.runtime.bot_engine.connect() as conn:
        superseded = conn.execute(text("SELECT count(*) FROM outbox WHERE result->>'superseded' = 'true'")).scalar()
    assert superseded >= 1  # the failed older update was retired, not re-sent over the newer one
