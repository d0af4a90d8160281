"""Slow-query alerts from the scheduled statements check, and the commands that show them.

The jobs are driven through `scheduler.run_slot(name, now=...)` with controlled slot times,
the outbox is drained by hand, and Slack is the local fake over HTTP (tests/health_support.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from bot.console.localslack import LocalSlack
from tests.conftest import ALERT_CHANNEL, AUDIT_CHANNEL
from tests.health_support import SLOW, Health, health_factory, posted_texts, sleep_statements


@pytest.fixture
def make_health(bot_db_url: str, fake_slack: LocalSlack) -> Iterator[Callable[..., Health]]:
    yield from health_factory(bot_db_url, fake_slack)


# -- slow queries -------------------------------------------------------------------------------


def test_a_slow_statement_alerts_once_is_updated_then_resolves_in_its_thread(make_health, stage_db):
    health = make_health({"dev": stage_db.url}, **SLOW)
    assert health.run("statements")  # the first snapshot: a baseline, nothing to compare yet
    assert health.posts() == []

    sleep_statements(stage_db.url, 4)
    health.run("statements")
    [post] = health.posts()
    text_ = posted_texts([post])[0]
    assert "slow query: mean" in text_ and "over 4 calls" in text_
    assert "SELECT pg_sleep($1)" in text_  # normalised by the extension, fetched for this query only
    assert "What to do" in text_ and "EXPLAIN" in text_

    # Still slow in the next interval, with numbers on another step (mean 50 -> 120 ms): the same message
    # is updated, nothing new posted.
    sleep_statements(stage_db.url, 3, 0.12)
    health.run("statements")
    assert len(health.posts()) == 1
    [update] = health.updates()
    [row] = health.alert_rows()
    assert update.payload["ts"] == row.ts
    first = health.slack.messages[(ALERT_CHANNEL, row.ts)]  # the message the first post created
    assert first.history[0]["text"] == post.payload["text"]
    assert "over 3 calls" in posted_texts([update])[0]
    text_reads = stage_db.scalar(
        "SELECT sum(calls) FROM pg_stat_statements WHERE query LIKE 'SELECT DISTINCT ON (queryid) queryid, left(query%'"
        " AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    assert text_reads == 1  # the text of a query that stays slow is not read again

    # It stops: one resolution, the message rewritten and a reply in its thread.
    health.run("statements")
    health.run("statements")
    assert len(health.posts()) == 1
    assert len(health.updates()) == 2
    assert "RESOLVED" in posted_texts(health.updates()[-1:])[0]
    [reply] = health.replies()
    assert reply.payload["thread_ts"] == row.ts
    assert "Resolved after" in reply.payload["text"]

    [row] = health.alert_rows()
    assert (row.state, row.check_name, row.consecutive) == ("resolved", "slow_queries", 2)
    assert [a.outcome for a in health.audit()] == ["firing", "resolved"]
    assert all(a.actor == "mcp-ops" and a.stage == "dev" for a in health.audit())
    audit_posts = [
        c.payload["text"] for c in health.slack.calls_to("chat.postMessage") if c.payload["channel"] == AUDIT_CHANNEL
    ]
    assert sum("alert slow_queries" in t for t in audit_posts) == 2


def test_a_slow_query_that_runs_too_few_times_in_an_interval_keeps_its_alert(make_health, stage_db):
    health = make_health({"dev": stage_db.url}, **SLOW)  # min 3 calls; ALERT_CLEAR_AFTER_RUNS defaults to 2
    health.run("statements")
    for calls in (4, 2, 4):  # 2 calls: too few to measure, no evidence it got fast
        sleep_statements(stage_db.url, calls)
        health.run("statements")
    assert len(health.posts()) == 1
    assert health.replies() == [] and "RESOLVED" not in "".join(posted_texts(health.updates()))
    [row] = health.alert_rows()
    assert row.state == "firing"

    health.run("statements")  # it stopped: missed once, still firing
    assert [r.state for r in health.alert_rows()] == ["firing"]
    assert health.replies() == []
    health.run("statements")  # missed twice: resolved, once
    [reply] = health.replies()
    assert "Resolved after" in reply.payload["text"]
    assert [r.state for r in health.alert_rows()] == ["resolved"]
    assert len(health.posts()) == 1
    assert [a.outcome for a in health.audit()] == ["firing", "resolved"]


def test_an_interval_with_too_few_slow_calls_holds_the_alert_even_when_one_clean_run_clears(make_health, stage_db):
    health = make_health({"dev": stage_db.url}, **SLOW, ALERT_CLEAR_AFTER_RUNS="1")
    health.run("statements")
    sleep_statements(stage_db.url, 4)
    health.run("statements")
    sleep_statements(stage_db.url, 2)
    health.run("statements")  # held: neither seen nor missed
    assert [r.state for r in health.alert_rows()] == ["firing"]
    sleep_statements(stage_db.url, 2, 0.001)  # ran, and fast: that is evidence
    health.run("statements")
    assert [r.state for r in health.alert_rows()] == ["resolved"]
    assert len(health.posts()) == 1 and len(health.replies()) == 1


def test_an_escalation_to_critical_is_also_said_in_the_thread(make_health, stage_db):
    health = make_health({"dev": stage_db.url}, **SLOW)  # critical from 10x SLOW_QUERY_MS: 300 ms
    health.run("statements")
    sleep_statements(stage_db.url, 4)
    health.run("statements")
    [post] = health.posts()
    assert "WARNING" in posted_texts([post])[0]
    sleep_statements(stage_db.url, 3, 0.32)
    health.run("statements")
    health.sync()
    [update] = health.updates()
    assert "CRITICAL" in posted_texts([update])[0]
    [reply] = health.replies()
    [row] = health.alert_rows()
    assert reply.payload["thread_ts"] == row.ts == update.payload["ts"]
    assert reply.payload["reply_broadcast"] is True
    assert "Escalated to *CRITICAL* on stage *dev*: slow query: mean" in reply.payload["text"]
    # Back to a warning, then critical again: the message is rewritten each time, the channel told once.
    sleep_statements(stage_db.url, 3)
    health.run("statements")
    assert len(health.updates()) == 2 and "WARNING" in posted_texts(health.updates()[-1:])[0]
    sleep_statements(stage_db.url, 3, 0.32)
    health.run("statements")
    assert len(health.updates()) == 3 and "CRITICAL" in posted_texts(health.updates()[-1:])[0]
    assert len(health.replies()) == 1 and len(health.posts()) == 1


def test_an_old_slow_query_from_before_the_first_snapshot_does_not_alert(make_health, stage_db):
    health = make_health({"dev": stage_db.url}, **SLOW)
    sleep_statements(stage_db.url, 4)
    mean = stage_db.scalar(
        "SELECT max(mean_exec_time) FROM pg_stat_statements WHERE query = 'SELECT pg_sleep($1)'"
        " AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    assert mean > 30  # the cumulative mean would call it slow forever
    for _ in range(3):
        health.run("statements")
    assert health.posts() == []
    assert health.alert_rows() == []


def test_counters_that_went_down_or_a_stats_reset_count_from_zero(make_health, stage_db):
    health = make_health({"dev": stage_db.url}, **SLOW)
    sleep_statements(stage_db.url, 5)
    health.run("statements")
    # This database's entries are reset (stats_reset stays): the counters went down, 5 -> 3.
    stage_db.execute(
        "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database WHERE datname = current_database()), 0)"
    )
    sleep_statements(stage_db.url, 3)
    health.run("statements")
    [post] = health.posts()
    assert "over 3 calls" in posted_texts([post])[0]
    # A full reset (pg_stat_statements_info.stats_reset moves), then 4 calls: 3 -> 4 would look like 1 call.
    stage_db.execute("SELECT pg_stat_statements_reset()")
    sleep_statements(stage_db.url, 4)
    health.run("statements")
    [update] = health.updates()
    assert "over 4 calls" in posted_texts([update])[0]
    assert health.replies() == [] and len(health.posts()) == 1


def test_a_missing_extension_is_reported_once_and_the_other_checks_keep_running(
    make_health, database_without_extension
):
    health = make_health({"dev": database_without_extension}, **SLOW, CONNECTIONS_WARN_PERCENT="1")
    for _ in range(3):
        health.run("statements")
        health.run("activity")
    texts = posted_texts(health.posts())
    assert sum("pg_stat_statements is not installed" in t for t in texts) == 1  # SQLSTATE 42P01
    assert any("CREATE EXTENSION pg_stat_statements" in t for t in texts)
    assert sum("connections at" in t for t in texts) == 1  # the activity checks still alert
    assert {a.args.split()[0] for a in health.audit()} == {"pg_stat_statements", "connections"}
    health.runtime.stages.dispose()


def test_with_scheduled_checks_off_the_health_command_measures_slow_queries_between_two_runs(make_bot, stage_db):
    bot = make_bot({"dev": stage_db.url}, **SLOW)  # HEALTH_CHECKS=off: no job takes snapshots
    assert not bot.settings.health.enabled
    first = bot.command("health --stage dev").text()
    assert "first snapshot taken" in first
    assert "scheduled checks are off (HEALTH_CHECKS=off), so the next `/mcp health` measures from this one" in first
    assert "Connected in" in first and "*Round trip*: `SELECT 1` answered in" in first
    sleep_statements(stage_db.url, 4)
    second = bot.command("health --stage dev").text()
    assert "first snapshot" not in second
    assert "1 slow" in second and "slow query: mean" in second and "over 4 calls" in second
    assert "nothing raises alerts" in second
    assert [c for c in bot.slack.calls_to("chat.postMessage") if c.payload["channel"] == ALERT_CHANNEL] == []
    shown = bot.command("slow-queries --stage dev").text()
    assert "Busiest queries on stage *dev*" in shown and "SELECT pg_sleep($1)" in shown
    assert "taken by `/mcp health`, the scheduled checks being off" in shown


def test_slow_queries_and_alerts_commands(make_bot, stage_db):
    bot = make_bot({"dev": stage_db.url, "production": stage_db.url}, **SLOW)
    assert "No snapshot yet" in bot.command("slow-queries --stage dev").text()
    bot.runtime.health.run_group("dev", "statements")
    sleep_statements(stage_db.url, 4)
    bot.runtime.health.run_group("dev", "statements")
    text_ = bot.command("slow-queries --stage dev --limit 5").text()
    assert "Busiest queries on stage *dev*" in text_
    assert "*slow*" in text_ and "4 calls" in text_ and "SELECT pg_sleep($1)" in text_
    alerts = bot.command("alerts").text()
    assert "1 open alert" in alerts and "slow query: mean" in alerts
    assert "nothing is firing" in bot.command("alerts --stage production").text()
    assert "`--limit` must be between 1 and 50" in bot.command("slow-queries --stage dev --limit 500").text()
