"""Real parts for every test: a throwaway PostgreSQL cluster (pg_stat_statements preloaded),
platform databases cloned from a template, a fake Slack Web API over HTTP, and the bot's
real HTTP endpoint receiving signed requests.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from bot.config import Settings, load_settings, parse_database_url
from bot.console.client import HttpReply, SlackRequestSender
from bot.console.localslack import LocalSlack, SlackCall
from bot.console.process import ServeProcess
from bot.demo import build_platform_database
from bot.localpg import LocalPostgres
from bot.platform.demo_data import DatasetSpec
from bot.runtime import Runtime
from handlers.server import ThreadedServer, build_asgi, serve_in_thread

if TYPE_CHECKING:
    from tests.engine_harness import EngineHarness

OPERATOR = "UOPERATOR1"
APPROVER = "UAPPROVER1"
APPROVER2 = "UAPPROVER2"
VIEWER = "UVIEWER001"
AUDIT_CHANNEL = "CAUDIT0001"
ALERT_CHANNEL = "CALERTS001"
CHANNEL = "CGENERAL01"
SIGNING_SECRET = "test-signing-secret-0123456789"
BOT_TOKEN = "xoxb-test-0000-secret-token"

# Small but complete: a big server with shared and session-less users beside 5 small ones.
TEST_SPEC = DatasetSpec(
    organizations=3,
    small_servers=5,
    small_tool_calls=40,
    small_sessions=8,
    small_users=4,
    big_tool_calls=600,
    big_sessions=60,
    big_users=25,
    big_completions=40,
    shared_users=6,
    sessionless_users=4,
    support_per_server=4,
)

_names = itertools.count(1)


def unique_name(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{next(_names)}"


@contextmanager
def throwaway_cluster(prefix: str, *, fast_unsafe: bool = True, **settings: str) -> Iterator[LocalPostgres]:
    """A started PostgreSQL cluster of its own, destroyed afterwards."""
    # Not under pytest's 0700 temp root: as root, the cluster belongs to the unprivileged `postgres` user.
    base = Path(tempfile.mkdtemp(prefix=f"mcp-ops-test-{prefix}-"))
    base.chmod(0o755)
    cluster = LocalPostgres(base / "pg", fast_unsafe=fast_unsafe, settings=settings)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg() -> Iterator[LocalPostgres]:
    # Every test clones its own database and pg_stat_statements keys entries by database, so the
    # default 5,000 entries fill up and evict the entries that the health tests look for.
    with throwaway_cluster("pg", **{"pg_stat_statements.max": "50000"}) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def platform_template(pg: LocalPostgres) -> str:
    """A platform database with TEST_SPEC data, cloned for each test that needs one."""
    name = "platform_template"
    build_platform_database(pg.create_database(name, drop=True), TEST_SPEC)
    return name


@dataclass
class StageDb:
    name: str
    url: str
    engine: Engine

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params))

    def execute(self, sql: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(sql), params)


@pytest.fixture
def make_stage_db(pg: LocalPostgres, platform_template: str) -> Iterator[Callable[[], StageDb]]:
    created: list[StageDb] = []

    def make() -> StageDb:
        name = unique_name("stage")
        url = pg.create_database(name, template=platform_template)
        db = StageDb(name, url, create_engine(parse_database_url("test", url)))
        created.append(db)
        return db

    yield make
    for db in created:
        db.engine.dispose()
        pg.drop_database(db.name)


@pytest.fixture
def stage_db(make_stage_db: Callable[[], StageDb]) -> StageDb:
    return make_stage_db()


@pytest.fixture
def bot_db_url(pg: LocalPostgres) -> Iterator[str]:
    name = unique_name("botdb")
    url = pg.create_database(name)
    yield url
    pg.drop_database(name)


@pytest.fixture
def fake_slack() -> Iterator[LocalSlack]:
    """The fake Slack; a test fails if the bot sent it anything real Slack would refuse."""
    slack = LocalSlack().start()
    yield slack
    slack.stop()
    assert_no_rejections(slack)


def assert_no_rejections(slack: LocalSlack) -> None:
    if slack.rejections:
        lines = [f"{c.method}: {c.error}: {c.detail}" for c in slack.rejections[:10]]
        pytest.fail("Slack would refuse what the bot sent:\n" + "\n".join(lines), pytrace=False)


def dead_database_url() -> str:
    """A URL whose port nobody listens on: connecting is refused at once."""
    from bot.localpg import free_port

    return f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/gone"


@dataclass
class Reply:
    """A slash command's HTTP ack plus where its later replies arrive."""

    http: HttpReply
    response_url: str
    harness: BotHarness

    @property
    def ack(self) -> dict[str, Any] | None:
        body = self.http.body.strip()
        return self.http.json() if body.startswith("{") else None

    def responses(self, count: int = 1, timeout: float = 15) -> list[dict[str, Any]]:
        path = self.response_url.split(self.harness.slack.base_url, 1)[1]
        calls = self.harness.slack.wait_for_call("response_url", lambda c: c.path == path, timeout, count)
        return [c.payload for c in calls]

    def message(self, timeout: float = 15) -> dict[str, Any]:
        """The answer the person sees: the ack body if it had one, else the first response_url post."""
        return self.ack or self.responses(1, timeout)[0]

    def text(self, timeout: float = 15) -> str:
        return message_text(self.message(timeout))

    def shown(self, timeout: float = 15) -> str:
        return shown_text(self.message(timeout))


def message_text(payload: dict[str, Any], kinds: tuple[str, ...] = ("mrkdwn", "plain_text")) -> str:
    """Everything readable in a message: its text and every block's text, fields and buttons
    (`kinds=("mrkdwn",)`: only what Slack parses as markup)."""
    parts = [str(payload.get("text", ""))]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") in kinds and "text" in node:
                parts.append(str(node["text"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(payload.get("blocks", []))
    return "\n".join(parts)


def shown_text(payload: dict[str, Any]) -> str:
    """What a reader sees of a message's mrkdwn: Slack shows `&lt;`, `&gt;` and `&amp;` as `<`, `>`, `&`.

    (`message_text` is the markup Slack receives: a live mention is `<@U1>` there, an escaped one `&lt;@U1&gt;`.)
    """
    text = message_text(payload)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


@dataclass
class BotHarness:
    settings: Settings
    runtime: Runtime
    server: ThreadedServer
    slack: LocalSlack
    sender: SlackRequestSender
    env: dict[str, str] = field(default_factory=dict)

    def command(self, text: str, *, user: str = OPERATOR, channel: str = CHANNEL) -> Reply:
        response_url = self.sender.new_response_url()
        http = self.sender.slash(text, user=user, channel=channel, response_url=response_url)
        return Reply(http, response_url, self)

    def audit_rows(self) -> list[Any]:
        with self.runtime.bot_engine.connect() as conn:
            return list(conn.execute(text("SELECT * FROM audit_log ORDER BY id")))

    def wait_audit(self, count: int, timeout: float = 10) -> list[Any]:
        import time

        deadline = time.monotonic() + timeout
        while True:
            rows = self.audit_rows()
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)

    def audit_posts(self) -> list[SlackCall]:
        return [c for c in self.slack.calls_to("chat.postMessage") if c.payload.get("channel") == AUDIT_CHANNEL]

    def close(self) -> None:
        self.server.stop()
        self.runtime.close()


def base_env(*, bot_db_url: str, stages: dict[str, str], slack: LocalSlack) -> dict[str, str]:
    env = {
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_API_URL": slack.api_url,
        "BOT_DATABASE_URL": bot_db_url,
        "OPERATORS": OPERATOR,
        "APPROVERS": f"{APPROVER},{APPROVER2}",
        "AUDIT_CHANNEL": AUDIT_CHANNEL,
        "ALERT_CHANNEL": ALERT_CHANNEL,
        "OUTBOX_INTERVAL_SECONDS": "1",
        "HOME_PUBLISH_INTERVAL_SECONDS": "1",  # App Home refreshes within a test's patience
        "STAGE_CONNECT_TIMEOUT": "2",
        # Scheduled health checks would post alerts in the background; tests that want them
        # turn them on and drive the jobs with controlled time (tests/test_health*.py).
        "HEALTH_CHECKS": "off",
    }
    for name, url in stages.items():
        env[f"DATABASE_URL_{name.upper()}"] = url
    return env


@pytest.fixture
def make_bot(
    bot_db_url: str, fake_slack: LocalSlack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., BotHarness]]:
    """Build a bot on the real HTTP endpoint; `stages` maps stage names to database URLs.

    Backups go to a fresh local directory (protected deletes need a destination), unless the
    test names one (`BACKUP_BUCKET`, or `BACKUP_DIR=""` for a bot without any).
    """
    harnesses: list[BotHarness] = []

    def make(stages: dict[str, str], **overrides: str) -> BotHarness:
        env = base_env(bot_db_url=bot_db_url, stages=stages, slack=fake_slack)
        if "BACKUP_BUCKET" not in overrides:
            env["BACKUP_DIR"] = str(tmp_path_factory.mktemp("backups"))
        env.update(overrides)
        settings = load_settings(env)
        runtime = Runtime(settings)
        runtime.start()
        server = serve_in_thread(build_asgi(runtime))
        sender = SlackRequestSender(
            server.events_url, SIGNING_SECRET, response_base=fake_slack.base_url, on_reply=fake_slack.check_ack
        )
        harness = BotHarness(settings, runtime, server, fake_slack, sender, env)
        harnesses.append(harness)
        return harness

    yield make
    for harness in harnesses:
        harness.close()


@pytest.fixture
def serve(
    tmp_path: Path, bot_db_url: str, stage_db: StageDb, fake_slack: LocalSlack
) -> Iterator[Callable[..., ServeProcess]]:
    """`mcp-ops serve` as a real subprocess on stage `dev`; `overrides` are environment variables."""
    processes: list[ServeProcess] = []

    def start(*args: str, **overrides: str) -> ServeProcess:
        env = base_env(bot_db_url=bot_db_url, stages={"dev": stage_db.url}, slack=fake_slack)
        env.update(overrides)
        process = ServeProcess(env, tmp_path / f"serve{len(processes)}.log", args=args).start()
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.stop()


@pytest.fixture
def bot(make_bot: Callable[..., BotHarness], stage_db: StageDb) -> BotHarness:
    """A bot with stage `dev` on a fresh platform database and `production` (protected) on another."""
    return make_bot({"dev": stage_db.url, "production": stage_db.url})


def eventually(predicate: Callable[[], Any], timeout: float = 15, interval: float = 0.05) -> Any:
    """Poll until predicate() is truthy; return its last value (falsy on timeout)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def psql_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def own_cluster() -> Iterator[LocalPostgres]:
    """A PostgreSQL cluster of the test's own, which it may stop, kill and start again."""
    # Commits must survive the server process being killed (synchronous_commit stays on); only an
    # OS crash could lose them, which fsync=off accepts for speed.
    with throwaway_cluster("fault", fast_unsafe=False, fsync="off") as cluster:
        yield cluster


@pytest.fixture
def db(stage_db: StageDb) -> StageDb:
    """A platform database plus tables no code in bot/ names (tests/deletion_support.py: EXTRA_DDL)."""
    from tests.deletion_support import add_extra_tables  # it imports this module

    add_extra_tables(stage_db)
    return stage_db


@pytest.fixture
def make_empty_db(pg: LocalPostgres) -> Iterator[Callable[[], str]]:
    """Fresh empty databases (from template1), dropped after the test: `make_empty_db()` returns a URL."""
    made: list[str] = []

    def make() -> str:
        made.append(unique_name("empty"))
        return pg.create_database(made[-1])

    yield make
    for name in made:
        pg.drop_database(name)


@pytest.fixture
def database_without_extension(pg: LocalPostgres) -> Iterator[str]:
    """A database where pg_stat_statements was never created (made from template1)."""
    name = unique_name("noext")
    url = pg.create_database(name)
    yield url
    pg.drop_database(name)


# -- the deletion engine's case files (tests/test_engine_schemas*.py, test_delete_leaves.py) ----------


@pytest.fixture(scope="module")
def engine_harness(pg: LocalPostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineHarness]:
    """One harness per case file: its template databases are built once for the file's cases."""
    from tests.engine_harness import module_harness  # it imports this module's helpers

    yield from module_harness(pg, tmp_path_factory)


@pytest.fixture
def h(engine_harness: EngineHarness) -> EngineHarness:
    """The case files' short name for the harness: `h.check(schema_sql)`, `h.refuse(...)`."""
    return engine_harness
