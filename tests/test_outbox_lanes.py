"""The outbox delivers by priority and honours a 429's Retry-After per method and channel:
a rate limit on the audit channel delays no alert, audit lines wait out their Retry-After, and a
429 on one method of a channel holds back no other method on that channel."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from bot.config import load_settings
from bot.console.localslack import LocalSlack, SlackCall
from bot.health.monitor import job_name
from bot.runtime import Runtime
from handlers import render_alerts
from tests.conftest import (
    ALERT_CHANNEL,
    APPROVER,
    APPROVER2,
    AUDIT_CHANNEL,
    CHANNEL,
    OPERATOR,
    TEST_SPEC,
    StageDb,
    base_env,
    dead_database_url,
    eventually,
    message_text,
)
from tests.deletion_support import press, request_message, requests_rows, start_delete, wait_state

T0 = 1_900_000_000.0


@pytest.fixture
def monitor(bot_db_url: str, fake_slack: LocalSlack) -> Iterator[Runtime]:
    """A replica whose health jobs the test runs (no background workers), on the bots' database."""
    env = base_env(bot_db_url=bot_db_url, stages={"gone": dead_database_url()}, slack=fake_slack)
    runtime = Runtime(load_settings({**env, "HEALTH_CHECKS": "on", "UNREACHABLE_AFTER_FAILURES": "1"}))
    render_alerts.install(runtime)  # no Bolt app on this replica: its alert book is given its drawing directly
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


APPROVER3 = "UAPPROVER3"


def test_a_429_on_one_method_holds_back_no_other_method_on_the_same_channel(make_bot, stage_db: StageDb):
    """Audit lines and a protected request share one channel. chat.postMessage's 429 there leaves the
    request's chat.update going, and the other way round; each held method goes after its Retry-After,
    and of the updates held meanwhile only the newest is sent."""
    bot = make_bot(
        {"dev": stage_db.url, "production": stage_db.url},
        AUDIT_CHANNEL=CHANNEL,
        APPROVERS=f"{APPROVER},{APPROVER2},{APPROVER3}",
        REQUIRED_APPROVALS="3",
    )
    runtime = bot.runtime
    request_id = start_delete(bot, stage="production", extra='--reason "asked to leave"')
    shown = request_message(bot, request_id)
    [row] = [r for r in requests_rows(bot) if r.id == request_id]
    assert row.channel == CHANNEL
    runtime.outbox_worker.stop(flush=False)  # deliveries are driven by the test from here on

    def drained() -> bool:
        runtime.outbox.drain()
        return runtime.outbox.backlog() == 0

    assert eventually(drained)  # what is left of the request's posting ("requested" in the audit lines)
    since = len(bot.slack.calls)

    def posts() -> list[SlackCall]:
        """chat.postMessage attempts to the channel from here on, accepted or not."""
        return [
            c for c in bot.slack.calls[since:] if c.method == "chat.postMessage" and c.payload["channel"] == CHANNEL
        ]

    def updates() -> list[SlackCall]:
        """chat.update attempts on the request's message from here on, accepted or not."""
        return [c for c in bot.slack.calls[since:] if c.method == "chat.update" and c.payload["ts"] == row.message_ts]

    # chat.postMessage is rate limited on the channel: an audit line meets the 429 first...
    bot.slack.fail("chat.postMessage", status=429, times=1, retry_after=60, channel=CHANNEL)
    assert "/mcp find" in bot.command("help").text()
    assert eventually(lambda: queued(runtime, "chat.postMessage") == 1)
    runtime.outbox.drain()
    assert [c.ok for c in posts()] == [False]
    assert held(runtime) == {"chat.postMessage": True}
    # ...then a vote updates the request's message in that channel at once; its audit line waits.
    press(bot, request_id, "Approve", APPROVER, shown)
    assert eventually(lambda: queued(runtime, "chat.update") == 1 and queued(runtime, "chat.postMessage") == 2)
    runtime.outbox.drain()
    [update] = updates()
    assert update.ok and "1 of 3" in message_text(update.payload)
    assert [c.ok for c in posts()] == [False]  # not even tried again during its Retry-After
    assert queued(runtime, "chat.postMessage") == 2

    # Retry-After has passed: both audit lines go, once each, in order.
    make_due(runtime)
    runtime.outbox.drain()
    assert [c.ok for c in posts()] == [False, True, True]
    assert "`help`" in posts()[1].payload["text"] and f"#{request_id}" in posts()[2].payload["text"]
    assert runtime.outbox.backlog() == 0

    # Now chat.update is rate limited on the channel: the second vote's update meets the 429, its audit
    # line goes all the same.
    bot.slack.fail("chat.update", status=429, times=1, retry_after=60, channel=CHANNEL)
    press(bot, request_id, "Approve", APPROVER2, shown)
    assert eventually(lambda: queued(runtime, "chat.update") == 1 and queued(runtime, "chat.postMessage") == 1)
    runtime.outbox.drain()
    attempts = updates()
    assert [c.ok for c in attempts] == [True, False] and "2 of 3" in message_text(attempts[-1].payload)
    assert [c.ok for c in posts()] == [False, True, True, True]
    assert held(runtime) == {"chat.update": True}
    # The requester cancels while the update is held: a newer update of the same message is queued.
    press(bot, request_id, "Cancel", OPERATOR, shown)
    assert wait_state(bot, request_id, {"cancelled"}).state == "cancelled"
    assert eventually(lambda: queued(runtime, "chat.update") == 2 and queued(runtime, "chat.postMessage") == 1)
    runtime.outbox.drain()
    assert [c.ok for c in posts()] == [False, True, True, True, True]  # the cancel's audit line
    assert len(updates()) == 2  # no update tried during the Retry-After

    # Retry-After has passed: only the newest update goes; the held "2 of 3" is never sent over it.
    make_due(runtime)
    runtime.outbox.drain()
    attempts = updates()
    assert [c.ok for c in attempts] == [True, False, True]
    assert ": cancelled" in attempts[-1].payload["text"]
    assert ": cancelled" in bot.slack.messages[(CHANNEL, row.message_ts)].payload["text"]
    with runtime.bot_engine.connect() as conn:
        superseded = conn.execute(
            text("SELECT count(*) FROM outbox WHERE method = 'chat.update' AND result->>'superseded' = 'true'")
        ).scalar_one()
    assert superseded == 1
    assert runtime.outbox.backlog() == 0


def queued(runtime: Runtime, method: str, channel: str = CHANNEL) -> int:
    with runtime.bot_engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM outbox WHERE method = :m AND channel = :c "
                    "AND delivered_at IS NULL AND dead_at IS NULL"
                ),
                {"m": method, "c": channel},
            ).scalar_one()
        )


def held(runtime: Runtime, channel: str = CHANNEL) -> dict[str, bool]:
    """The methods held on `channel`, each with whether its hold lasts about the Retry-After (60 s)."""
    with runtime.bot_engine.connect() as conn:
        rows = conn.execute(
            text("SELECT method, until > now() + interval '50 seconds' FROM outbox_holds WHERE channel = :c"),
            {"c": channel},
        ).all()
    return {method: bool(lasting) for method, lasting in rows}


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
