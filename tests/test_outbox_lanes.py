"""The outbox delivers by priority and honours a 429's Retry-After per method and channel:
a rate limit on the audit channel delays no alert, and audit lines wait out their Retry-After."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from bot.config import load_settings
from bot.console.localslack import LocalSlack
from bot.health.monitor import job_name
from bot.runtime import Runtime
from tests.conftest import (
    ALERT_CHANNEL,
    AUDIT_CHANNEL,
    CHANNEL,
    OPERATOR,
    TEST_SPEC,
    StageDb,
    base_env,
    dead_database_url,
    eventually,
)
from tests.deletion_support import press, request_message, requests_rows, start_delete, wait_state

T0 = 1_900_000_000.0


@pytest.fixture
def monitor(bot_db_url: str, fake_slack: LocalSlack) -> Iterator[Runtime]:
    """A replica whose health jobs the test runs (no background workers), on the bots' database."""
    env = base_env(bot_db_url=bot_db_url, stages={"gone": dead_database_url()}, slack=fake_slack)
    runtime = Runtime(load_settings({**env, "HEALTH_CHECKS": "on", "UNREACHABLE_AFTER_FAILURES": "1"}))
    runtime.start(workers=False)
    yield runtime
    runtime.close()


def test_a_429_on_the_audit_channel_holds_back_neither_alerts_nor_other_channels(
    make_bot, stage_db: StageDb, monitor: Runtime
):
    bot = make_bot({"dev": stage_db.url})
    runtime = bot.runtime
    runtime.outbox_worker.stop(flush=False)  # deliveries are driven by the test from here on
    bot.slack.fail("chat.postMessage", status=429, times=1, retry_after=60, channel=AUDIT_CHANNEL)

    assert "/mcp find" in bot.command("help").text()  # its audit line is queued first
    assert monitor.scheduler.run_slot(job_name("gone", "activity"), now=T0)  # an alert and its audit line
    assert TEST_SPEC.big_slug in bot.command(f"find {TEST_SPEC.big_slug} --stage dev").text()
    bot.wait_audit(3)

    runtime.outbox.drain()
    alerts = [c for c in bot.slack.calls_to("chat.postMessage") if c.payload.get("channel") == ALERT_CHANNEL]
    assert len(alerts) == 1 and "stage gone is unreachable" in alerts[0].payload["text"]
    audit_attempts = [c for c in bot.slack.calls if c.payload.get("channel") == AUDIT_CHANNEL]
    assert [c.ok for c in audit_attempts] == [False]  # one 429, then the channel waits out its Retry-After
    runtime.outbox.drain()
    assert len([c for c in bot.slack.calls if c.payload.get("channel") == AUDIT_CHANNEL]) == 1

    # Retry-After has passed (the test moves the hold and the back-off to now): every line, once, in order.
    with runtime.bot_engine.begin() as conn:
        conn.execute(text("UPDATE outbox_holds SET until = now() - interval '1 second'"))
        conn.execute(text("UPDATE outbox SET next_attempt_at = now() WHERE delivered_at IS NULL"))
    runtime.outbox.drain()
    posts = bot.audit_posts()
    rows = bot.audit_rows()
    assert len(rows) >= 3 and len(posts) == len(rows)
    commands = [p.payload["text"] for p in posts]
    assert "`help`" in commands[0] and "`find" in commands[-1]
    assert runtime.outbox.backlog() == 0


def test_a_requests_state_update_and_the_audit_line_do_not_wait_for_each_others_429(make_bot, stage_db: StageDb):
    bot = make_bot({"dev": stage_db.url})
    runtime = bot.runtime
    first = start_delete(bot)
    shown = request_message(bot, first)
    runtime.outbox_worker.stop(flush=False)  # deliveries are driven by the test from here on

    # The audit channel is rate limited: the cancelled request's message is updated all the same.
    bot.slack.fail("chat.postMessage", status=429, times=1, retry_after=60, channel=AUDIT_CHANNEL)
    press(bot, first, "Cancel", OPERATOR, shown)
    assert wait_state(bot, first, {"cancelled"}).state == "cancelled"
    assert eventually(lambda: runtime.outbox.backlog() >= 2)
    runtime.outbox.drain()
    assert cancelled_shown(bot, first) == 1
    assert [c.ok for c in bot.slack.calls if c.payload.get("channel") == AUDIT_CHANNEL][-1:] == [False]
    assert runtime.outbox.backlog() == 1  # only the audit line waits, for its Retry-After

    # Now the request channel's updates are rate limited: the audit lines go, the update waits its turn.
    make_due(runtime)
    second = start_delete(bot)
    shown = request_message(bot, second)
    bot.slack.fail("chat.update", status=429, times=1, retry_after=60, channel=CHANNEL)
    press(bot, second, "Cancel", OPERATOR, shown)
    assert wait_state(bot, second, {"cancelled"}).state == "cancelled"
    audited = len(bot.audit_rows())
    runtime.outbox.drain()
    assert len(bot.audit_posts()) == audited  # every audit line, the held one included, went out
    assert runtime.outbox.backlog() == 1  # the update waits for its Retry-After...
    assert cancelled_shown(bot, second) == 0
    make_due(runtime)
    runtime.outbox.drain()  # ...then goes, once
    assert cancelled_shown(bot, second) == 1
    assert runtime.outbox.backlog() == 0


def cancelled_shown(bot, request_id: int) -> int:
    """How many updates showing the request cancelled Slack accepted."""
    [row] = [r for r in requests_rows(bot) if r.id == request_id]
    return len(
        [
            c
            for c in bot.slack.calls_to("chat.update")
            if c.ok and c.payload.get("ts") == row.message_ts and ": cancelled" in c.payload.get("text", "")
        ]
    )


def make_due(runtime: Runtime) -> None:
    """Retry-After and the back-off have passed (the test moves them to now)."""
    with runtime.bot_engine.begin() as conn:
        conn.execute(text("UPDATE outbox_holds SET until = now() - interval '1 second'"))
        conn.execute(text("UPDATE outbox SET next_attempt_at = now() WHERE delivered_at IS NULL"))
