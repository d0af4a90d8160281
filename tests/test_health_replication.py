"""A stage with a real standby (pg_basebackup of a primary of this module's own): replication lag, a
standby's `hot_standby_feedback` holding back vacuum through its slot or, without one, through its walsender, a
logical slot nobody consumes holding back the catalogs' horizon, and a slot keeping more WAL than its threshold,
each alerting once and resolving; and a role that may not see the standbys' positions, told so once."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from bot.console.localslack import LocalSlack
from bot.localpg import LocalPostgres
from tests.conftest import eventually, throwaway_cluster, unique_name
from tests.health_support import Health, health_factory, posted_texts

SLOT = "replica_one"
CDC_SLOT = "cdc_consumer"


@dataclass
class Pair:
    primary: LocalPostgres
    standby: LocalPostgres
    url: str  # a database on the primary


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    with throwaway_cluster("primary", wal_level="logical") as primary:
        base = Path(tempfile.mkdtemp(prefix="mcp-ops-test-standby-"))
        base.chmod(0o755)
        standby = LocalPostgres(
            base / "pg",
            fast_unsafe=True,
            settings={
                "hot_standby_feedback": "on",
                "wal_receiver_status_interval": "1s",
            },
        )
        for path in (standby.base_dir, standby.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
            standby._chown(path)
        standby._run(
            "pg_basebackup",
            *("-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres", "-D", str(standby.data_dir)),
            *("-R", "-X", "stream", "-C", "-S", SLOT, "--no-sync"),
        )
        standby.start()
        try:
            yield Pair(primary, standby, primary.create_database(unique_name("replicated")))
        finally:
            standby.destroy()
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def make_health(bot_db_url: str, fake_slack: LocalSlack) -> Iterator[Callable[..., Health]]:
    yield from health_factory(bot_db_url, fake_slack)


def _replay_lag(url: str) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT extract(epoch FROM max(replay_lag)) FROM pg_stat_replication").fetchone()
    return float(row[0] or 0)


LAG_LIMIT_S = 3  # REPLICATION_LAG_SECONDS: well above a caught-up standby's replay_lag (its 1 s status interval)
APPLY_DELAY = "8s"  # well above the limit, well below 10x it (critical)


def _apply_delay(standby: LocalPostgres, value: str | None) -> None:
    """Set (or reset) the standby's recovery_min_apply_delay; returns once a new session reads the new value.

    Through ALTER SYSTEM: a setting given on the server's command line would override it and stay."""
    with psycopg.connect(standby.dsn("postgres"), autocommit=True) as conn:
        if value is None:
            conn.execute("ALTER SYSTEM RESET recovery_min_apply_delay")
        else:
            conn.execute(f"ALTER SYSTEM SET recovery_min_apply_delay = '{value}'")
        conn.execute("SELECT pg_reload_conf()")

    def reads() -> str:
        with psycopg.connect(standby.dsn("postgres"), autocommit=True) as conn:
            return str(conn.execute("SHOW recovery_min_apply_delay").fetchone()[0])

    assert eventually(lambda: reads() == (value or "0"), timeout=60, interval=0.2)


class Ticker:
    """Commits on the primary every 0.2 s while running: with an apply delay, the standby's replay lag stays at
    the delay for as long as it takes (an idle standby's replay_lag turns NULL soon after it has replayed)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="ticker", daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True, application_name="ticker") as conn:
            while not self.stop.is_set():
                conn.execute("INSERT INTO ticks VALUES (now())")
                self.stop.wait(0.2)

    def __enter__(self) -> Ticker:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def _lag_alerts(health: Health, state: str) -> list[Any]:
    """One more activity round; the replication_lag alerts then in `state`."""
    health.run("activity")
    return [r for r in health.alert_rows() if r.check_name == "replication_lag" and r.state == state]


def test_a_lagging_standby_alerts_once_per_replica_and_resolves_when_it_catches_up(make_health, pair):
    with psycopg.connect(pair.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS ticks (at timestamptz)")
    health = make_health({"dev": pair.url}, REPLICATION_LAG_SECONDS=str(LAG_LIMIT_S), XMIN_HORIZON_SECONDS="3600")
    try:
        # Caught up (no apply delay): no alert.
        _apply_delay(pair.standby, None)
        assert eventually(lambda: _replay_lag(pair.url) < 1, timeout=60, interval=0.2)
        health.run("activity")
        assert [r for r in health.alert_rows() if r.check_name == "replication_lag"] == []

        # Every commit replayed APPLY_DELAY late, for as long as the rounds take under load.
        _apply_delay(pair.standby, APPLY_DELAY)
        with Ticker(pair.url):
            assert eventually(lambda: _replay_lag(pair.url) > LAG_LIMIT_S, timeout=60, interval=0.2)
            [row] = eventually(lambda: _lag_alerts(health, "firing"), timeout=60, interval=0.5)
            [post] = health.posts()
            assert row.object.startswith("standby ") and "lags" in posted_texts([post])[0]
            again = _lag_alerts(health, "firing")  # seen again: still the one alert, one post
            assert [(r.id, r.object) for r in again] == [(row.id, row.object)]
            assert len(health.posts()) == 1

        # Caught up again: the alert resolves in its thread, and nothing more is posted.
        _apply_delay(pair.standby, None)
        assert eventually(lambda: _replay_lag(pair.url) < 1, timeout=60, interval=0.2)
        [row] = eventually(lambda: _lag_alerts(health, "resolved"), timeout=60, interval=0.5)
    finally:
        _apply_delay(pair.standby, None)
    health.sync()
    [reply] = [r for r in health.replies() if r.payload["thread_ts"] == row.ts]
    assert "Resolved after" in reply.payload["text"]
    assert "RESOLVED" in posted_texts([u for u in health.updates() if u.payload["ts"] == row.ts][-1:])[0]
    assert len(health.posts()) == 1


def _snapshot_xmin(reader: psycopg.Connection) -> str:
    """Open a REPEATABLE READ snapshot on the standby and hold it; its xmin, which the standby's feedback reports
    once it is the oldest there (read from the snapshot itself, not raced from the primary's view)."""
    reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    row = reader.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text").fetchone()
    assert row is not None
    return str(row[0])


def test_a_standby_query_holding_the_horizon_through_its_slot_alerts_once(make_health, pair):
    health = make_health({"dev": pair.url}, REPLICATION_LAG_SECONDS="3600")  # XMIN_HORIZON_SECONDS: an hour

    def slot_xmin() -> str | None:
        with psycopg.connect(pair.url, autocommit=True) as conn:
            row = conn.execute("SELECT xmin::text FROM pg_replication_slots WHERE slot_name = %s", (SLOT,)).fetchone()
        return row[0]

    def primary_moves_on() -> None:
        with psycopg.connect(pair.url, autocommit=True) as conn:
            for _ in range(3):
                conn.execute("SELECT txid_current()")

    reader = psycopg.connect(pair.standby.dsn(pair.url.rsplit("/", 1)[1]))
    try:
        held = _snapshot_xmin(reader)  # a snapshot on the standby: its feedback pins the slot's xmin
        assert eventually(lambda: slot_xmin() == held, timeout=30)
        primary_moves_on()
        health.run("activity")
        # A slot does not say since when it holds this xmin: pending until the same xmin has been seen an hour.
        [row] = [r for r in health.alert_rows() if r.check_name == "vacuum_horizon"]
        assert (row.object, row.state) == (f"slot {SLOT} xmin {held}", "pending")
        with health.runtime.bot_engine.begin() as conn:
            conn.execute(text("UPDATE alerts SET first_seen_at = first_seen_at - interval '61 minutes'"))
        health.run("activity")
        [post] = health.posts()
        text_ = posted_texts([post])[0]
        assert f"vacuum held back by physical replication slot {SLOT}" in text_
        assert "hot_standby_feedback" in text_ and "Cancel it there" in text_
    finally:
        reader.close()
    primary_moves_on()
    assert eventually(lambda: slot_xmin() != held, timeout=30)  # the next feedback releases it
    for _ in range(2):
        health.run("activity")
    health.sync()
    states = {r.object: r.state for r in health.alert_rows() if r.check_name == "vacuum_horizon"}
    assert states.pop(f"slot {SLOT} xmin {held}") == "resolved"
    assert set(states.values()) <= {"pending"}  # a younger xmin, not held long enough to matter
    [reply] = health.replies()
    assert "Resolved after" in reply.payload["text"]
    assert len(health.posts()) == 1


def test_an_inactive_logical_slot_holding_the_catalog_horizon_alerts_once_and_resolves_when_dropped(make_health, pair):
    def xmins() -> dict[str, int]:
        with psycopg.connect(pair.url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT slot_name, coalesce(xmin, catalog_xmin)::text FROM pg_replication_slots"
                " WHERE coalesce(xmin, catalog_xmin) IS NOT NULL"
            ).fetchall()
        return {name: int(xid) for name, xid in rows}

    def standby_moved_past(held: int) -> bool:
        with psycopg.connect(pair.url, autocommit=True) as conn:
            conn.execute("SELECT txid_current()")
        return xmins().get(SLOT, held + 1) > held

    with psycopg.connect(pair.url, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (CDC_SLOT,))
    try:
        held = xmins()[CDC_SLOT]
        # The standby's feedback moves on; the slot's catalog_xmin stays: it is the oldest holder.
        assert eventually(lambda: standby_moved_past(held), timeout=60, interval=0.2)
        health = make_health({"dev": pair.url}, XMIN_HORIZON_SECONDS="0", REPLICATION_LAG_SECONDS="3600")
        for _ in range(2):
            health.run("activity")
        [row] = [r for r in health.alert_rows() if r.check_name == "vacuum_horizon"]
        assert (row.object, row.state) == (f"slot {CDC_SLOT} xmin {held}", "firing")
        [post] = health.posts()
        posted = posted_texts([post])[0]
        assert f"vacuum held back by logical replication slot {CDC_SLOT}" in posted
        assert "(inactive, database " in posted and "(catalog tables only)" in posted
        assert f"pg_drop_replication_slot('{CDC_SLOT}')" in posted
    finally:
        with psycopg.connect(pair.url, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (CDC_SLOT,))
    # Dropped: its absence is proof. (With the threshold back at an hour, the standby's slot, whose xmin moves
    # on, is not held long enough to matter.)
    calm = make_health({"dev": pair.url}, REPLICATION_LAG_SECONDS="3600")
    calm.slots = health.slots
    calm.run("activity")
    calm.sync()
    rows = {r.object: r for r in calm.alert_rows() if r.check_name == "vacuum_horizon"}
    row = rows.pop(f"slot {CDC_SLOT} xmin {held}")
    assert row.state == "resolved"
    assert {r.state for r in rows.values()} <= {"pending"}
    [reply] = [r for r in calm.replies() if r.payload["thread_ts"] == row.ts]
    assert "Resolved after" in reply.payload["text"]
    assert len(calm.posts()) == 1


def test_a_slot_keeping_more_wal_than_the_threshold_alerts_at_once_and_resolves_when_dropped(make_health, pair):
    def retained(slot: str) -> float:
        with psycopg.connect(pair.url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) FROM pg_replication_slots"
                " WHERE slot_name = %s",
                (slot,),
            ).fetchone()
        return float(row[0])

    with psycopg.connect(pair.url, autocommit=True) as conn:
        conn.execute("SELECT pg_create_physical_replication_slot('backlog', true)")  # reserves WAL from now on
        conn.execute("CREATE TABLE IF NOT EXISTS ticks (at timestamptz)")
        for _ in range(2):  # two segment switches: over 16 MB kept for a slot nobody reads
            conn.execute("INSERT INTO ticks VALUES (now())")
            conn.execute("SELECT pg_switch_wal()")
    try:
        assert retained("backlog") > 16 * 1024 * 1024
        # The standby's own slot has caught up: only the backlog is over the threshold.
        assert eventually(lambda: retained(SLOT) < 1024 * 1024, timeout=60, interval=0.2)
        health = make_health(
            {"dev": pair.url},
            REPLICATION_SLOT_RETAINED_MB="10",
            REPLICATION_SLOT_INACTIVE_SECONDS="86400",  # inactive for seconds: only the WAL it keeps counts
            REPLICATION_LAG_SECONDS="3600",
        )
        health.run("activity")  # no waiting: WAL kept is a disk filling up now
        rows = [r for r in health.alert_rows() if r.check_name == "replication_slots"]
        assert [(r.object, r.state, r.severity) for r in rows] == [("slot backlog", "firing", "warning")]
        [post] = health.posts()
        posted = posted_texts([post])[0]
        assert "replication slot backlog (physical) keeps over 10.0 MB of WAL" in posted
        assert "is inactive" in posted and "pg_drop_replication_slot('backlog')" in posted
    finally:
        with psycopg.connect(pair.url, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot('backlog')")
    health.run("activity")  # dropped: its absence is proof
    health.sync()
    [row] = [r for r in health.alert_rows() if r.check_name == "replication_slots"]
    assert row.state == "resolved"
    [reply] = [r for r in health.replies() if r.payload["thread_ts"] == row.ts]
    assert "Resolved after" in reply.payload["text"]
    assert len(health.posts()) == 1


def _standby_slot(pair: Pair, slot: str) -> None:
    """Point the standby at `slot` ('' for none); returns once it streams again (through that slot, if any)."""
    with psycopg.connect(pair.standby.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM SET primary_slot_name = '{slot}'")  # pg_basebackup -R wrote it there too
        conn.execute("SELECT pg_reload_conf()")

    def streaming() -> bool:
        with psycopg.connect(pair.url, autocommit=True) as conn:
            using = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (SLOT,)).fetchone()
            streams = conn.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").fetchone()
        return streams[0] == 1 and (bool(using and using[0]) if slot else not (using and using[0]))

    assert eventually(streaming, timeout=60, interval=0.2)


def test_a_standby_without_a_slot_holding_the_horizon_through_its_feedback_alerts_once(make_health, pair):
    def standby_xmin() -> str | None:
        with psycopg.connect(pair.url, autocommit=True) as conn:
            row = conn.execute("SELECT backend_xmin::text FROM pg_stat_replication").fetchone()
        return row[0] if row else None

    _standby_slot(pair, "")
    # Left behind, the slot keeps the xmin of the standby's last feedback: an inactive physical slot holding it.
    now = make_health({"dev": pair.url}, XMIN_HORIZON_SECONDS="0", REPLICATION_LAG_SECONDS="3600")
    round_ = now.runtime.health.run_now(now.runtime.stages.get("dev")).round
    [finding] = [f for r in round_.reports if r.check == "vacuum_horizon" for f in r.findings]
    assert finding.title == f"vacuum held back by physical replication slot {SLOT}"
    assert f"`{SLOT}` (inactive)" in finding.detail and f"pg_drop_replication_slot('{SLOT}')" in finding.advice
    with psycopg.connect(pair.url, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (SLOT,))  # its old xmin would be the oldest holder
    reader = psycopg.connect(pair.standby.dsn(pair.url.rsplit("/", 1)[1]))
    try:
        health = make_health({"dev": pair.url}, REPLICATION_LAG_SECONDS="3600")  # XMIN_HORIZON_SECONDS: an hour
        held = _snapshot_xmin(reader)  # a snapshot on the standby: its feedback holds its walsender's xmin
        assert eventually(lambda: standby_xmin() == held, timeout=30)
        with psycopg.connect(pair.url, autocommit=True) as conn:
            for _ in range(3):
                conn.execute("SELECT txid_current()")
        assert standby_xmin() == held
        health.run("activity")
        [row] = [r for r in health.alert_rows() if r.check_name == "vacuum_horizon"]
        assert (row.object, row.state) == (f"standby walreceiver xmin {held}", "pending")
        with health.runtime.bot_engine.begin() as conn:
            conn.execute(text("UPDATE alerts SET first_seen_at = first_seen_at - interval '61 minutes'"))
        health.run("activity")
        [post] = health.posts()
        posted = posted_texts([post])[0]
        assert "vacuum held back by standby walreceiver" in posted
        assert "with `hot_standby_feedback`, without a slot" in posted and "Cancel it there" in posted
    finally:
        reader.close()
        with psycopg.connect(pair.url, autocommit=True) as conn:
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (SLOT,))
        _standby_slot(pair, SLOT)
    health.run("activity")
    health.sync()
    states = {r.object: r.state for r in health.alert_rows() if r.check_name == "vacuum_horizon"}
    assert states.pop(f"standby walreceiver xmin {held}") == "resolved"
    assert set(states.values()) <= {"pending"}
    assert len(health.posts()) == 1


def test_a_role_that_cannot_see_the_standbys_positions_is_told_once_what_it_needs(make_health, pair):
    role = unique_name("app_role")
    with psycopg.connect(pair.url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
    health = make_health({"dev": pair.url.replace("postgres@", f"{role}@")}, REPLICATION_LAG_SECONDS="1")
    try:
        for _ in range(3):
            health.run("activity")
        lag = [t for t in posted_texts(health.posts()) if "Replication lag" in t]
        assert len(lag) == 1, lag
        assert "Replication lag: unavailable, needs pg_read_all_stats" in lag[0]
        assert "1 standby connection exists, but this role may not see their positions and lag" in lag[0]
        assert "GRANT pg_read_all_stats TO" in lag[0]
        assert not [r for r in health.alert_rows() if r.check_name == "replication_lag"]

        with psycopg.connect(pair.url, autocommit=True) as conn:
            conn.execute(f"GRANT pg_read_all_stats TO {role}")
        health.run("activity")
        health.sync()
        states = {r.check_name: r.state for r in health.alert_rows()}
        assert states["unavailable:replication_lag"] == "resolved"
    finally:
        health.runtime.stages.dispose()
        with psycopg.connect(pair.url, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")
