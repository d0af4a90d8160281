"""More health scenarios on real PostgreSQL: a query blocked by a prepared transaction (pid 0 to
pg_blocking_pids, no session to cancel), and a stage that cannot be reached whose URL carries a password.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest
from sqlalchemy import text

from bot.console.localslack import LocalSlack
from bot.localpg import LocalPostgres
from tests.conftest import dead_database_url, throwaway_cluster, unique_name
from tests.health_support import Health, health_factory, posted_texts
from tests.scenario_support import Sessions, everything_sent

FAST = {"LONG_QUERY_SECONDS": "1", "IDLE_IN_TRANSACTION_SECONDS": "1", "BLOCKED_QUERY_SECONDS": "1"}


@pytest.fixture
def make_health(bot_db_url: str, fake_slack: LocalSlack) -> Iterator[Callable[..., Health]]:
    yield from health_factory(bot_db_url, fake_slack)


@pytest.fixture(scope="module")
def twophase() -> Iterator[LocalPostgres]:
    with throwaway_cluster("twophase2", max_prepared_transactions="5") as cluster:
        yield cluster


def test_a_query_blocked_by_a_prepared_transaction_names_it_not_pid_0(make_health, twophase):
    name = unique_name("prepared")
    url = twophase.create_database(name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, total int)")
        conn.execute("INSERT INTO orders VALUES (1, 10)")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("UPDATE orders SET total = 11 WHERE id = 1")
        conn.execute("PREPARE TRANSACTION 'payment-42'")  # holds the row lock, owned by no session
    health = make_health({"dev": url}, **FAST, XMIN_HORIZON_SECONDS="3600")
    held = Sessions(url)
    try:
        waiter = held.running("UPDATE orders SET total = 12 WHERE id = 1", "api-server")
        held.wait_until(
            "SELECT count(*) = 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query_start < now() - interval '1.2 s'"
        )
        health.run("activity")
        [row] = [r for r in health.alert_rows() if r.check_name == "blocked"]
        assert row.object.startswith(f"pid {waiter} ")
        assert "by a prepared transaction" in row.title and "pid 0" not in row.title
        assert "gid 'payment-42' prepared" in row.detail and "(gone)" not in row.detail
        assert "ROLLBACK PREPARED" in row.advice and "pg_cancel_backend(0)" not in row.advice
        assert row.actions == []  # nothing to cancel or terminate
        [post] = health.posts()
        assert "prepared transaction" in posted_texts([post])[0]
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ROLLBACK PREPARED 'payment-42'")
        held.wait_until(f"SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = {waiter} AND state = 'active'")
    finally:
        held.close()
        with psycopg.connect(url, autocommit=True) as conn:
            for (gid,) in conn.execute("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"):
                conn.execute(f"ROLLBACK PREPARED '{gid}'")
    for _ in range(2):
        health.run("activity")
    assert [r.state for r in health.alert_rows() if r.check_name == "blocked"] == ["resolved"]
    health.runtime.stages.dispose()
    twophase.drop_database(name)


def test_an_unreachable_stage_never_shows_the_password_of_its_url(make_health):
    url = dead_database_url()
    password = url.split(":")[2].split("@")[0]
    health = make_health({"dev": url})
    for _ in range(3):
        health.run("activity")
    [post] = health.posts()
    assert "unreachable" in posted_texts([post])[0]
    with health.runtime.bot_engine.connect() as conn:
        audit = " ".join(str(r) for r in conn.execute(text("SELECT * FROM audit_log")))
        alerts = " ".join(str(r) for r in conn.execute(text("SELECT * FROM alerts")))
    for where in (everything_sent(health.slack), audit, alerts):
        assert password not in where


def test_a_query_blocked_by_fifteen_sessions_keeps_its_alert_within_limits_and_balanced(make_health, stage_db):
    health = make_health({"dev": stage_db.url}, **FAST)
    held = Sessions(stage_db.url)
    padding = ", ".join(f"'{i}' AS column_number_{i}" for i in range(12))
    try:
        for i in range(15):
            held.idle_in_transaction(f"SELECT count(*), {padding} FROM organization", f"reader-{i:02d}")
        waiter = held.running("BEGIN; LOCK TABLE organization IN ACCESS EXCLUSIVE MODE; COMMIT", "migrator")
        held.wait_until(f"SELECT cardinality(pg_blocking_pids({waiter})) = 15")
        held.wait_until(
            "SELECT count(*) = 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query_start < now() - interval '1.2 s'"
        )
        health.run("activity")
        health.sync()
    finally:
        held.close()
    [row] = [r for r in health.alert_rows() if r.check_name == "blocked"]
    assert row.detail.count("`") % 2 == 0, row.detail[-200:]
    assert "and 10 more (`/mcp sessions --stage dev`)" in row.detail and len(row.detail) < 2500
    [post] = [p for p in health.posts() if "query blocked" in p.payload["text"]]
    for block in post.payload["blocks"]:
        shown = (block.get("text") or {}).get("text", "")
        assert shown.count("`") % 2 == 0, shown[-200:]


def test_an_alert_detail_cut_at_its_limit_never_leaves_a_code_span_open(make_health, stage_db):
    from bot.health.checks import Finding

    health = make_health({"dev": stage_db.url})
    for shift in range(0, 40, 7):  # wherever the limit falls, inside a span or between two
        detail = "x" * (2450 + shift) + " `SELECT " + "a, " * 40 + "b` and `more` after"
        finding = Finding(check="blocked", object=f"o{shift}", severity="warning", title="t", detail=detail, advice="a")
        health.runtime.health.book.apply("dev", ["blocked"], [finding])
    health.deliver()
    assert len(health.posts()) == 6
    for row in health.alert_rows():
        assert row.detail.count("`") % 2 == 0 and "…" in row.detail[-2:]
    for post in health.posts():
        for block in post.payload["blocks"]:
            shown = (block.get("text") or {}).get("text", "")
            assert shown.count("`") % 2 == 0, shown[-120:]
