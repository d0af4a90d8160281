"""Alert lifecycle scenarios on real PostgreSQL: Acknowledge then an escalation, Slack refusing an alert's
first post, a stage going down while an alert fires, a session idle in a transaction that blocks
another, two replicas running the same round of sessions checks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import psycopg
import pytest
from sqlalchemy import text

from bot.console.localslack import LocalSlack
from bot.health.monitor import job_name
from bot.localpg import LocalPostgres
from tests.conftest import ALERT_CHANNEL, OPERATOR, eventually, throwaway_cluster, unique_name
from tests.health_support import SLOW, T0, Health, health_factory, posted_texts, sleep_statements
from tests.scenario_support import Sessions, old_enough
from tests.test_alert_attention import _labels, _slow_query_alert, clicky  # noqa: F401 (a fixture)

FAST = {"LONG_QUERY_SECONDS": "1", "IDLE_IN_TRANSACTION_SECONDS": "1", "BLOCKED_QUERY_SECONDS": "1"}


@pytest.fixture
def make_health(bot_db_url: str, fake_slack: LocalSlack) -> Iterator[Callable[..., Health]]:
    yield from health_factory(bot_db_url, fake_slack)


def _deliver_until(health: Health, done: Callable[[], bool]) -> bool:
    """Drain the outbox (and sync alerts) until `done`, past any Retry-After or backoff in between."""

    def attempt() -> bool:
        with health.runtime.bot_engine.begin() as conn:  # no waiting out backoffs: every row is due now
            conn.execute(text("UPDATE outbox SET next_attempt_at = now() WHERE delivered_at IS NULL"))
            conn.execute(text("DELETE FROM outbox_holds"))
        health.sync()
        return done()

    return bool(eventually(attempt, timeout=20, interval=0.2))


def test_an_acknowledged_alert_still_escalates_to_critical_in_its_thread(clicky, stage_db):  # noqa: F811
    clicker, post = _slow_query_alert(clicky, stage_db)
    health = clicker.health
    clicker.press(post, "Acknowledge")
    sleep_statements(stage_db.url, 3, 0.32)  # 10x SLOW_QUERY_MS: critical
    health.run("statements")
    health.sync()
    [reply] = health.replies()
    assert "Escalated to *CRITICAL*" in reply.payload["text"] and reply.payload["reply_broadcast"] is True
    last = health.updates()[-1]
    assert "CRITICAL" in posted_texts([last])[0]
    assert f"Acknowledged by <@{OPERATOR}>" in posted_texts([last])[0]  # the escalation keeps who owns it
    assert "Acknowledge" not in _labels(last)
    assert len(health.posts()) == 1
    assert [a.outcome for a in health.audit()] == ["firing", "acknowledged"]


def test_an_alert_whose_first_post_meets_429_then_500_is_posted_once_with_its_latest_numbers(make_health, stage_db):
    health = make_health({"dev": stage_db.url}, **SLOW)
    health.slack.fail("chat.postMessage", status=429, retry_after=1, channel=ALERT_CHANNEL)
    health.slack.fail("chat.postMessage", status=500, times=2, channel=ALERT_CHANNEL)
    health.run("statements")
    sleep_statements(stage_db.url, 4)
    health.run("statements")  # fires; Slack says 429
    assert health.posts() == []
    sleep_statements(stage_db.url, 3, 0.32)  # critical meanwhile: the message must say so, once it exists
    health.run("statements")
    health.sync()
    assert health.posts() == [] and health.updates() == []
    assert _deliver_until(health, lambda: len(health.updates()) >= 1)
    [post] = health.posts()
    assert len(health.slack.calls_to("chat.update")) == 1
    assert "CRITICAL" in posted_texts(health.updates())[0]
    _deliver_until(health, lambda: True)
    assert len(health.posts()) == 1 and len(health.updates()) == 1
    [row] = health.alert_rows()
    assert row.ts == post.payload.get("ts") or row.ts == health.updates()[0].payload["ts"]
    for _ in range(2):
        health.run("statements")
    health.sync()
    [*_, resolved] = health.updates()
    assert "RESOLVED" in posted_texts([resolved])[0]
    assert len(health.posts()) == 1
    assert len([r for r in health.replies() if "Resolved after" in r.payload["text"]]) == 1


@pytest.fixture(scope="module")
def stoppable() -> Iterator[LocalPostgres]:
    with throwaway_cluster("stoppable") as cluster:
        yield cluster


def test_a_stage_down_while_an_alert_fires_says_unreachable_once_holds_the_rest_then_resolves_all(
    make_health, stoppable
):
    url = stoppable.create_database(unique_name("flaky"))
    health = make_health({"dev": url}, **FAST)
    held = Sessions(url)
    try:
        held.running("SELECT pg_sleep(600)", "report-job")
        held.wait_until(old_enough("report-job", 1))
        health.run("activity")
        [long_post] = health.posts()
        stoppable.stop()
    finally:
        held.close()
    try:
        for _ in range(4):
            health.run("activity")
        health.sync()
        posts = health.posts()
        assert len(posts) == 2 and "unreachable" in posted_texts(posts[1:])[0]
        states = {r.check_name: r.state for r in health.alert_rows()}
        assert states == {"long_running": "firing", "connectivity": "firing"}  # held: neither missed nor resolved
        assert health.updates() == [] and health.replies() == []
    finally:
        stoppable.start()
    health.run("activity")  # back: the unreachable alert resolves; the query did not survive the restart
    health.run("activity")
    health.run("activity")
    health.sync()
    assert {r.check_name: r.state for r in health.alert_rows()} == {
        "long_running": "resolved",
        "connectivity": "resolved",
    }
    assert len(health.posts()) == 2
    resolved_threads = sorted(r.payload["thread_ts"] for r in health.replies())
    assert len(resolved_threads) == 2 and len(set(resolved_threads)) == 2
    assert long_post.payload["channel"] == ALERT_CHANNEL
    health.runtime.stages.dispose()


def test_idle_in_transaction_holding_a_lock_is_the_head_its_buttons_terminate(make_health, stage_db):
    health = make_health({"dev": stage_db.url}, **FAST)
    held = Sessions(stage_db.url)
    try:
        idle, _ = held.idle_in_transaction(
            "UPDATE organization SET name = name WHERE id = (SELECT min(id) FROM organization)", "billing-worker"
        )
        waiter = held.running(
            "UPDATE organization SET name = name WHERE id = (SELECT min(id) FROM organization)", "api-server"
        )
        held.wait_until(
            "SELECT count(*) = 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query_start < now() - interval '1.2 s'"
        )
        held.wait_until(
            "SELECT count(*) = 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND state = 'idle in transaction' AND state_change < now() - interval '1.2 s'"
        )
        health.run("activity")
        rows = {r.check_name: r for r in health.alert_rows()}
        assert rows["idle_in_transaction"].object.startswith(f"pid {idle} ")
        assert rows["blocked"].object.startswith(f"pid {waiter} ")
        for check in ("idle_in_transaction", "blocked"):
            assert [(a["label"], a["target"]["pid"]) for a in rows[check].actions] == [("Terminate session", idle)]
        assert len(health.posts()) == 2
        held.end(idle)
        held.wait_until(f"SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = {waiter} AND state = 'active'")
    finally:
        held.close()
    for _ in range(2):
        health.run("activity")
    assert {r.check_name: r.state for r in health.alert_rows()} == {
        "idle_in_transaction": "resolved",
        "blocked": "resolved",
    }


def test_two_replicas_racing_the_same_sessions_round_post_once(make_health, stage_db):
    first = make_health({"dev": stage_db.url}, **FAST)
    second = make_health({"dev": stage_db.url}, **FAST)
    held = Sessions(stage_db.url)
    try:
        held.running("SELECT pg_sleep(60)", "report-job")
        held.wait_until(old_enough("report-job", 1))
        for slot in range(3):
            barrier = threading.Barrier(2)
            ran: list[bool] = []

            def tick(
                health: Health, slot: int = slot, barrier: threading.Barrier = barrier, ran: list[bool] = ran
            ) -> None:
                barrier.wait()
                name = job_name("dev", "activity")
                interval = health.runtime.scheduler.jobs[name].interval_s
                ran.append(health.runtime.scheduler.run_slot(name, now=T0 + slot * interval))

            threads = [threading.Thread(target=tick, args=(h,)) for h in (first, second)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert sorted(ran) == [False, True]
            first.deliver()
            second.deliver()
    finally:
        held.close()
    [post] = first.posts()
    assert "report-job" in posted_texts([post])[0]
    assert [a.outcome for a in first.audit()] == ["firing"]
    with psycopg.connect(stage_db.url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_pg_stat_statements_missing_on_one_stage_is_said_there_once_while_the_other_alerts(
    make_health, stage_db, database_without_extension
):
    health = make_health({"dev": stage_db.url, "qa": database_without_extension}, **SLOW, ALERT_CHANNEL_QA="CQAALERTS")
    for stage in ("dev", "qa"):
        health.run("statements", stage)
    sleep_statements(stage_db.url, 4)
    for _ in range(3):
        for stage in ("dev", "qa"):
            health.run("statements", stage)
    health.sync()
    [qa] = health.posts("CQAALERTS")
    assert "pg_stat_statements is not installed" in posted_texts([qa])[0]
    [dev] = health.posts(ALERT_CHANNEL)
    assert "slow query" in posted_texts([dev])[0]
    health.runtime.stages.dispose()


def test_a_slow_querys_entry_reset_while_it_fires_keeps_one_alert(make_health, stage_db):
    health = make_health({"dev": stage_db.url}, **SLOW)
    health.run("statements")
    sleep_statements(stage_db.url, 4)
    health.run("statements")
    [post] = health.posts()
    [row] = health.alert_rows()
    queryid = int(row.object.removeprefix("queryid "))
    stage_db.execute("SELECT pg_stat_statements_reset(0, 0, :q)", q=queryid)  # that entry alone
    sleep_statements(stage_db.url, 4)
    health.run("statements")
    health.sync()
    assert [r.state for r in health.alert_rows()] == ["firing"]
    assert health.posts() == [post] and health.replies() == []
    stage_db.execute("SELECT pg_stat_statements_reset(0, 0, :q)", q=queryid)  # reset, and it does not run again
    for _ in range(2):
        health.run("statements")
    health.sync()
    assert [r.state for r in health.alert_rows()] == ["resolved"]
    assert len(health.posts()) == 1 and len(health.replies()) == 1


def test_edits_held_back_by_a_429_leave_the_message_at_its_newest_state(make_health, stage_db):
    health = make_health({"dev": stage_db.url}, **SLOW)
    health.run("statements")
    sleep_statements(stage_db.url, 4)
    health.run("statements")
    [post] = health.posts()
    health.slack.fail("chat.update", status=429, retry_after=1, times=5)
    sleep_statements(stage_db.url, 3, 0.32)  # critical: an edit, and a reply in the thread
    health.run("statements")
    health.sync()
    sleep_statements(stage_db.url, 4)  # back to a warning: a newer edit
    health.run("statements")
    health.sync()
    [row] = health.alert_rows()
    assert _deliver_until(health, lambda: health.runtime.outbox.backlog() == 0)
    stored = health.slack.messages[(row.channel, row.ts)].payload
    assert "WARNING" in posted_texts([type(post)("chat.update", stored, 0.0)])[0]
    assert len([r for r in health.replies() if "Escalated to *CRITICAL*" in r.payload["text"]]) == 1
    assert len(health.posts()) == 1


def test_a_snoozed_long_query_alert_still_resolves_in_its_thread_once(clicky, stage_db):  # noqa: F811
    clicker = clicky({"dev": stage_db.url}, **FAST, ALERT_REPEAT_MINUTES_DEV="60")
    health = clicker.health
    held = Sessions(stage_db.url)
    try:
        held.running("SELECT pg_sleep(60)", "report-job")
        held.wait_until(old_enough("report-job", 1))
        health.run("activity")
        [post] = health.posts()
        clicker.press(post, "Snooze 1 h")
        with health.runtime.bot_engine.begin() as conn:
            conn.execute(text("UPDATE alerts SET last_notified_at = now() - interval '61 minutes'"))
        health.run("activity")  # a reminder would be due: snoozed, none
        health.sync()
        assert health.replies() == []
    finally:
        held.close()
    for _ in range(3):
        health.run("activity")
    health.sync()
    [reply] = health.replies()
    assert "Resolved after" in reply.payload["text"]
    assert "RESOLVED" in posted_texts(health.updates()[-1:])[0]
    assert len(health.posts()) == 1
    assert [a.outcome for a in health.audit()] == ["firing", "snoozed", "resolved"]
