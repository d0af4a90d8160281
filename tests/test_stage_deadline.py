"""Stage commands when a stage's server freezes: answered "unreachable" in bounded time, not never.

A frozen server (SIGSTOP of the postmaster and every backend, as a stuck host or a proxy that
stops relaying) accepts TCP and answers keepalives from the kernel, but sends nothing: only the
client-side deadline (bot/deadline.py) ends the wait. The cluster is each test's own
(`own_cluster`) and is always continued (SIGCONT) before the test ends.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from sqlalchemy import Connection, text

from bot.demo import build_platform_database
from bot.errors import StageUnavailable
from bot.localpg import LocalPostgres
from tests.conftest import TEST_SPEC, BotHarness, eventually
from tests.test_health_resilience import _signal_cluster

BIG = TEST_SPEC.big_slug
CONNECT_S = 2.0  # STAGE_CONNECT_TIMEOUT
STATEMENT_S = 2.0  # STAGE_STATEMENT_TIMEOUT_MS
MARGIN_S = 1.5  # scheduling on a loaded machine; far below any "hang"
ENV = {"STAGE_CONNECT_TIMEOUT": "2", "STAGE_STATEMENT_TIMEOUT_MS": "2000"}
WAITING_ON_LOCK = (
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mcp-ops/dev' AND wait_event_type = 'Lock'"
)


@pytest.fixture
def dev_url(own_cluster: LocalPostgres) -> str:
    url = own_cluster.create_database("platform")
    build_platform_database(url, TEST_SPEC)
    return url


@contextmanager
def frozen(cluster: LocalPostgres) -> Iterator[None]:
    _signal_cluster(cluster, signal.SIGSTOP)
    try:
        yield
    finally:
        _signal_cluster(cluster, signal.SIGCONT)


class Timed:
    """A command sent from a thread of its own: its answer and how long it took, from sending."""

    def __init__(self, bot: BotHarness, command: str) -> None:
        self.text: str | None = None
        self.elapsed: float | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(bot, command), daemon=True)
        self._thread.start()

    def _run(self, bot: BotHarness, command: str) -> None:
        started = time.monotonic()
        try:
            self.text = bot.command(command).text(timeout=60)
        except BaseException as exc:  # surfaced by result()
            self.error = exc
        self.elapsed = time.monotonic() - started

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float) -> tuple[str, float]:
        self._thread.join(timeout)
        assert self.done, f"no answer within {timeout} s"
        if self.error is not None:
            raise self.error
        assert self.text is not None and self.elapsed is not None
        return self.text, self.elapsed


def _staging_answers_meanwhile(bot: BotHarness, dev: Timed) -> None:
    staging = Timed(bot, f"find {BIG} --stage staging")
    answer, elapsed = staging.result(CONNECT_S + STATEMENT_S)
    assert BIG in answer and "unreachable" not in answer
    assert elapsed < 1.5
    assert not dev.done, "staging answered while dev was still waiting"


def test_a_stage_frozen_between_commands_answers_unreachable_in_time_and_the_others_keep_working(
    make_bot, own_cluster, dev_url, stage_db
):
    bot = make_bot({"dev": dev_url, "staging": stage_db.url}, **ENV)
    assert BIG in bot.command(f"find {BIG} --stage dev").text()  # a pooled connection to dev now exists

    with frozen(own_cluster):
        dev = Timed(bot, f"find {BIG} --stage dev")
        time.sleep(0.5)
        _staging_answers_meanwhile(bot, dev)
        answer, elapsed = dev.result(CONNECT_S + STATEMENT_S + MARGIN_S + 5)
    assert "stage dev is unreachable" in answer
    assert "psycopg" not in answer and "127.0.0.1" not in answer
    # The pooled connection's check waits STAGE_CONNECT_TIMEOUT, then a new connection as long.
    assert CONNECT_S <= elapsed < CONNECT_S + STATEMENT_S + MARGIN_S
    assert [r.outcome for r in bot.wait_audit(3) if r.stage == "dev"][-1] == "unavailable"

    # Continued: dev answers again, the bot was not restarted.
    assert BIG in bot.command(f"find {BIG} --stage dev").text()


def test_a_statement_in_flight_when_the_stage_freezes_is_cut_off_after_its_time_limit(
    make_bot, own_cluster, dev_url, stage_db
):
    bot = make_bot({"dev": dev_url, "staging": stage_db.url}, **ENV)
    assert BIG in bot.command(f"find {BIG} --stage dev").text()

    # The find's query waits on a lock, so it is in flight (sent, unanswered) when the server stops.
    blocker = psycopg.connect(own_cluster.dsn("platform"))
    try:
        blocker.execute("LOCK TABLE mcp_servers IN ACCESS EXCLUSIVE MODE")
        dev = Timed(bot, f"find {BIG} --stage dev")
        assert eventually(lambda: blocker.execute(WAITING_ON_LOCK).fetchone()[0] == 1, timeout=STATEMENT_S)
        with frozen(own_cluster):
            _staging_answers_meanwhile(bot, dev)
            answer, elapsed = dev.result(CONNECT_S + STATEMENT_S + MARGIN_S + 5)
        blocker.rollback()
    finally:
        blocker.close()
    # Not the server's statement timeout (it was frozen before that fired): the client-side deadline.
    assert "stage dev is unreachable (it stopped answering: nothing for 4 s)" in answer
    # No sooner than a live server could have answered (statement_timeout), and not much later.
    assert CONNECT_S + STATEMENT_S - 0.1 <= elapsed < CONNECT_S + STATEMENT_S + MARGIN_S

    assert BIG in bot.command(f"find {BIG} --stage dev").text()


def _elapsed_until_unavailable(action: object) -> tuple[str, float]:
    started = time.monotonic()
    with pytest.raises(StageUnavailable) as failed:
        action()  # type: ignore[operator]
    return failed.value.message, time.monotonic() - started


def test_writes_their_after_commit_and_is_running_are_cut_off_too(make_bot, own_cluster, dev_url):
    bot = make_bot({"dev": dev_url}, **ENV)
    stage = bot.runtime.stages.get("dev")
    committed: list[str] = []

    def freeze_after_commit(conn: Connection) -> None:
        committed.append(conn.execute(text("SELECT name FROM mcp_servers WHERE slug = :s"), {"s": BIG}).scalar_one())
        _signal_cluster(own_cluster, signal.SIGSTOP)
        conn.execute(text("SELECT 1"))

    def write() -> None:
        with stage.write(statement_timeout_ms=1000, after_commit=freeze_after_commit) as conn:
            conn.execute(text("UPDATE mcp_servers SET name = 'renamed' WHERE slug = :s"), {"s": BIG})

    try:
        # After the commit, the session's own statement_timeout (2 s) applies again, plus the connect timeout.
        message, elapsed = _elapsed_until_unavailable(write)
        assert committed == ["renamed"]
        assert message == "stage dev is unreachable (it stopped answering: nothing for 4 s)"
        assert STATEMENT_S + CONNECT_S - 0.1 <= elapsed < STATEMENT_S + CONNECT_S + MARGIN_S
        # The failed session was discarded: a new connection to the frozen server times out.
        message, elapsed = _elapsed_until_unavailable(lambda: stage.is_running(stage.work_name("x")))
        assert message == "stage dev is unreachable (timed out)"
        assert elapsed < CONNECT_S + MARGIN_S
    finally:
        _signal_cluster(own_cluster, signal.SIGCONT)
    assert stage.is_running(stage.work_name("x")) is False
    assert stage.ping() > 0


def test_slow_statements_on_a_live_stage_get_their_whole_time_limit(make_bot, dev_url):
    # The deadline follows the statement_timeout each transaction sets, not the session default.
    bot = make_bot({"dev": dev_url}, STAGE_CONNECT_TIMEOUT="1", STAGE_STATEMENT_TIMEOUT_MS="500")
    stage = bot.runtime.stages.get("dev")
    seen: list[str] = []

    def verify(conn: Connection) -> None:  # like the deletion engine's check after its commit
        with conn.begin():
            conn.execute(text("SELECT set_config(:name, :value, true)"), {"name": "statement_timeout", "value": "4000"})
            seen.append(str(conn.execute(text("SELECT pg_sleep(2)::text || 'slept'")).scalar_one()))

    started = time.monotonic()
    with stage.write(statement_timeout_ms=4000, after_commit=verify) as conn:
        conn.execute(text("SELECT pg_sleep(2)"))
    with stage.read(statement_timeout_ms=4000) as conn:
        conn.execute(text("SELECT pg_sleep(2)"))
    assert seen == ["slept"]
    assert time.monotonic() - started >= 6
