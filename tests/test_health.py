"""Scheduled health checks and slow-query alerts: posted once, updated, resolved.

The jobs are driven through `scheduler.run_slot(name, now=...)` with controlled slot times,
the outbox is drained by hand, and Slack is the local fake over HTTP.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from bot.config import load_settings
from bot.console.localslack import LocalSlack, SlackCall
from bot.health.monitor import job_name
from bot.localpg import LocalPostgres
from bot.runtime import Runtime
from bot.scheduler import PRUNE_JOB
from tests.conftest import ALERT_CHANNEL, AUDIT_CHANNEL, base_env, throwaway_cluster, unique_name

T0 = 1_900_000_000.0  # slot times are ours to choose; they only have to move forward


class Health:
    """A runtime with health jobs registered but no background workers: every run is explicit."""

    def __init__(self, runtime: Runtime, slack: LocalSlack) -> None:
        self.runtime = runtime
        self.slack = slack
        self.slots: dict[str, int] = {}

    def run(self, group: str, stage: str = "dev", *, slot: int | None = None) -> bool:
        """Run `group` on `stage` in its next slot (or slot number `slot`), then deliver what it queued."""
        name = job_name(stage, group)
        index = self.slots.get(name, 0) if slot is None else slot
        self.slots[name] = index + 1
        interval = self.runtime.scheduler.jobs[name].interval_s
        ran = self.runtime.scheduler.run_slot(name, now=T0 + index * interval)
        self.deliver()
        return ran

    def deliver(self) -> None:
        self.runtime.outbox.drain()

    def sync(self) -> None:
        self.runtime.health.book.sync()
        self.deliver()

    def posts(self, channel: str = ALERT_CHANNEL) -> list[SlackCall]:
        return [
            c
            for c in self.slack.calls_to("chat.postMessage")
            if c.payload.get("channel") == channel and not c.payload.get("thread_ts")
        ]

    def replies(self) -> list[SlackCall]:
        return [c for c in self.slack.calls_to("chat.postMessage") if c.payload.get("thread_ts")]

    def updates(self) -> list[SlackCall]:
        return self.slack.calls_to("chat.update")

    def alert_rows(self) -> list[Any]:
        with self.runtime.bot_engine.connect() as conn:
            return list(conn.execute(text("SELECT * FROM alerts ORDER BY id")))

    def audit(self, command: str = "alert") -> list[Any]:
        with self.runtime.bot_engine.connect() as conn:
            return list(conn.execute(text("SELECT * FROM audit_log WHERE command = :c ORDER BY id"), {"c": command}))


def health_factory(bot_db_url: str, fake_slack: LocalSlack) -> Iterator[Callable[..., Health]]:
    """Yields `make(stages, **env)`: a Health on a runtime with health jobs on; closes them all after."""
    runtimes: list[Runtime] = []

    def make(stages: dict[str, str], **overrides: str) -> Health:
        env = base_env(bot_db_url=bot_db_url, stages=stages, slack=fake_slack)
        env.update({"HEALTH_CHECKS": "on", **overrides})
        runtime = Runtime(load_settings(env))
        runtime.start(workers=False)
        runtimes.append(runtime)
        return Health(runtime, fake_slack)

    yield make
    for runtime in runtimes:
        runtime.close()


@pytest.fixture
def make_health(bot_db_url: str, fake_slack: LocalSlack) -> Iterator[Callable[..., Health]]:
    yield from health_factory(bot_db_url, fake_slack)


def _texts(calls: list[SlackCall]) -> list[str]:
    out = []
    for call in calls:
        parts = [str(call.payload.get("text", ""))]
        for block in call.payload.get("blocks") or []:
            if "text" in block:
                parts.append(block["text"]["text"])
            for element in block.get("elements", []):
                label = element.get("text", "")
                parts.append(label if isinstance(label, str) else label.get("text", ""))
        out.append("\n".join(parts))
    return out


def _sleep_statements(url: str, count: int, seconds: float = 0.05) -> None:
    with psycopg.connect(url, autocommit=True, application_name="platform-api") as conn:
        for _ in range(count):
            conn.execute(f"SELECT pg_sleep({seconds})")


SLOW = {"SLOW_QUERY_MS": "30", "SLOW_QUERY_MIN_CALLS": "3"}


# -- slow queries -------------------------------------------------------------------------------


def test_a_slow_statement_alerts_once_is_updated_then_resolves_in_its_thread(make_health, stage_db):
    health = make_health({"dev": stage_db.url}, **SLOW)
    assert health.run("statements")  # the first snapshot: a baseline, nothing to compare yet
    assert health.posts() == []

    _sleep_statements(stage_db.url, 4)
    health.run("statements")
    [post] = health.posts()
    text_ = _texts([post])[0]
    assert "slow query: mean" in text_ and "over 4 calls" in text_
    assert "SELECT pg_sleep($1)" in text_  # normalised by the extension, fetched for this query only
    assert "What to do" in text_ and "EXPLAIN" in text_

    # Still slow in the next interval, with numbers on another step (mean 50 -> 120 ms): the same message
    # is updated, nothing new posted.
    _sleep_statements(stage_db.url, 3, 0.12)
    health.run("statements")
    assert len(health.posts()) == 1
    [update] = health.updates()
    [row] = health.alert_rows()
    assert update.payload["ts"] == row.ts
    first = health.slack.messages[(ALERT_CHANNEL, row.ts)]  # the message the first post created
    assert first.history[0]["text"] == post.payload["text"]
    assert "over 3 calls" in _texts([update])[0]
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
    assert "RESOLVED" in _texts(health.updates()[-1:])[0]
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
        _sleep_statements(stage_db.url, calls)
        health.run("statements")
    assert len(health.posts()) == 1
    assert health.replies() == [] and "RESOLVED" not in "".join(_texts(health.updates()))
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
    _sleep_statements(stage_db.url, 4)
    health.run("statements")
    _sleep_statements(stage_db.url, 2)
    health.run("statements")  # held: neither seen nor missed
    assert [r.state for r in health.alert_rows()] == ["firing"]
    _sleep_statements(stage_db.url, 2, 0.001)  # ran, and fast: that is evidence
    health.run("statements")
    assert [r.state for r in health.alert_rows()] == ["resolved"]
    assert len(health.posts()) == 1 and len(health.replies()) == 1


def test_an_escalation_to_critical_is_also_said_in_the_thread(make_health, stage_db):
    health = make_health({"dev": stage_db.url}, **SLOW)  # critical from 10x SLOW_QUERY_MS: 300 ms
    health.run("statements")
    _sleep_statements(stage_db.url, 4)
    health.run("statements")
    [post] = health.posts()
    assert "WARNING" in _texts([post])[0]
    _sleep_statements(stage_db.url, 3, 0.32)
    health.run("statements")
    health.sync()
    [update] = health.updates()
    assert "CRITICAL" in _texts([update])[0]
    [reply] = health.replies()
    [row] = health.alert_rows()
    assert reply.payload["thread_ts"] == row.ts == update.payload["ts"]
    assert reply.payload["reply_broadcast"] is True
    assert "Escalated to *CRITICAL* on stage *dev*: slow query: mean" in reply.payload["text"]
    # Back to a warning, then critical again: the message is rewritten each time, the channel told once.
    _sleep_statements(stage_db.url, 3)
    health.run("statements")
    assert len(health.updates()) == 2 and "WARNING" in _texts(health.updates()[-1:])[0]
    _sleep_statements(stage_db.url, 3, 0.32)
    health.run("statements")
    assert len(health.updates()) == 3 and "CRITICAL" in _texts(health.updates()[-1:])[0]
    assert len(health.replies()) == 1 and len(health.posts()) == 1


def test_an_old_slow_query_from_before_the_first_snapshot_does_not_alert(make_health, stage_db):
    health = make_health({"dev": stage_db.url}, **SLOW)
    _sleep_statements(stage_db.url, 4)
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
    _sleep_statements(stage_db.url, 5)
    health.run("statements")
    # This database's entries are reset (stats_reset stays): the counters went down, 5 -> 3.
    stage_db.execute(
        "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database WHERE datname = current_database()), 0)"
    )
    _sleep_statements(stage_db.url, 3)
    health.run("statements")
    [post] = health.posts()
    assert "over 3 calls" in _texts([post])[0]
    # A full reset (pg_stat_statements_info.stats_reset moves), then 4 calls: 3 -> 4 would look like 1 call.
    stage_db.execute("SELECT pg_stat_statements_reset()")
    _sleep_statements(stage_db.url, 4)
    health.run("statements")
    [update] = health.updates()
    assert "over 4 calls" in _texts([update])[0]
    assert health.replies() == [] and len(health.posts()) == 1


def test_a_missing_extension_is_reported_once_and_the_other_checks_keep_running(
    make_health, database_without_extension
):
    health = make_health({"dev": database_without_extension}, **SLOW, CONNECTIONS_WARN_PERCENT="1")
    for _ in range(3):
        health.run("statements")
        health.run("activity")
    texts = _texts(health.posts())
    assert sum("pg_stat_statements is not installed" in t for t in texts) == 1  # SQLSTATE 42P01
    assert any("CREATE EXTENSION pg_stat_statements" in t for t in texts)
    assert sum("connections at" in t for t in texts) == 1  # the activity checks still alert
    assert {a.args.split()[0] for a in health.audit()} == {"pg_stat_statements", "connections"}
    health.runtime.stages.dispose()


# -- an unreachable stage -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bare_cluster() -> Iterator[LocalPostgres]:
    """A cluster of its own that a test may stop and start; pg_stat_statements is not preloaded here."""
    with throwaway_cluster("bare", shared_preload_libraries="") as cluster:
        yield cluster


def test_a_stopped_stage_alerts_once_as_unreachable_and_resolves_when_it_returns(make_health, bare_cluster):
    url = bare_cluster.create_database(unique_name("lonely"))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")  # created, but the library is not preloaded
    health = make_health({"dev": url})
    health.run("activity")
    bare_cluster.stop()
    try:
        health.run("activity")  # one failure is not an outage yet
        assert health.posts() == []
        assert [r.state for r in health.alert_rows()] == ["pending"]
        health.run("activity")
        [post] = health.posts()
        assert "stage dev is unreachable (connection refused)" in _texts([post])[0]
        assert "CRITICAL" in _texts([post])[0]
        health.run("activity")
        health.run("statements")  # cannot connect either: skipped, says nothing
        assert len(health.posts()) == 1
        assert health.updates() == []
    finally:
        bare_cluster.start()

    # Back, but the unreachable alert has not resolved yet: other findings are held back.
    health.run("statements")
    assert len(health.posts()) == 1
    health.run("activity")
    [update] = health.updates()
    assert "RESOLVED" in _texts([update])[0]
    [reply] = health.replies()
    assert "Resolved after" in reply.payload["text"]
    assert reply.payload["thread_ts"] == update.payload["ts"]

    # The held finding now speaks, once: pg_stat_statements is not preloaded (SQLSTATE 55000).
    health.run("statements")
    health.run("statements")
    assert len(health.posts()) == 2
    unavailable = _texts(health.posts()[1:])[0]
    assert "pg_stat_statements is not preloaded" in unavailable and "shared_preload_libraries" in unavailable
    assert [(a.args, a.outcome) for a in health.audit()] == [
        ("connectivity stage", "firing"),
        ("connectivity stage", "resolved"),
        ("pg_stat_statements extension", "firing"),
    ]
    health.runtime.stages.dispose()


def test_a_bot_database_from_before_gets_the_new_alert_column_at_start(bot_db_url):
    from bot.botdb import create_bot_engine, migrate
    from bot.config import parse_database_url

    engine = create_bot_engine(parse_database_url("BOT_DATABASE_URL", bot_db_url))
    migrate(engine)
    columns = "SELECT column_name FROM information_schema.columns WHERE table_name = 'alerts'"
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE alerts DROP COLUMN absent, DROP COLUMN announced"))  # as first shipped
        conn.execute(text("DELETE FROM schema_version WHERE version = 3"))
    migrate(engine)
    migrate(engine)
    with engine.connect() as conn:
        assert {"absent", "announced"} <= set(conn.execute(text(columns)).scalars())
    engine.dispose()


# -- several replicas ---------------------------------------------------------------------------


def test_two_replicas_sharing_the_bot_database_post_each_alert_once(make_health, stage_db):
    # The daily group also reports the demo schema's duplicate indexes; this test follows the foreign keys.
    quiet = {"HEALTH_IGNORE": "public.mcp_servers,public.walkthrough_step_completions"}
    first = make_health({"dev": stage_db.url}, **quiet)
    second = make_health({"dev": stage_db.url}, **quiet)
    assert {name for name in first.runtime.scheduler.jobs if name.startswith("health:")} == {
        "health:dev:activity",
        "health:dev:statements",
        "health:dev:maintenance",
        "health:dev:fk_indexes",
    }
    assert first.runtime.scheduler.jobs["health:dev:fk_indexes"].interval_s == 86_400
    assert first.runtime.scheduler.jobs[PRUNE_JOB].interval_s == 3600  # job_runs are pruned hourly
    barrier = threading.Barrier(2)
    results: list[bool] = []

    def tick(health: Health) -> None:
        barrier.wait()
        results.append(health.runtime.scheduler.run_slot(job_name("dev", "fk_indexes"), now=T0))

    threads = [threading.Thread(target=tick, args=(h,)) for h in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, True]
    first.deliver()
    second.deliver()
    [post] = first.posts()
    posted = _texts([post])[0]
    assert "foreign keys without an index" in posted
    assert "CREATE INDEX CONCURRENTLY ON public.mcp_tool_calls (mcp_server_user_id);" in posted
    assert "CREATE INDEX CONCURRENTLY ON public.support_requests (mcp_server_session_id);" in posted

    # Later slots, whichever replica gets them: nothing new to say, so nothing is sent.
    assert first.run("fk_indexes", slot=1)
    assert not second.run("fk_indexes", slot=1)
    assert second.run("fk_indexes", slot=2)
    assert len(first.posts()) == 1
    assert first.updates() == [] and first.replies() == []

    # One index is created: the message is updated. All of them: the alert resolves, once.
    statements = re.findall(r"CREATE INDEX CONCURRENTLY ON [^;]+;", posted)
    with psycopg.connect(stage_db.url, autocommit=True) as conn:
        conn.execute(statements[0])
        second.run("fk_indexes", slot=3)
        first.sync()
        [update] = first.updates()
        assert statements[0] not in _texts([update])[0]
        for statement in statements[1:]:
            conn.execute(statement)
    if "more on smaller tables" in posted:  # more keys than the message lists
        pytest.fail("TEST_SPEC's schema should fit in one message")
    second.run("fk_indexes", slot=4)
    first.run("fk_indexes", slot=4)
    first.sync()
    assert len(first.posts()) == 1
    assert len(first.updates()) == 2
    assert "RESOLVED" in _texts(first.updates()[-1:])[0]
    assert len(first.replies()) == 1
    assert [a.outcome for a in first.audit()] == ["firing", "resolved"]
    assert [r.state for r in first.alert_rows()] == ["resolved"]


# -- the other checks, reminders, delivery ---------------------------------------------------------


def test_health_command_finds_long_idle_and_blocked_sessions_but_not_our_own(make_bot, stage_db):
    bot = make_bot(
        {"dev": stage_db.url}, LONG_QUERY_SECONDS="1", IDLE_IN_TRANSACTION_SECONDS="1", BLOCKED_QUERY_SECONDS="1"
    )
    row = "UPDATE organization SET name = name WHERE id = (SELECT min(id) FROM organization)"
    holder = psycopg.connect(stage_db.url, application_name="billing-worker")
    holder.execute(row)  # keeps its transaction open, holding the row lock
    ours = psycopg.connect(stage_db.url, application_name="mcp-ops/dev")
    ours.execute("SELECT 1")  # idle in a transaction too, but one of the bot's own sessions

    def run(sql: str, app: str) -> None:
        with psycopg.connect(stage_db.url, autocommit=True, application_name=app) as conn:
            conn.execute(sql)

    threads = [
        threading.Thread(target=run, args=(row, "api-server")),
        threading.Thread(target=run, args=("SELECT pg_sleep(2.5)", "report-job")),
    ]
    for thread in threads:
        thread.start()
    try:
        import time

        time.sleep(1.4)
        reply = bot.command("health --stage dev")
        text_ = reply.text()
    finally:
        holder.rollback()
        ours.rollback()
        for thread in threads:
            thread.join()
        holder.close()
        ours.close()
    holder_pid = stage_db.scalar("SELECT 1")  # the database still answers
    assert holder_pid == 1
    assert "Health of stage *dev*" in text_
    assert "idle in transaction for" in text_ and "billing-worker" in text_
    assert "query blocked for" in text_ and "api-server" in text_
    assert "query running for" in text_ and "report-job" in text_
    assert "mcp-ops/dev" not in text_
    assert "Foreign keys without an index" in text_
    # /mcp health reports; it does not raise alerts.
    assert [c for c in bot.slack.calls_to("chat.postMessage") if c.payload["channel"] == ALERT_CHANNEL] == []
    assert [r.command for r in bot.wait_audit(1)] == ["health"]


def test_catalog_checks_find_invalid_indexes_unindexed_foreign_keys_and_wraparound_age(make_health, stage_db):
    from dataclasses import replace

    from bot.health.checks import FK_CHECKS, MAINTENANCE_CHECKS, CheckContext, check_wraparound

    with psycopg.connect(stage_db.url, autocommit=True) as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY tool_name_uq ON mcp_tool_calls (tool_name)")
    health = make_health({"dev": stage_db.url})
    stage = health.runtime.stages.get("dev")
    result = health.runtime.health.round(stage, [*MAINTENANCE_CHECKS, *FK_CHECKS])
    reports = {r.check: r for r in result.reports}
    assert reports["wraparound"].status == "ok"
    [invalid] = reports["invalid_index"].findings
    assert invalid.object == "public.tool_name_uq"
    assert "REINDEX INDEX CONCURRENTLY public.tool_name_uq" in invalid.advice
    [fk] = reports["fk_without_index"].findings
    assert "ON public.mcp_tool_calls (mcp_server_user_id);" in fk.detail
    assert "ON public.support_requests (mcp_server_session_id);" in fk.detail
    assert "ON public.mcp_tool_calls (mcp_server_session_id);" not in fk.detail  # that one has its index

    strict = CheckContext("dev", replace(health.runtime.settings.health, wraparound_warn_pct=0))
    with stage.read() as conn:
        report = check_wraparound(conn, strict)
    [finding] = report.findings
    assert finding.severity == "warning" and "VACUUM (FREEZE" in finding.advice


def test_a_firing_alert_reminds_in_its_thread_only_after_the_repeat_interval(make_health, stage_db):
    health = make_health(
        {"dev": stage_db.url},
        CONNECTIONS_WARN_PERCENT="1",
        CONNECTIONS_CRITICAL_PERCENT="1",
        ALERT_CHANNEL_DEV="CDEVALERT1",
        ALERT_REPEAT_MINUTES_DEV="60",
    )
    health.run("activity")
    [post] = health.posts("CDEVALERT1")
    assert "CRITICAL" in _texts([post])[0] and "connections at" in _texts([post])[0]
    assert health.posts() == []  # the stage's own channel, not the default one
    health.run("activity")
    assert health.replies() == []
    with health.runtime.bot_engine.begin() as conn:
        conn.execute(text("UPDATE alerts SET last_notified_at = now() - interval '61 minutes'"))
    health.run("activity")
    health.sync()
    health.run("activity")
    [reminder] = health.replies()
    assert "Still firing after" in reminder.payload["text"]
    assert reminder.payload["reply_broadcast"] is True
    assert len(health.posts("CDEVALERT1")) == 1
    [row] = health.alert_rows()
    assert (row.reminders, row.consecutive) == (1, 4)


def test_a_resolution_waits_for_the_first_post_to_reach_slack(make_health, stage_db):
    health = make_health({"dev": stage_db.url}, **SLOW)
    scheduler = health.runtime.scheduler
    scheduler.run_slot(job_name("dev", "statements"), now=T0)
    _sleep_statements(stage_db.url, 3)
    scheduler.run_slot(job_name("dev", "statements"), now=T0 + 300)  # fires; its post is not delivered yet
    scheduler.run_slot(job_name("dev", "statements"), now=T0 + 600)  # missed once: not resolved yet
    assert [r.state for r in health.alert_rows()] == ["firing"]
    scheduler.run_slot(job_name("dev", "statements"), now=T0 + 900)  # resolves before Slack has the message
    [row] = health.alert_rows()
    assert (row.state, row.ts, row.reply_due) == ("resolved", None, "resolved")
    health.deliver()
    assert len(health.posts()) == 1 and health.updates() == []
    health.sync()  # now the ts is known: the message is rewritten and the thread told
    [update] = health.updates()
    [reply] = health.replies()
    assert update.payload["ts"] == reply.payload["thread_ts"] == health.alert_rows()[0].ts
    health.sync()
    assert len(health.updates()) == 1 and len(health.replies()) == 1


def test_with_scheduled_checks_off_the_health_command_measures_slow_queries_between_two_runs(make_bot, stage_db):
    bot = make_bot({"dev": stage_db.url}, **SLOW)  # HEALTH_CHECKS=off: no job takes snapshots
    assert not bot.settings.health.enabled
    first = bot.command("health --stage dev").text()
    assert "first snapshot taken" in first
    assert "scheduled checks are off (HEALTH_CHECKS=off), so the next `/mcp health` measures from this one" in first
    assert "Connected in" in first and "*Round trip*: `SELECT 1` answered in" in first
    _sleep_statements(stage_db.url, 4)
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
    _sleep_statements(stage_db.url, 4)
    bot.runtime.health.run_group("dev", "statements")
    text_ = bot.command("slow-queries --stage dev --limit 5").text()
    assert "Busiest queries on stage *dev*" in text_
    assert "*slow*" in text_ and "4 calls" in text_ and "SELECT pg_sleep($1)" in text_
    alerts = bot.command("alerts").text()
    assert "1 open alert" in alerts and "slow query: mean" in alerts
    assert "nothing is firing" in bot.command("alerts --stage production").text()
    assert "`--limit` must be between 1 and 50" in bot.command("slow-queries --stage dev --limit 500").text()
