"""Health scenarios on real PostgreSQL, watched in the fake Slack's alert channel: many sessions at once,
hostile query text and application_name, a query ending between runs, two stages with their own channels,
a chain of three blocked sessions, a role that cannot see other roles' sessions.

Runs are driven with controlled slot times (tests/health_support.py); sessions are held open on the
stage with tests/scenario_support.py, and every state is polled for, never slept on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bot.console.localslack import LocalSlack
from tests.conftest import ALERT_CHANNEL, OPERATOR, message_text, unique_name
from tests.health_support import Health, health_factory, posted_texts
from tests.scenario_support import Sessions, everything_sent, old_enough

FAST = {"LONG_QUERY_SECONDS": "1", "IDLE_IN_TRANSACTION_SECONDS": "1", "BLOCKED_QUERY_SECONDS": "1"}


@pytest.fixture
def make_health(bot_db_url: str, fake_slack: LocalSlack) -> Iterator[Callable[..., Health]]:
    yield from health_factory(bot_db_url, fake_slack)


@pytest.fixture
def sessions(stage_db) -> Iterator[Sessions]:
    held = Sessions(stage_db.url)
    yield held
    held.close()


def _states(health: Health, check: str) -> list[str]:
    return [r.state for r in health.alert_rows() if r.check_name == check]


def test_thirty_long_queries_post_the_oldest_ten_once_each_the_rest_as_one_and_all_resolve(
    make_health, stage_db, sessions
):
    health = make_health({"dev": stage_db.url}, **FAST)
    pids = [sessions.running("SELECT pg_sleep(60)", f"batch-{i:02d}") for i in range(30)]
    sessions.wait_until(old_enough("batch-%", 30))
    health.run("activity")
    health.run("activity")
    health.sync()
    posts = health.posts()
    assert len(posts) == 11  # MAX_FINDINGS per check and run, the oldest first; the other 20 in one alert
    assert len({p.payload["text"] for p in posts}) == 11
    assert all(len(p.payload["text"]) <= 4000 for p in posts)
    assert _states(health, "long_running") == ["firing"] * 11
    [more] = [r for r in health.alert_rows() if r.object == "more"]
    assert more.title == "20 more sessions running longer than 1 s"
    assert "/mcp sessions --stage dev --long" in more.advice
    sessions.end(pids[29])  # 19 more: below the step of 20, an edit
    health.run("activity")
    health.sync()
    [update] = health.updates()
    assert "19 more sessions" in update.payload["text"]
    sessions.end(pids[28])  # 18 more: on the same step, no edit
    health.run("activity")
    health.sync()
    assert len(health.updates()) == 1
    for pid in pids[:28]:
        sessions.end(pid)
    health.run("activity")
    assert _states(health, "long_running") == ["firing"] * 11  # absent once: ALERT_CLEAR_AFTER_RUNS is 2
    health.run("activity")
    health.sync()
    assert _states(health, "long_running") == ["resolved"] * 11
    assert len(health.posts()) == 11
    assert len([r for r in health.replies() if "Resolved after" in r.payload["text"]]) == 11


HOSTILE_SQL = (
    "SELECT pg_sleep(60) /* <!channel> `rm -rf` <https://evil.example|click> alice@example.com"
    " password=hunter2xyz */, 1 AS \"bob@example.com\", 'carol@example.com' AS c"
)


def test_hostile_query_text_and_application_names_are_escaped_masked_and_blanked_everywhere(
    make_health, make_bot, stage_db, sessions
):
    health = make_health({"dev": stage_db.url}, **FAST)
    bot = make_bot({"dev": stage_db.url}, **FAST)
    long_text = HOSTILE_SQL + " /* " + "x" * 50_000 + " */"
    sessions.running(long_text, "<https://evil|click>")
    sessions.running(HOSTILE_SQL, "dave@example.com")
    sessions.idle_in_transaction('SELECT 1 AS "erin@example.com" /* <!here> */', "<!channel>")
    sessions.wait_until(
        "SELECT count(*) = 3 FROM pg_stat_activity WHERE datname = current_database()"
        " AND ((state = 'active' AND query_start < now() - interval '1.2 s')"
        " OR (state = 'idle in transaction' AND state_change < now() - interval '1.2 s'))"
    )
    health.run("activity")
    health.sync()
    shown = posted_texts(health.posts())
    assert len(shown) == 3
    assert any("click" in s for s in shown)  # the name is shown, as text
    sent = [everything_sent(health.slack)]
    health.slack.reset()
    health.run("activity")
    sessions.close()
    health.run("activity")
    health.run("activity")
    health.sync()
    assert len(health.replies()) == 3  # the resolutions in their threads
    sent.append(everything_sent(health.slack))
    health.slack.reset()
    sessions.running(long_text, "<https://evil|click>")
    sessions.running(HOSTILE_SQL, "dave@example.com")
    sessions.wait_until(old_enough("%", 2))
    health.run("activity")
    health.sync()
    bot.sender.event({"type": "app_home_opened", "user": OPERATOR, "tab": "home"})
    bot.slack.wait_for_call("views.publish", lambda c: True, 15, 1)
    bot.command("health --stage dev").text()
    sessions_reply = bot.command("sessions --stage dev").message()
    assert "pg_sleep" in message_text(sessions_reply)
    sent.append(everything_sent(bot.slack))
    for leaked in ("<!channel>", "<!here>", "<https://evil", "hunter2xyz", "rm -rf`"):
        assert not [s for s in sent if leaked in s], leaked
    for person in ("alice", "bob", "carol", "dave", "erin"):
        assert not [s for s in sent if f"{person}@example.com" in s], person
    assert all("&lt;https://evil" in s for s in sent)


def test_a_query_that_ends_between_two_runs_resolves_after_clear_after_runs(make_health, stage_db, sessions):
    health = make_health({"dev": stage_db.url}, **FAST, ALERT_CLEAR_AFTER_RUNS="3")
    pid = sessions.running("SELECT pg_sleep(60)", "report-job")
    sessions.wait_until(old_enough("report-job", 1))
    health.run("activity")
    [post] = health.posts()
    sessions.end(pid)
    for _ in range(2):
        health.run("activity")
        health.sync()
        assert _states(health, "long_running") == ["firing"]
        assert health.replies() == [] and health.updates() == []
    health.run("activity")
    health.sync()
    assert _states(health, "long_running") == ["resolved"]
    [update] = health.updates()
    assert update.payload["ts"] and "RESOLVED" in posted_texts([update])[0]
    [reply] = health.replies()
    assert reply.payload["thread_ts"] == update.payload["ts"]
    assert health.posts() == [post]


def test_the_same_condition_on_two_stages_is_two_alerts_each_in_its_stages_channel(make_health, make_stage_db):
    dev, prod = make_stage_db(), make_stage_db()
    health = make_health({"dev": dev.url, "prod": prod.url}, **FAST, ALERT_CHANNEL_PROD="CPRODALRT")
    held = [Sessions(dev.url), Sessions(prod.url)]
    try:
        for s in held:
            s.running("SELECT pg_sleep(60)", "report-job")
        for s in held:
            s.wait_until(old_enough("report-job", 1))
        health.run("activity", "dev")
        health.run("activity", "prod")
        health.run("activity", "dev")
        health.run("activity", "prod")
        health.sync()
        [dev_post] = health.posts(ALERT_CHANNEL)
        [prod_post] = health.posts("CPRODALRT")
        assert "stage *dev*" in posted_texts([dev_post])[0]
        assert "stage *prod*" in posted_texts([prod_post])[0]
        rows = [r for r in health.alert_rows() if r.check_name == "long_running"]
        assert sorted((r.stage, r.channel, r.state) for r in rows) == [
            ("dev", ALERT_CHANNEL, "firing"),
            ("prod", "CPRODALRT", "firing"),
        ]
    finally:
        for s in held:
            s.close()
    for _ in range(2):
        health.run("activity", "prod")
    health.sync()
    assert {(r.stage, r.state) for r in health.alert_rows() if r.check_name == "long_running"} == {
        ("dev", "firing"),
        ("prod", "resolved"),
    }
    [reply] = health.replies()
    assert reply.payload["channel"] == "CPRODALRT"


def test_a_chain_of_three_names_the_session_at_its_head(make_health, stage_db, sessions):
    health = make_health({"dev": stage_db.url}, **FAST)
    head, _ = sessions.idle_in_transaction("LOCK TABLE organization IN ROW EXCLUSIVE MODE", "billing-worker")
    middle = sessions.running("ALTER TABLE organization ADD COLUMN x int", "migrator")
    sessions.wait_until(f"SELECT cardinality(pg_blocking_pids({middle})) = 1")
    tail = sessions.running("SELECT count(*) FROM organization", "api-server")
    sessions.wait_until(
        "SELECT count(*) = 2 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        " AND query_start < now() - interval '1.2 s'"
    )
    health.run("activity")
    blocked = {r.object.split()[1]: r for r in health.alert_rows() if r.check_name == "blocked"}
    assert set(blocked) == {str(middle), str(tail)}
    assert _states(health, "long_running") == []  # a waiting session is one alert: the blocked one
    tail_alert = blocked[str(tail)]
    assert f"pid {head}" in tail_alert.detail  # who blocks whom, down to the head of the chain
    assert f"pid {middle}" in tail_alert.detail
    assert [a["target"]["pid"] for a in tail_alert.actions] == [head] * len(tail_alert.actions)
    assert [a["target"]["pid"] for a in blocked[str(middle)].actions] == [head] * len(blocked[str(middle)].actions)


def test_a_role_without_pg_read_all_stats_is_told_it_cannot_see_other_roles_sessions(
    make_health, make_bot, stage_db, sessions
):
    role = unique_name("watcher")
    with psycopg.connect(stage_db.url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD 'pw'")
        conn.execute(f'GRANT CONNECT ON DATABASE "{stage_db.name}" TO "{role}"')
    url = make_url(stage_db.url).set(username=role, password="pw").render_as_string(hide_password=False)
    health = make_health({"dev": url}, **FAST)
    sessions.running("SELECT pg_sleep(60)", "report-job")
    sessions.wait_until(old_enough("report-job", 1))
    health.run("activity")
    listed = message_text(make_bot({"dev": url}, **FAST).command("sessions --stage dev").message(timeout=30))
    assert "Nothing over the thresholds" in listed and "sees only its own sessions" in listed
    assert "GRANT pg_read_all_stats TO &lt;role&gt;;" in listed
    # One alert for the one missing grant: it speaks for the session checks and the vacuum horizon's.
    [unavailable] = [r for r in health.alert_rows() if r.check_name.startswith("unavailable:")]
    assert unavailable.check_name == "unavailable:pg_read_all_stats"
    assert "Sessions" in unavailable.title and "Vacuum horizon" in unavailable.title
    assert "pg_read_all_stats" in unavailable.title
    assert _states(health, "long_running") == []  # it cannot see the other role's query, and says so
    health.run("activity")
    posted = len(health.posts())
    health.run("activity")
    assert len(health.posts()) == posted  # said once
    with psycopg.connect(stage_db.url, autocommit=True) as conn:
        conn.execute(f'GRANT pg_read_all_stats TO "{role}"')
    health.run("activity")
    assert [r.state for r in health.alert_rows() if r.check_name == "unavailable:pg_read_all_stats"] == ["resolved"]
    assert _states(health, "long_running") == ["firing"]


HOSTILE_COMMENT = "/* <!channel> <https://evil.example|click> frank@example.com password=hunter2xyz ``` */"


def test_a_slow_statement_with_a_hostile_comment_is_escaped_in_its_alert_and_every_command(
    make_health, make_bot, stage_db
):
    health = make_health({"dev": stage_db.url}, SLOW_QUERY_MS="30", SLOW_QUERY_MIN_CALLS="3")
    bot = make_bot({"dev": stage_db.url}, SLOW_QUERY_MS="30", SLOW_QUERY_MIN_CALLS="3")
    health.run("statements")
    with psycopg.connect(stage_db.url, autocommit=True, application_name="<!here>") as conn:
        for _ in range(4):
            conn.execute(f"SELECT pg_sleep(0.05) {HOSTILE_COMMENT}")  # pg_stat_statements keeps the comment
    health.run("statements")
    [post] = health.posts()
    assert "pg_sleep" in posted_texts([post])[0]
    sent = [everything_sent(health.slack)]
    bot.command("slow-queries --stage dev").text()
    bot.command("alerts --stage dev").text()
    bot.sender.event({"type": "app_home_opened", "user": OPERATOR, "tab": "home"})
    bot.slack.wait_for_call("views.publish", lambda c: True, 15, 1)
    sent.append(everything_sent(bot.slack))
    for leaked in ("<!channel>", "<!here>", "<https://evil", "hunter2xyz", "frank@example.com", "```"):
        assert not [s for s in sent if leaked in s], leaked


def test_a_role_named_by_an_email_is_masked_in_alerts_sessions_and_the_audit(make_health, make_bot, stage_db):
    role = unique_name("grace") + "@example.com"  # RDS IAM and SSO roles are often people's addresses
    with psycopg.connect(stage_db.url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        health = make_health({"dev": stage_db.url}, **FAST)
        bot = make_bot({"dev": stage_db.url}, **FAST)
        held = Sessions(make_url(stage_db.url).set(username=role).render_as_string(hide_password=False))
        try:
            held.running("SELECT pg_sleep(60)", "report-job")
            sessions_wait = Sessions(stage_db.url)
            sessions_wait.wait_until(old_enough("report-job", 1))
            health.run("activity")
            [post] = health.posts()
            assert "g***@example.com" in posted_texts([post])[0]
            assert "report-job" in message_text(bot.command("sessions --stage dev").message())
            bot.command("health --stage dev").text()
        finally:
            held.close()
        for _ in range(2):
            health.run("activity")
        health.sync()
        with health.runtime.bot_engine.connect() as conn:
            audit = " ".join(str(r) for r in conn.execute(text("SELECT * FROM audit_log")))
            alerts = " ".join(str(r) for r in conn.execute(text("SELECT * FROM alerts")))
        assert "g***@example.com" in alerts
        for where in (everything_sent(health.slack), audit, alerts):
            assert role not in where
    finally:
        with psycopg.connect(stage_db.url, autocommit=True) as conn:
            conn.execute(f'DROP ROLE "{role}"')


def test_a_client_of_another_role_calling_itself_mcp_ops_cannot_hide_from_the_checks(make_health, stage_db, sessions):
    role = unique_name("sneaky")
    with psycopg.connect(stage_db.url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    health = make_health({"dev": stage_db.url}, **FAST)
    sneaky = Sessions(make_url(stage_db.url).set(username=role).render_as_string(hide_password=False))
    try:
        pid = sneaky.running("SELECT pg_sleep(60)", "mcp-ops/dev")
        ours = sessions.running("SELECT pg_sleep(60)", "mcp-ops/dev")  # the stage's own role: the bot's session
        sessions.wait_until(old_enough("mcp-ops/dev", 2))
        health.run("activity")
        [row] = [r for r in health.alert_rows() if r.check_name == "long_running"]
        assert row.object.startswith(f"pid {pid} ") and f"pid {ours} " not in row.title
        assert [a["label"] for a in row.actions] == ["Cancel query", "Terminate session"]
    finally:
        sneaky.close()
        with psycopg.connect(stage_db.url, autocommit=True) as conn:
            conn.execute(f'DROP ROLE "{role}"')
