"""Stage commands when a stage's server freezes: answered "unreachable", not never.

A frozen server (SIGSTOP of the postmaster and every backend, as a stuck host or a proxy that
stops relaying) accepts TCP and answers keepalives from the kernel, but sends nothing: only the
client-side deadline (bot/deadline.py) ends the wait. The answers name the limit that ended it
(the deadline's "nothing for N s", or the connect timeout's "timed out"), so the tests assert
which mechanism fired rather than timing it; how fast things are belongs in bench/. The waits
below only keep a hung command from hanging the suite. The cluster is each test's own
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
HANG_S = 30.0  # a command not answered by then is hung (the deadline would have fired long before)
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


class Pending:
    """A command sent from a thread of its own, so the test can do other things while it waits."""

    def __init__(self, bot: BotHarness, command: str) -> None:
        self.text: str | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(bot, command), daemon=True)
        self._thread.start()

    def _run(self, bot: BotHarness, command: str) -> None:
        try:
            self.text = bot.command(command).text(timeout=60)
        except BaseException as exc:  # surfaced by result()
            self.error = exc

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> str:
        self._thread.join(HANG_S)
        assert self.done, "the command hung"
        if self.error is not None:
            raise self.error
        assert self.text is not None
        return self.text


def _staging_answers_meanwhile(bot: BotHarness, dev: Pending) -> None:
    answer = Pending(bot, f"find {BIG} --stage staging").result()
    assert BIG in answer and "unreachable" not in answer
    assert not dev.done, "staging answered while dev was still waiting"


def test_a_stage_frozen_between_commands_answers_unreachable_in_time_and_the_others_keep_working(
    make_bot, own_cluster, dev_url, stage_db
):
    bot = make_bot({"dev": dev_url, "staging": stage_db.url}, **ENV)
    assert BIG in bot.command(f"find {BIG} --stage dev").text()  # a pooled connection to dev now exists

    with frozen(own_cluster):
        dev = Pending(bot, f"find {BIG} --stage dev")
        time.sleep(0.5)
        _staging_answers_meanwhile(bot, dev)
        answer = dev.result()
    # The pooled connection's check is cut off at STAGE_CONNECT_TIMEOUT, and the new connection it
    # is replaced with runs into libpq's connect timeout: that is the answer.
    assert "stage dev is unreachable (timed out)" in answer
    assert "psycopg" not in answer and "127.0.0.1" not in answer
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
        dev = Pending(bot, f"find {BIG} --stage dev")
        assert eventually(lambda: blocker.execute(WAITING_ON_LOCK).fetchone()[0] == 1, timeout=STATEMENT_S)
        with frozen(own_cluster):
            _staging_answers_meanwhile(bot, dev)
            answer = dev.result()
        blocker.rollback()
    finally:
        blocker.close()
    # Not the server's statement timeout (it was frozen before that fired): the client-side deadline,
    # which allows the statement its statement_timeout plus the connect timeout (2 s + 2 s).
    assert "stage dev is unreachable (it stopped answering: nothing for 4 s)" in answer

    assert BIG in bot.command(f"find {BIG} --stage dev").text()


def _unavailable(action: object) -> str:
    with pytest.raises(StageUnavailable) as failed:
        action()  # type: ignore[operator]
    return failed.value.message


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
        # After the commit, the session's own statement_timeout (2 s) applies again, plus the connect
        # timeout: 4 s, not the transaction's 1 s.
        message = _unavailable(write)
        assert committed == ["renamed"]
        assert message == "stage dev is unreachable (it stopped answering: nothing for 4 s)"
        # The failed session was discarded: a new connection to the frozen server times out.
        message = _unavailable(lambda: stage.is_running(stage.work_name("x")))
        assert message == "stage dev is unreachable (timed out)"
    finally:
        _signal_cluster(own_cluster, signal.SIGCONT)
    assert stage.is_running(stage.work_name("x")) is False
    assert stage.ping() > 0


def test_slow_statements_on_a_live_stage_get_their_whole_time_limit(make_bot, dev_url):
    # The deadline follows the statement_timeout each transaction sets, not the session default.
    bot = make_bot({"dev": dev_url}, STAGE_CONNECT_TIMEOUT="1", STAGE_STATEMENT_TIMEOUT_MS="500")
    stage = bot.runtime.stages.get("dev")
    seen: list[str] = []
    slept = text("SELECT pg_sleep(2)::text || 'slept'")  # longer than the session default and the connect timeout

    def verify(conn: Connection) -> None:  # like the deletion engine's check after its commit
        with conn.begin():
            conn.execute(text("SELECT set_config(:name, :value, true)"), {"name": "statement_timeout", "value": "4000"})
            seen.append(str(conn.execute(slept).scalar_one()))

    with stage.write(statement_timeout_ms=4000, after_commit=verify) as conn:
        seen.append(str(conn.execute(slept).scalar_one()))
    with stage.read(statement_timeout_ms=4000) as conn:
        seen.append(str(conn.execute(slept).scalar_one()))
    assert seen == ["slept", "slept", "slept"]  # each ran to the end: none was cut off
