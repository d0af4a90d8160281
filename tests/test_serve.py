"""`mcp-ops serve` as a real subprocess: serves, refuses bad requests, drains on SIGTERM."""

from __future__ import annotations

import json
import signal
import time

import psycopg
from sqlalchemy import create_engine, text

from bot.config import parse_database_url
from bot.console.process import ServeProcess
from tests.conftest import (
    AUDIT_CHANNEL,
    CHANNEL,
    OPERATOR,
    SIGNING_SECRET,
    TEST_SPEC,
    StageDb,
    eventually,
    message_text,
)
from tests.deletion_support import SLOW_TOOL_CALL_DELETE, buttons, checksums


def bot_db_scalar(url: str, sql: str):
    engine = create_engine(parse_database_url("BOT_DATABASE_URL", url))
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()


def test_sigterm_drains_accepted_work_refuses_new_work_and_flushes_the_outbox(serve, stage_db, bot_db_url, fake_slack):
    server = serve(STAGE_LOCK_TIMEOUT_MS="120000")
    sender = server.sender(SIGNING_SECRET, fake_slack.base_url, fake_slack.check_ack)

    def slash(text_: str) -> tuple[int, str]:
        url = sender.new_response_url()
        reply = sender.slash(text_, user="UOPERATOR1", channel="CGENERAL01", response_url=url)
        return reply.status, url

    status, url = slash(f"find {TEST_SPEC.big_slug} --stage dev")
    assert status == 200
    first = fake_slack.wait_for_call("response_url", lambda c: c.path.endswith(url.rsplit("/", 1)[1]), 20)[0]
    assert TEST_SPEC.big_slug in message_text(first.payload)

    # A command in flight: its query waits on a lock the test holds.
    blocker = psycopg.connect(stage_db.url)
    blocker.execute("LOCK TABLE mcp_servers IN ACCESS EXCLUSIVE MODE")
    status, inflight_url = slash(f"find {TEST_SPEC.big_slug} --stage dev")
    assert status == 200
    waiting = (
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mcp-ops/dev' AND wait_event_type = 'Lock'"
    )
    assert eventually(lambda: stage_db.scalar(waiting) == 1)

    server.signal(signal.SIGTERM)
    assert eventually(lambda: server.get("/readyz")[0] == 503, 20)
    status, report = server.get_json("/readyz")
    assert status == 503 and report["status"] == "draining"
    # New work is refused while the accepted command is still running.
    status, refused_url = slash(f"find {TEST_SPEC.big_slug} --stage dev")
    assert status == 503
    assert "mcp_ops_draining 1.0" in server.get("/metrics")[1]
    assert server.process.poll() is None

    blocker.rollback()
    blocker.close()
    assert server.wait(60) == 0
    answer = fake_slack.wait_for_call("response_url", lambda c: c.path.endswith(inflight_url.rsplit("/", 1)[1]))[0]
    assert TEST_SPEC.big_slug in message_text(answer.payload)
    assert not [c for c in fake_slack.calls if c.path.endswith(refused_url.rsplit("/", 1)[1])]
    # Two commands ran and were audited; the outbox was flushed before exit.
    assert bot_db_scalar(bot_db_url, "SELECT count(*) FROM audit_log") == 2
    assert bot_db_scalar(bot_db_url, "SELECT count(*) FROM outbox WHERE delivered_at IS NULL") == 0
    audit_posts = [c for c in fake_slack.calls_to("chat.postMessage") if c.payload.get("channel") == AUDIT_CHANNEL]
    assert len(audit_posts) == 2
    lines = server.log_lines()
    assert any("draining" in line for line in lines)
    for line in lines:
        json.loads(line)  # the server's own lines included


def test_the_production_server_refuses_forged_stale_and_oversized_requests(serve, fake_slack):
    server = serve()
    sender = server.sender(SIGNING_SECRET, fake_slack.base_url, fake_slack.check_ack)
    body = sender.slash_body("help", user="UOPERATOR1", channel="CGENERAL01")
    assert sender.post(body).status == 200
    assert sender.post(body, signature="v0=" + "0" * 64).status == 401
    assert sender.post(body, headers={"X-Slack-Signature": ""}).status == 401
    assert sender.post(body, timestamp=int(time.time()) - 301).status == 401
    big = sender.slash_body("help " + "x" * (1024 * 1024), user="UOPERATOR1", channel="CGENERAL01")
    assert sender.post(big).status == 413
    assert server.get("/healthz") == (200, "ok")


# The delete's own session on the stage, asleep in the slow trigger (its transaction open).
IN_DELETE = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    " AND application_name LIKE 'mcp-ops/dev/request-%' AND wait_event = 'PgSleep'"
)


class DeleteRun:
    """A delete on dev through one `serve` process, pressed and caught while it sleeps on the stage."""

    def __init__(self, server: ServeProcess, stage_db: StageDb, bot_db_url: str, fake_slack) -> None:
        self.server = server
        self.stage_db = stage_db
        self.engine = create_engine(parse_database_url("BOT_DATABASE_URL", bot_db_url))
        self.slack = fake_slack

    def start(self) -> None:
        sender = self.server.sender(SIGNING_SECRET, self.slack.base_url, self.slack.check_ack)
        assert sender.slash(f"delete {TEST_SPEC.big_slug} --stage dev", user=OPERATOR, channel=CHANNEL).status == 200
        assert eventually(lambda: self.rows("SELECT id FROM delete_requests WHERE message_ts IS NOT NULL"), 30)
        self.id, self.channel, self.ts = self.rows("SELECT id, channel, message_ts FROM delete_requests")[0]
        posted = self.slack.messages[(self.channel, self.ts)].payload
        reply = sender.block_actions(
            buttons(posted)["Delete"], user=OPERATOR, channel=self.channel, message=posted, message_ts=self.ts
        )
        assert reply.status == 200
        assert eventually(lambda: self.stage_db.scalar(IN_DELETE) == 1, timeout=30)
        assert self.state() == "running"

    def rows(self, sql: str) -> list:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql)))

    def state(self) -> str:
        return self.rows(f"SELECT state FROM delete_requests WHERE id = {self.id}")[0][0]

    def updates(self, needle: str) -> list[str]:
        return [
            c.payload["text"]
            for c in self.slack.calls_to("chat.update")
            if (c.payload.get("channel"), c.payload.get("ts")) == (self.channel, self.ts)
            and needle in c.payload.get("text", "")
        ]


def test_sigterm_lets_a_running_delete_finish_and_delivers_its_final_message(serve, stage_db, bot_db_url, fake_slack):
    with psycopg.connect(stage_db.url, autocommit=True) as conn:
        conn.execute(SLOW_TOOL_CALL_DELETE % 2)  # per statement on mcp_tool_calls
    server = serve()
    run = DeleteRun(server, stage_db, bot_db_url, fake_slack)
    try:
        run.start()
        server.signal(signal.SIGTERM)
        assert eventually(lambda: server.get("/readyz")[0] == 503, 10)
        assert run.state() == "running" and server.process.poll() is None  # draining, the delete still in flight

        assert server.wait(60) == 0
        assert run.state() == "done"
        assert stage_db.scalar("SELECT count(*) FROM mcp_servers WHERE slug = :s", s=TEST_SPEC.big_slug) == 0
        assert stage_db.scalar("SELECT count(*) FROM mcp_tool_calls WHERE mcp_server_id = 'srv_big'") == 0
        # The outbox was flushed before the exit: the message says done, nothing is left queued.
        assert len(run.updates(": done")) == 1
        assert run.rows("SELECT count(*) FROM outbox WHERE delivered_at IS NULL")[0][0] == 0
        assert [o for (o,) in run.rows("SELECT outcome FROM audit_log WHERE command = 'delete'")][-2:] == [
            "running",
            "done",
        ]
    finally:
        run.engine.dispose()


def test_a_delete_longer_than_the_graceful_timeout_rolls_back_and_is_settled_later(
    serve, stage_db, bot_db_url, fake_slack
):
    with psycopg.connect(stage_db.url, autocommit=True) as conn:
        conn.execute(SLOW_TOOL_CALL_DELETE % 10)  # well past the 3 s graceful timeout
    before = checksums(stage_db)
    server = serve("--graceful-timeout", "3")
    run = DeleteRun(server, stage_db, bot_db_url, fake_slack)
    try:
        run.start()
        server.signal(signal.SIGTERM)
        assert server.wait(30) == 0  # cut off after the graceful timeout, the delete still asleep on the stage
        assert any("drain timed out" in line for line in server.log_lines())
        assert checksums(stage_db) == before  # the open transaction shows nothing
        assert run.state() == "running"

        # Another process's recovery job settles it once the dead session has gone from the stage
        # (PostgreSQL rolls its transaction back when the sleep ends and the client is gone).
        serve()
        assert eventually(lambda: run.state() != "running", timeout=90, interval=0.5)
        row = run.rows(f"SELECT state, error FROM delete_requests WHERE id = {run.id}")[0]
        assert row.state == "failed" and "the bot stopped while the delete ran" in row.error
        assert stage_db.scalar(IN_DELETE.replace(" AND wait_event = 'PgSleep'", "")) == 0
        assert checksums(stage_db) == before
        assert eventually(lambda: run.updates(": failed"), timeout=20)
        assert "nothing was deleted" in message_text(fake_slack.messages[(run.channel, run.ts)].payload)
    finally:
        run.engine.dispose()
