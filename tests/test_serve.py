"""`mcp-ops serve` as a real gunicorn subprocess: serves, refuses bad requests, drains on SIGTERM."""

from __future__ import annotations

import json
import signal
import time

import psycopg
import pytest
from sqlalchemy import create_engine, text

from bot.config import parse_database_url
from bot.console.process import ServeProcess
from tests.conftest import AUDIT_CHANNEL, SIGNING_SECRET, TEST_SPEC, base_env, eventually, message_text


@pytest.fixture
def serve(tmp_path, bot_db_url, stage_db, fake_slack):
    processes: list[ServeProcess] = []

    def start(**overrides: str) -> ServeProcess:
        env = base_env(bot_db_url=bot_db_url, stages={"dev": stage_db.url}, slack=fake_slack)
        env.update(overrides)
        process = ServeProcess(env, tmp_path / f"serve{len(processes)}.log").start()
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.stop()


def bot_db_scalar(url: str, sql: str):
    engine = create_engine(parse_database_url("BOT_DATABASE_URL", url))
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()


def test_sigterm_drains_accepted_work_refuses_new_work_and_flushes_the_outbox(serve, stage_db, bot_db_url, fake_slack):
    server = serve(STAGE_LOCK_TIMEOUT_MS="120000")
    sender = server.sender(SIGNING_SECRET, fake_slack.base_url)

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
        json.loads(line)  # gunicorn's own lines included


def test_the_production_server_refuses_forged_stale_and_oversized_requests(serve, fake_slack):
    server = serve()
    sender = server.sender(SIGNING_SECRET, fake_slack.base_url)
    body = sender.slash_body("help", user="UOPERATOR1", channel="CGENERAL01")
    assert sender.post(body).status == 200
    assert sender.post(body, signature="v0=" + "0" * 64).status == 401
    assert sender.post(body, headers={"X-Slack-Signature": ""}).status == 401
    assert sender.post(body, timestamp=int(time.time()) - 301).status == 401
    big = sender.slash_body("help " + "x" * (1024 * 1024), user="UOPERATOR1", channel="CGENERAL01")
    assert sender.post(big).status == 413
    assert server.get("/healthz") == (200, "ok")
