"""Deletes interrupted for real: the stage database killed mid-delete, the bot process SIGKILLed mid-delete.

Each test makes the delete slow with a statement trigger that sleeps on the stage, so the
interruption lands while the delete's transaction is open, then checks that every table is as
it was and that the request says what happened.
"""

from __future__ import annotations

import psycopg
from sqlalchemy import create_engine, text

from bot.config import parse_database_url
from bot.console.process import ServeProcess
from bot.demo import build_platform_database
from tests.conftest import CHANNEL, OPERATOR, SIGNING_SECRET, TEST_SPEC, base_env, eventually, message_text
from tests.deletion_support import (
    SLOW_TOOL_CALL_DELETE,
    buttons,
    press,
    start_delete,
    table_checksums,
    wait_state,
    wait_update,
)

IN_DELETE = (
    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'mcp-ops/dev/request-%%'"
    " AND wait_event = 'PgSleep'"
)


def checksums(dsn: str) -> dict:
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn))
    try:
        with engine.connect() as conn:
            return table_checksums(conn)
    finally:
        engine.dispose()


def slow_platform(cluster, sleep_s: int) -> tuple[str, str, dict]:
    """A platform database whose tool-call delete sleeps `sleep_s`: (url, dsn, checksums before)."""
    url = cluster.create_database("platform")
    build_platform_database(url, TEST_SPEC)
    dsn = cluster.dsn("platform")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SLOW_TOOL_CALL_DELETE % sleep_s)
    return url, dsn, checksums(dsn)


def request_row(engine, request_id: int):
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM delete_requests WHERE id = :i"), {"i": request_id}).one()


def test_the_stage_database_killed_mid_delete_fails_it_cleanly(make_bot, own_cluster):
    url, dsn, before = slow_platform(own_cluster, 30)
    bot = make_bot({"dev": url})
    request_id = start_delete(bot)
    press(bot, request_id, "Delete", OPERATOR)
    with psycopg.connect(dsn, autocommit=True) as watcher:
        assert eventually(lambda: watcher.execute(IN_DELETE).fetchone()[0] == 1, timeout=30)
    own_cluster.stop("immediate")  # the server dies with the delete's transaction open

    row = wait_state(bot, request_id, {"failed", "done"}, timeout=60)
    assert row.state == "failed" and "stage dev is unreachable" in row.error
    failed = message_text(wait_update(bot, request_id, ": failed"))
    assert "Failed and rolled back, nothing was deleted" in failed and "127.0.0.1" not in failed
    own_cluster.start()  # possibly on another port, if its own is still taken
    assert checksums(own_cluster.dsn("platform")) == before  # nothing half-done


def test_a_bot_killed_mid_delete_is_marked_failed_at_the_next_start(tmp_path, bot_db_url, own_cluster, fake_slack):
    url, dsn, before = slow_platform(own_cluster, 5)
    env = base_env(bot_db_url=bot_db_url, stages={"dev": url}, slack=fake_slack)
    env["BACKUP_DIR"] = str(tmp_path / "backups")
    bot_engine = create_engine(parse_database_url("BOT_DATABASE_URL", bot_db_url))
    first = ServeProcess(env, tmp_path / "first.log").start()
    second = ServeProcess(env, tmp_path / "second.log")
    try:
        sender = first.sender(SIGNING_SECRET, fake_slack.base_url, fake_slack.check_ack)
        assert sender.slash(f"delete {TEST_SPEC.big_slug} --stage dev", user=OPERATOR, channel=CHANNEL).status == 200
        posted = fake_slack.wait_for_call(
            "chat.postMessage", lambda c: c.payload.get("channel") == CHANNEL and "Delete" in str(c.payload), 30
        )[0]
        posted_ts = "SELECT id, message_ts FROM delete_requests WHERE message_ts IS NOT NULL"
        with bot_engine.connect() as conn:
            assert eventually(lambda: conn.execute(text(posted_ts)).first())  # recorded once Slack answered
            request_id, ts = conn.execute(text(posted_ts)).one()
        reply = sender.block_actions(
            buttons(posted.payload)["Delete"], user=OPERATOR, channel=CHANNEL, message=posted.payload, message_ts=ts
        )
        assert reply.status == 200
        with psycopg.connect(dsn, autocommit=True) as watcher:
            assert eventually(lambda: watcher.execute(IN_DELETE).fetchone()[0] == 1, timeout=30)
        assert request_row(bot_engine, request_id).state == "running"
        first.kill()  # SIGKILL: no drain, no rollback from the bot's side

        second.start()
        # The dead process's transaction is still open on the stage until its statement ends; the
        # new process waits for it to go, then settles the request.
        assert eventually(lambda: request_row(bot_engine, request_id).state != "running", timeout=90)
        row = request_row(bot_engine, request_id)
        assert row.state == "failed" and "the bot stopped while the delete ran" in row.error
        assert eventually(
            lambda: "nothing was deleted" in message_text(fake_slack.messages[(CHANNEL, ts)].payload), timeout=30
        )
        assert checksums(dsn) == before
    finally:
        first.kill()
        second.stop()
        bot_engine.dispose()
