"""Health alerts: an unreachable stage, replicas sharing the bot database, the other checks, reminders
and delivery; posted once, updated, resolved.

The jobs are driven through `scheduler.run_slot(name, now=...)` with controlled slot times,
the outbox is drained by hand, and Slack is the local fake over HTTP (tests/health_support.py).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator

import psycopg
import pytest
from sqlalchemy import text

from bot.console.localslack import LocalSlack
from bot.health.monitor import job_name
from bot.localpg import LocalPostgres
from bot.scheduler import PRUNE_JOB
from tests.conftest import ALERT_CHANNEL, throwaway_cluster, unique_name
from tests.health_support import SLOW, T0, Health, health_factory, posted_texts, sleep_statements


@pytest.fixture
def make_health(bot_db_url: str, fake_slack: LocalSlack) -> Iterator[Callable[..., Health]]:
    yield from health_factory(bot_db_url, fake_slack)


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
        assert "stage dev is unreachable (connection refused)" in posted_texts([post])[0]
        assert "CRITICAL" in posted_texts([post])[0]
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
    assert "RESOLVED" in posted_texts([update])[0]
    [reply] = health.replies()
    assert "Resolved after" in reply.payload["text"]
    assert reply.payload["thread_ts"] == update.payload["ts"]

    # The held finding now speaks, once: pg_stat_statements is not preloaded (SQLSTATE 55000).
    health.run("statements")
    health.run("statements")
    assert len(health.posts()) == 2
    unavailable = posted_texts(health.posts()[1:])[0]
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


def test_alerts_are_neither_recorded_nor_posted_before_the_slack_layer_gives_them_a_renderer(
    bot_db_url, fake_slack, stage_db, monkeypatch
):
    from bot.config import load_settings
    from bot.health import alerts as alert_book
    from bot.health.checks import Finding
    from bot.runtime import Runtime
    from handlers import render_alerts
    from tests.conftest import base_env

    monkeypatch.setattr(alert_book, "RENDERER_WAIT_S", 0.2)
    env = base_env(bot_db_url=bot_db_url, stages={"dev": stage_db.url}, slack=fake_slack)
    runtime = Runtime(load_settings({**env, "HEALTH_CHECKS": "on"}))  # no Bolt app, no install
    runtime.start(workers=False)
    try:
        finding = Finding(
            check="connections",
            object="database",
            severity="critical",
            title="connections at 97%",
            detail="97 of 100",
            advice="find who holds them",
        )
        book = runtime.health.book
        with pytest.raises(alert_book.AlertsNotRendered):
            book.apply("dev", ["connections"], [finding])
        with pytest.raises(alert_book.AlertsNotRendered):
            book.sync()
        runtime.outbox.drain()
        with runtime.bot_engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alerts")).scalar_one() == 0
        assert not fake_slack.calls_to("chat.postMessage")

        render_alerts.install(runtime)
        assert book.apply("dev", ["connections"], [finding]).fired
        runtime.outbox.drain()
        posted = [c for c in fake_slack.calls_to("chat.postMessage") if c.payload.get("channel") == ALERT_CHANNEL]
        assert len(posted) == 1 and "connections at 97%" in posted[0].payload["text"]
        assert any(block["type"] == "actions" for block in posted[0].payload["blocks"])
    finally:
        runtime.close()


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
    posted = posted_texts([post])[0]
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
        assert statements[0] not in posted_texts([update])[0]
        for statement in statements[1:]:
            conn.execute(statement)
    if "more on smaller tables" in posted:  # more keys than the message lists
        pytest.fail("TEST_SPEC's schema should fit in one message")
    second.run("fk_indexes", slot=4)
    first.run("fk_indexes", slot=4)
    first.sync()
    assert len(first.posts()) == 1
    assert len(first.updates()) == 2
    assert "RESOLVED" in posted_texts(first.updates()[-1:])[0]
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
    assert "CRITICAL" in posted_texts([post])[0] and "connections at" in posted_texts([post])[0]
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
    sleep_statements(stage_db.url, 3)
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
