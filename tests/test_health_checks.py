"""The DBA's checks (issue 17), each induced on real PostgreSQL: one alert, then its resolution.

Conditions that are cluster-wide (replication slots) or need a server setting (prepared
transactions need max_prepared_transactions) live on a cluster of this module's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from bot.console.localslack import LocalSlack
from bot.localpg import LocalPostgres
from tests.conftest import eventually, throwaway_cluster, unique_name
from tests.health_support import Health, health_factory, posted_texts


@pytest.fixture
def make_health(bot_db_url: str, fake_slack: LocalSlack) -> Iterator[Callable[..., Health]]:
    yield from health_factory(bot_db_url, fake_slack)


@pytest.fixture(scope="module")
def twophase() -> Iterator[LocalPostgres]:
    """A cluster with two-phase commit allowed; replication slots made here are seen by no other test."""
    with throwaway_cluster("twophase", max_prepared_transactions="5") as cluster:
        yield cluster


@pytest.fixture
def plain_db(pg: LocalPostgres) -> Iterator[str]:
    """An empty database on the shared cluster."""
    name = unique_name("plain")
    yield pg.create_database(name)
    pg.drop_database(name)


def run(url: str, *statements: str, **kwargs: Any) -> None:
    with psycopg.connect(url, autocommit=True, **kwargs) as conn:
        for statement in statements:
            conn.execute(statement)


def server_version(url: str) -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute("SHOW server_version_num").fetchone()[0])


def firing(health: Health) -> list[Any]:
    return [r for r in health.alert_rows() if r.state == "firing"]


def resolves(health: Health, group: str, check: str, runs: int = 2) -> None:
    """`runs` more runs of `group`: the alert of `check` resolves, and says so in its thread, once."""
    for _ in range(runs):
        health.run(group)
    health.sync()
    [row] = [r for r in health.alert_rows() if r.check_name == check]
    assert row.state == "resolved"
    [reply] = [r for r in health.replies() if r.payload["thread_ts"] == row.ts]
    assert "Resolved after" in reply.payload["text"]
    assert "RESOLVED" in posted_texts([u for u in health.updates() if u.payload["ts"] == row.ts][-1:])[0]


# -- sequences --------------------------------------------------------------------------------------


def test_a_sequence_near_its_columns_maximum_alerts_once_and_resolves_when_widened(make_health, plain_db):
    run(
        plain_db,
        "CREATE TABLE counters (id serial PRIMARY KEY, note text)",
        "CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY, at timestamptz)",
        "CREATE SEQUENCE roomy AS bigint",
        "SELECT setval('roomy', 2000000000)",  # far from bigint's end
        "SELECT setval('counters_id_seq', 2040109465)",  # 95% of integer
    )
    health = make_health({"dev": plain_db})
    health.run("maintenance")
    health.run("maintenance")
    [post] = health.posts()
    [row] = firing(health)
    assert (row.check_name, row.object, row.severity) == ("sequences", "public.counters_id_seq", "critical")
    posted = posted_texts([post])[0]
    assert "public.counters.id (integer) has used 95% of its values" in posted
    assert "107,374,182 values left" in posted
    assert "ALTER TABLE public.counters ALTER COLUMN id TYPE bigint;" in posted
    assert "ALTER SEQUENCE public.counters_id_seq AS bigint;" in posted

    run(plain_db, "ALTER TABLE counters ALTER COLUMN id TYPE bigint", "ALTER SEQUENCE counters_id_seq AS bigint")
    resolves(health, "maintenance", "sequences", runs=1)  # widened: its absence is proof
    assert len(health.posts()) == 1

    # An identity column at 80% of its type: a warning, with the rate of use from a kept sample.
    run(plain_db, "ALTER TABLE events ALTER COLUMN id TYPE integer", "SELECT setval('events_id_seq', 1717986918)")
    with health.runtime.bot_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO health_samples (stage, kind, object, taken_at, value)"
                " VALUES ('dev', 'sequence', 'public.events_id_seq', now() - interval '2 days', 1717786918)"
            )
        )
    health.run("maintenance")
    [_, identity] = health.posts()
    posted = posted_texts([identity])[0]
    assert "public.events.id (integer, identity) has used 80% of its values" in posted
    assert "about 100,000 values a day" in posted and "WARNING" in posted


# -- what holds back vacuum ----------------------------------------------------------------------------


def test_a_prepared_transaction_holding_the_vacuum_horizon_alerts_once_and_resolves(make_health, twophase):
    url = twophase.create_database(unique_name("horizon"))
    run(url, "CREATE TABLE payments (id int PRIMARY KEY, amount int)")
    health = make_health({"dev": url}, XMIN_HORIZON_SECONDS="0")
    health.run("activity")
    assert health.posts() == []  # nothing holds it back

    coordinator = psycopg.connect(url, application_name="payments-coordinator")
    coordinator.execute("INSERT INTO payments VALUES (1, 100)")
    coordinator.execute("PREPARE TRANSACTION 'pay-1'")
    coordinator.close()  # the session is gone; the prepared transaction stays
    try:
        health.run("activity")
        health.run("activity")
        [post] = health.posts()
        [row] = firing(health)
        assert (row.check_name, row.object) == ("vacuum_horizon", "prepared pay-1")
        posted = posted_texts([post])[0]
        assert "vacuum held back by prepared transaction pay-1" in posted
        assert "COMMIT PREPARED 'pay-1';" in posted and "ROLLBACK PREPARED 'pay-1';" in posted
    finally:
        run(url, "ROLLBACK PREPARED 'pay-1'")
    resolves(health, "activity", "vacuum_horizon", runs=1)  # the holder is gone: its absence is proof
    assert len(health.posts()) == 1
    twophase.drop_database(url.rsplit("/", 1)[1])


def test_a_session_holding_the_horizon_waits_for_the_threshold(make_health, twophase):
    url = twophase.create_database(unique_name("horizon"))
    run(url, "CREATE TABLE t (id int)")
    health = make_health({"dev": url})  # XMIN_HORIZON_SECONDS defaults to an hour
    reader = psycopg.connect(url, application_name="report-job")
    try:
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT count(*) FROM t")  # holds its snapshot, idle in transaction
        summary = health.runtime.health.run_now(health.runtime.stages.get("dev"))
        [report] = [r for r in summary.round.reports if r.check == "vacuum_horizon"]
        assert report.status == "ok" and report.summary.startswith("held by backend (")
        assert not report.findings
    finally:
        reader.close()
    twophase.drop_database(url.rsplit("/", 1)[1])


# -- replication slots --------------------------------------------------------------------------------


def test_an_inactive_physical_slot_alerts_once_after_its_time_and_resolves_when_dropped(make_health, twophase):
    url = twophase.create_database(unique_name("slots"))
    run(url, "SELECT pg_create_physical_replication_slot('gone_standby', true)")
    try:
        health = make_health({"dev": url}, REPLICATION_SLOT_INACTIVE_SECONDS="3600")
        health.run("activity")
        health.run("activity")
        if server_version(url) >= 170000:
            # inactive_since says it has been inactive for seconds: nothing yet. Past the threshold:
            assert health.alert_rows() == []
            slots = health.slots
            health = make_health({"dev": url}, REPLICATION_SLOT_INACTIVE_SECONDS="0")
            health.slots = slots  # the next slots of the same jobs
        else:
            # Before 17 nothing says since when: it must be seen inactive that long, pending meanwhile.
            [row] = health.alert_rows()
            assert (row.check_name, row.object, row.state) == ("replication_slots", "slot gone_standby", "pending")
            assert health.posts() == []
            with health.runtime.bot_engine.begin() as conn:
                conn.execute(text("UPDATE alerts SET first_seen_at = first_seen_at - interval '61 minutes'"))
        health.run("activity")
        health.run("activity")
        [post] = health.posts()
        posted = posted_texts([post])[0]
        assert "inactive replication slot gone_standby (physical)" in posted
        assert "pg_drop_replication_slot('gone_standby')" in posted
        assert [r.state for r in health.alert_rows()] == ["firing"]
    finally:
        run(url, "SELECT pg_drop_replication_slot('gone_standby')")
    resolves(health, "activity", "replication_slots", runs=1)  # dropped: its absence is proof
    assert len(health.posts()) == 1
    twophase.drop_database(url.rsplit("/", 1)[1])


# -- cache hit ratio -----------------------------------------------------------------------------------------


def test_the_cache_hit_ratio_of_large_tables(make_health, twophase):
    name = unique_name("cache")
    url = twophase.create_database(name)
    run(
        url,
        "CREATE TABLE big (id int, pad text)",
        "INSERT INTO big SELECT i, repeat('x', 200) FROM generate_series(1, 5000) i",
        "ANALYZE big",
    )
    twophase.stop()  # shared buffers start empty: the next scan reads every block
    twophase.start()
    run(url, "SELECT pg_stat_force_next_flush()", "SELECT count(*) FROM big")
    health = make_health({"dev": url}, CACHE_HIT_MIN_TABLE_MB="0", CACHE_HIT_WARN_PERCENT="100")
    stage = health.runtime.stages.get("dev")

    def report() -> Any:
        [found] = [r for r in health.runtime.health.run_now(stage).round.reports if r.check == "cache_hit"]
        return found

    [finding] = eventually(lambda: report().findings, timeout=20)
    assert finding.title.startswith("cache hit ratio") and "public.big" in finding.detail
    health.runtime.stages.dispose()
    twophase.drop_database(name)


# -- a role that cannot see everything -------------------------------------------------------------------


def test_a_role_without_grants_is_told_once_what_it_needs_and_the_other_checks_run(make_health, twophase):
    name = unique_name("limited")
    url = twophase.create_database(name)
    role = unique_name("app_role")
    run(
        url,
        f"CREATE ROLE {role} LOGIN",
        "CREATE TABLE orders (id serial PRIMARY KEY)",
        "SELECT setval('orders_id_seq', 2040109465)",
        "REVOKE EXECUTE ON FUNCTION pg_database_size(name) FROM PUBLIC",  # a hardened server
    )
    other = psycopg.connect(url, application_name="someone-else")  # a superuser's session: hidden from the role
    other.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    other.execute("SELECT 1")
    try:
        health = make_health({"dev": url.replace("postgres@", f"{role}@")}, XMIN_HORIZON_SECONDS="0")
        for _ in range(3):
            health.run("activity")
            health.run("maintenance")
        texts = posted_texts(health.posts())
        assert len(texts) == 3, texts
        # One missing grant, one alert: it names both checks it limits and the GRANT to run once.
        both = "Sessions (long-running, idle in transaction, blocked) and Vacuum horizon: unavailable, needs"
        [grant] = [t for t in texts if "unavailable, needs pg_read_all_stats" in t]
        assert both in grant and "GRANT pg_read_all_stats TO &lt;the role" in grant, grant
        assert "other roles' sessions have held their transactions" in grant  # what the horizon check misses
        assert "idle-in-transaction and blocked sessions are not found" in grant  # what the session checks miss
        assert sum("Sequences: unavailable, needs SELECT on sequences" in t for t in texts) == 1
        assert any("GRANT SELECT ON ALL SEQUENCES IN SCHEMA" in t for t in texts)
        # The hidden session still holds the horizon: named by its pid, its age and query hidden.
        hidden_pid = other.info.backend_pid
        assert sum(f"vacuum held back by session pid {hidden_pid} (another role's)" in t for t in texts) == 1
        # Once it is gone, its alert resolves; "unavailable" is about the role, not that session: it stays, unsaid.
        other.rollback()
        health.run("activity")
        health.run("activity")
        states = {(r.check_name, r.state) for r in health.alert_rows()}
        assert ("vacuum_horizon", "resolved") in states and ("unavailable:pg_read_all_stats", "firing") in states
        assert not [c for c, _ in states if c in ("unavailable:vacuum_horizon", "unavailable:long_running")]
        other.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        other.execute("SELECT 1")  # holds a snapshot again
        assert len(health.posts()) == 3
        # A refused function (SQLSTATE 42501) is the same: said once, with the grant; not an error run after run.
        for _ in range(3):
            health.run("fk_indexes")
        [denied] = posted_texts(health.posts()[3:])
        assert "Size growth: unavailable, needs EXECUTE on function pg_database_size" in denied
        assert "GRANT EXECUTE ON FUNCTION pg_database_size TO &lt;role&gt;;" in denied  # escaped mrkdwn
        assert not [r for r in health.alert_rows() if r.check_name.startswith("check_failing:")]

        run(
            url,
            f"GRANT SELECT ON orders_id_seq TO {role}",
            f"GRANT pg_read_all_stats TO {role}",
            f"GRANT EXECUTE ON FUNCTION pg_database_size(name) TO {role}",
        )
        health.run("maintenance")
        health.run("activity")
        health.run("fk_indexes")
        states = {(r.check_name, r.state) for r in health.alert_rows()}
        for check in ("sequences", "pg_read_all_stats", "size_growth"):
            assert (f"unavailable:{check}", "resolved") in states
        assert ("sequences", "firing") in states and ("vacuum_horizon", "firing") in states
    finally:
        other.close()
        health.runtime.stages.dispose()
        twophase.drop_database(name)


# -- /mcp health and App Home ------------------------------------------------------------------------------------


def test_the_health_command_shows_every_check(make_bot, stage_db):
    from bot.health.checks import REGISTRY

    bot = make_bot({"dev": stage_db.url})
    text_ = bot.command("health --stage dev").text()
    for spec in REGISTRY:
        assert f"*{spec.label}*:" in text_, spec.label
    assert "made redundant by public.walkthrough_step_completions_uq" in text_


def test_app_home_shows_each_stages_worst_open_finding(make_bot, stage_db):
    from bot.health.checks import Finding
    from tests.conftest import OPERATOR, message_text

    bot = make_bot({"dev": stage_db.url, "staging": stage_db.url})

    def finding(check: str, severity: str, title: str) -> Finding:
        return Finding(check=check, object="o", severity=severity, title=title, detail="d", advice="a")  # type: ignore[arg-type]

    book = bot.runtime.health.book
    book.apply("dev", ["unused_index"], [finding("unused_index", "info", "an unused index")])
    book.apply("dev", ["sequences"], [finding("sequences", "critical", "a sequence at 95%")])
    book.apply("dev", ["stale_vacuum"], [finding("stale_vacuum", "warning", "a table full of dead rows")])
    book.apply("staging", ["multixact"], [finding("multixact", "warning", "multixact at 60%")])
    bot.sender.event({"type": "app_home_opened", "user": OPERATOR, "tab": "home"})
    [view] = [c.payload["view"] for c in bot.slack.wait_for_call("views.publish", lambda c: True, 15, 1)]
    shown = message_text(view)
    assert "a sequence at 95%" in shown and "multixact at 60%" in shown
    assert "an unused index" not in shown and "a table full of dead rows" not in shown
    assert "and 2 more: `/mcp alerts --stage dev`" in shown
    assert "more: `/mcp alerts --stage staging`" not in shown


def test_a_check_the_server_does_not_offer_is_said_once_not_failing_run_after_run(make_health, plain_db, monkeypatch):
    from bot.health.checks import ACTIVITY_CHECKS, CheckSpec
    from bot.health.monitor import GROUPS, Group

    def withheld(conn: Any, ctx: Any) -> Any:  # as a managed service answers for a function it withholds
        conn.execute(
            text(
                "DO $$ BEGIN RAISE EXCEPTION 'pg_current_wal_lsn() is not supported here'"
                " USING ERRCODE = 'feature_not_supported'; END $$"
            )
        )

    spec = CheckSpec("withheld", "Withheld", withheld, "activity")
    monkeypatch.setitem(GROUPS, "activity", Group("activity", (*ACTIVITY_CHECKS, spec), connectivity=True))
    health = make_health({"dev": plain_db}, CHECK_FAILING_AFTER_RUNS="2")
    for _ in range(3):
        health.run("activity")
    [post] = health.posts()
    posted = posted_texts([post])[0]
    assert "Withheld: unavailable, needs a feature this server does not offer" in posted
    assert "pg_current_wal_lsn() is not supported here" in posted
    assert [r.check_name for r in health.alert_rows()] == ["unavailable:withheld"]


def test_multixact_age_is_reported_as_transaction_ids_are(make_health, plain_db):
    from dataclasses import replace

    from bot.health.checks import CheckContext
    from bot.health.checks.wraparound import check_multixact

    health = make_health({"dev": plain_db})
    settings = health.runtime.settings.health
    stage = health.runtime.stages.get("dev")
    with stage.read() as conn:
        assert check_multixact(conn, CheckContext("dev", settings)).status == "ok"  # a new database: age ~0
        strict = replace(settings, checks=replace(settings.checks, multixact_warn_pct=0))
        [finding] = check_multixact(conn, CheckContext("dev", strict)).findings
    assert finding.check == "multixact" and finding.title.startswith("MultiXact ID wraparound:")
    assert "VACUUM (FREEZE" in finding.advice and "FOR SHARE" in finding.advice
