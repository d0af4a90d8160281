"""Health checks when things go wrong: a failing check, a frozen or slow stage, a role that sees
too little, an outdated extension; and what every health connection is (read-only, its time
limit, its name).

Jobs are driven as in tests/test_health.py (`Health.run` with controlled slot times).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from bot.console.localslack import LocalSlack
from bot.health import statements
from bot.health.checks import ACTIVITY_CHECKS, CheckContext, CheckReport, CheckSpec
from bot.health.monitor import GROUPS, Group
from bot.localpg import LocalPostgres
from bot.metrics import registry
from tests.conftest import throwaway_cluster, unique_name
from tests.health_support import SLOW, Health, health_factory, posted_texts, sleep_statements


@pytest.fixture
def make_health(bot_db_url: str, fake_slack: LocalSlack) -> Iterator[Callable[..., Health]]:
    yield from health_factory(bot_db_url, fake_slack)


def _with_activity_check(monkeypatch: pytest.MonkeyPatch, spec: CheckSpec) -> None:
    """Run `spec` first in the scheduled activity group (a test hook inside a real round)."""
    monkeypatch.setitem(GROUPS, "activity", Group("activity", (spec, *ACTIVITY_CHECKS), connectivity=True))


def _slow_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pg_stat_statements snapshot read takes 2 s: past any HEALTH_STATEMENT_TIMEOUT_MS the tests set."""
    real = statements.take_snapshot

    def slow(conn: Connection) -> statements.Snapshot:
        conn.execute(text("SELECT pg_sleep(2)"))
        return real(conn)

    monkeypatch.setattr(statements, "take_snapshot", slow)


# -- a failing check -------------------------------------------------------------------------------


def test_a_failing_slow_query_check_is_an_error_of_its_own_in_the_health_command(make_bot, stage_db, monkeypatch):
    _slow_snapshot(monkeypatch)
    bot = make_bot({"dev": stage_db.url}, HEALTH_STATEMENT_TIMEOUT_MS="500")
    text_ = bot.command("health --stage dev").text()
    assert "unreachable" not in text_
    for label in ("Round trip", "Connections", "Long-running queries", "Blocked queries", "Wraparound"):
        assert f"*{label}*:" in text_
    assert "Foreign keys without an index" in text_
    assert re.search(r":warning: \*Slow queries\*: the query on stage dev ran past its time limit", text_)


def test_a_check_failing_run_after_run_raises_one_warning_and_resolves_when_it_works(
    make_health, stage_db, monkeypatch
):
    health = make_health({"dev": stage_db.url}, **SLOW, HEALTH_STATEMENT_TIMEOUT_MS="500", CHECK_FAILING_AFTER_RUNS="2")
    health.run("statements")
    sleep_statements(stage_db.url, 4)
    health.run("statements")
    assert len(health.posts()) == 1  # the slow query

    def stored_at() -> Any:
        with health.runtime.bot_engine.connect() as conn:
            return conn.execute(text("SELECT taken_at FROM statement_snapshots WHERE stage = 'dev'")).scalar_one()

    before = stored_at()
    _slow_snapshot(monkeypatch)
    health.run("statements")  # fails: nothing is said yet, its alert stays as it is, no snapshot is stored
    assert len(health.posts()) == 1 and health.updates() == [] and health.replies() == []
    assert stored_at() == before
    health.run("statements")
    [_, failing] = health.posts()
    failing_text = posted_texts([failing])[0]
    assert "WARNING" in failing_text and "health check Slow queries keeps failing" in failing_text
    assert "ran past its time limit" in failing_text and "HEALTH_STATEMENT_TIMEOUT_MS" in failing_text
    health.run("statements")
    assert len(health.posts()) == 2 and health.replies() == []  # said once
    states = {r.check_name: r.state for r in health.alert_rows()}
    assert states == {"slow_queries": "firing", "check_failing:slow_queries": "firing"}
    with health.runtime.bot_engine.connect() as conn:
        outcomes = conn.execute(text("SELECT DISTINCT outcome FROM job_runs")).scalars().all()
    assert outcomes == ["ok"]  # the job itself did its work every time

    monkeypatch.undo()
    health.run("statements")  # works again: "check failing" resolves at once, the slow query is missed once
    rows = {r.check_name: r for r in health.alert_rows()}
    assert {name: row.state for name, row in rows.items()} == {
        "slow_queries": "firing",
        "check_failing:slow_queries": "resolved",
    }
    [reply] = health.replies()
    assert reply.payload["thread_ts"] == rows["check_failing:slow_queries"].ts
    assert "Resolved after" in reply.payload["text"] and "keeps failing" in reply.payload["text"]


def test_a_check_the_database_refuses_says_what_it_refused_not_an_exception_class(make_health, stage_db, monkeypatch):
    def refused(conn: Connection, ctx: CheckContext) -> CheckReport:
        conn.execute(text("DO $$ BEGIN RAISE EXCEPTION 'the stats view is being rebuilt'; END $$"))
        return CheckReport("refused", "Refused", "ok", "not reached")

    _with_activity_check(monkeypatch, CheckSpec("refused", "Refused", refused))
    health = make_health({"dev": stage_db.url}, CHECK_FAILING_AFTER_RUNS="1")
    health.run("activity")
    [failing] = [t for t in posted_texts(health.posts()) if "health check Refused keeps failing" in t]
    assert "a trigger or function refused: the stats view is being rebuilt" in failing, failing
    assert "RaiseException" not in failing and "P0001" not in failing


# -- what a health connection is ---------------------------------------------------------------------


def test_health_connections_are_read_only_with_their_timeout_and_name(make_health, stage_db, monkeypatch):
    seen: dict[str, Any] = {}
    observer = psycopg.connect(stage_db.url, autocommit=True)

    def probe(conn: Connection, ctx: CheckContext) -> CheckReport:
        seen["read_only"] = conn.execute(text("SHOW transaction_read_only")).scalar_one()
        seen["timeout"] = conn.execute(text("SHOW statement_timeout")).scalar_one()
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        seen["name"] = observer.execute(
            "SELECT application_name FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
        with pytest.raises(DBAPIError) as caught, conn.begin_nested():
            conn.execute(text("CREATE TABLE health_wrote_here (id int)"))
        seen["write"] = caught.value.orig.sqlstate
        params = conn.connection.dbapi_connection.info.get_parameters()  # what libpq connected with
        seen["tcp"] = {k: params.get(k) for k in ("keepalives", "keepalives_idle", "tcp_user_timeout")}
        return CheckReport("probe", "Probe", "ok", "probed")

    _with_activity_check(monkeypatch, CheckSpec("probe", "Probe", probe))
    health = make_health({"dev": stage_db.url}, HEALTH_STATEMENT_TIMEOUT_MS="1234")
    try:
        assert health.run("activity")
    finally:
        observer.close()
    assert seen == {
        "read_only": "on",
        "timeout": "1234ms",
        "name": ("mcp-ops/health/dev",),
        "write": "25006",  # read_only_sql_transaction
        # A peer that vanishes mid-round is noticed by TCP within about STAGE_CONNECT_TIMEOUT (2 s here).
        "tcp": {"keepalives": "1", "keepalives_idle": "2", "tcp_user_timeout": "2000"},
    }


def test_connections_between_the_warning_and_critical_thresholds_post_a_warning(make_health, stage_db):
    health = make_health({"dev": stage_db.url}, CONNECTIONS_WARN_PERCENT="1", CONNECTIONS_CRITICAL_PERCENT="100")
    health.run("activity")
    [post] = health.posts()
    posted = posted_texts([post])[0]
    assert posted.startswith("[WARNING] dev: connections at")
    assert ":large_orange_circle: *WARNING* on stage *dev*" in posted
    assert "Thresholds: warning 1%, critical 100%" in posted


# -- round trip ------------------------------------------------------------------------------------


class DelayingProxy:
    """A TCP proxy to a database that holds every answer back for `delay` seconds: a slow network."""

    def __init__(self, port: int, delay: float) -> None:
        self.target = port
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, 0.0), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self.delay), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, delay: float) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                time.sleep(delay)
                sink.sendall(data)
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            with suppress(OSError):
                sock.close()


def test_round_trip_latency_is_select_1_alone_exported_and_warned_about(make_health, stage_db):
    delay = 0.15
    port = int(stage_db.url.rsplit(":", 1)[1].split("/")[0])
    proxy = DelayingProxy(port, delay)
    slow_url = stage_db.url.replace(f":{port}/", f":{proxy.port}/")
    health = make_health({"dev": slow_url}, STAGE_LATENCY_WARN_MS="100")
    try:
        result = health.runtime.health.run_group("dev", "activity")
        health.deliver()
        # Connecting and starting the read-only transaction take several round trips; SELECT 1 takes one.
        # Every round trip through the proxy takes at least `delay`: SELECT 1 alone is one of them,
        # connecting (startup, auth, settings) several, so the two are told apart without a stopwatch.
        assert result.latency_ms / 1000 >= delay
        assert result.connect_ms is not None and result.connect_ms / 1000 >= 3 * delay
        assert result.latency_ms < result.connect_ms
        gauge = registry.get_sample_value("mcp_ops_stage_latency_seconds", {"stage": "dev"})
        assert gauge == pytest.approx(result.latency_ms / 1000)
        [post] = health.posts()
        posted = posted_texts([post])[0]
        assert "WARNING" in posted and "slow round trip: `SELECT 1` took" in posted
        assert "(threshold 100 ms)" in posted
        [row] = health.alert_rows()
        assert (row.check_name, row.state) == ("latency", "firing")
    finally:
        health.runtime.stages.dispose()
        proxy.close()


# -- a frozen stage -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def freezable_cluster() -> Iterator[LocalPostgres]:
    """A cluster of its own whose processes a test may stop (SIGSTOP) and continue."""
    with throwaway_cluster("frozen", shared_preload_libraries="") as cluster:
        yield cluster
        _signal_cluster(cluster, signal.SIGCONT)


def _signal_cluster(cluster: LocalPostgres, signum: signal.Signals) -> None:
    """`signum` to the postmaster first (so it forks nothing new), then to every process it started."""
    pid_file = cluster.data_dir / "postmaster.pid"
    if not pid_file.exists():
        return
    postmaster = int(pid_file.read_text().split()[0])
    with suppress(ProcessLookupError):
        os.kill(postmaster, signum)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
            with suppress(ProcessLookupError):
                os.kill(int(entry), signum)


def _run_unhung(health: Health, group: str) -> None:
    """Run `group` in a thread, so a hung round fails the test instead of hanging the suite."""
    thread = threading.Thread(target=health.run, args=(group,), daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), f"the {group} round hung"


def test_a_stage_that_freezes_mid_round_is_cut_off_and_alerts_unreachable(make_health, freezable_cluster, monkeypatch):
    url = freezable_cluster.create_database(unique_name("frozen"))
    health = make_health({"dev": url}, HEALTH_STATEMENT_TIMEOUT_MS="500", STAGE_CONNECT_TIMEOUT="2")
    health.run("activity")
    assert health.posts() == []

    def freeze(conn: Connection, ctx: CheckContext) -> CheckReport:
        # The host freezes between two statements of a round: the server and every backend stop.
        _signal_cluster(freezable_cluster, signal.SIGSTOP)
        conn.execute(text("SELECT 1"))
        return CheckReport("freeze", "Freeze", "ok", "answered")

    _with_activity_check(monkeypatch, CheckSpec("freeze", "Freeze", freeze))
    try:
        # Cut off by the client-side deadline (the statement's time limit plus the connect timeout).
        _run_unhung(health, "activity")
        [pending] = health.alert_rows()
        assert pending.state == "pending" and "stopped answering" in pending.detail
        # Connecting to the frozen server: ended by STAGE_CONNECT_TIMEOUT.
        _run_unhung(health, "activity")
        [post] = health.posts()
    finally:
        _signal_cluster(freezable_cluster, signal.SIGCONT)
    posted = posted_texts([post])[0]
    assert "CRITICAL" in posted and "stage dev is unreachable" in posted
    [row] = health.alert_rows()
    assert "timed out" in row.detail

    monkeypatch.undo()  # the host is back
    health.run("activity")
    [update] = health.updates()
    assert "RESOLVED" in posted_texts([update])[0]
    health.runtime.stages.dispose()


# -- what pg_stat_statements lets the check see -------------------------------------------------------


def test_a_role_without_pg_read_all_stats_is_told_once_that_it_sees_only_its_own_statements(make_health, stage_db):
    role = unique_name("watcher")
    stage_db.execute(f"CREATE ROLE {role} LOGIN")
    health = None
    try:
        health = make_health({"dev": stage_db.url.replace("postgres@", f"{role}@")}, **SLOW)
        for _ in range(3):
            health.run("statements")
        [post] = health.posts()
        posted = posted_texts([post])[0]
        assert "sees only its own role's statements" in posted
        assert "GRANT pg_read_all_stats TO" in posted
        stage_db.execute(f"GRANT pg_read_all_stats TO {role}")
        health.run("statements")
        [update] = health.updates()
        assert "RESOLVED" in posted_texts([update])[0]
    finally:
        if health is not None:
            health.runtime.stages.dispose()
        stage_db.execute(f"DROP ROLE {role}")


def test_an_extension_older_than_1_9_is_told_to_update_not_to_be_created(make_health, database_without_extension):
    with psycopg.connect(database_without_extension, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements VERSION '1.8'")  # no pg_stat_statements_info: 42P01
    health = make_health({"dev": database_without_extension}, **SLOW)
    health.run("statements")
    health.run("statements")
    [post] = health.posts()
    posted = posted_texts([post])[0]
    assert "pg_stat_statements is too old (1.8)" in posted
    assert "ALTER EXTENSION pg_stat_statements UPDATE" in posted and "CREATE EXTENSION" not in posted
    with psycopg.connect(database_without_extension, autocommit=True) as conn:
        conn.execute("ALTER EXTENSION pg_stat_statements UPDATE")
    health.run("statements")
    [update] = health.updates()
    assert "RESOLVED" in posted_texts([update])[0]
    health.runtime.stages.dispose()
