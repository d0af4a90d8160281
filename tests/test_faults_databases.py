"""Databases failing under the bot: a stage killed mid-command, the bot database restarted.

Each test runs its own PostgreSQL cluster, so it can be stopped and started without
touching the suite's shared one.
"""

from __future__ import annotations

import urllib.request

import psycopg
import pytest
from sqlalchemy import text

from bot.demo import build_platform_database
from bot.errors import BotDatabaseUnreachable, StageUnavailable
from bot.health.attention import AlertAttention
from bot.requests.machine import BOT_DATABASE_DOWN
from tests.conftest import AUDIT_CHANNEL, CHANNEL, OPERATOR, TEST_SPEC, VIEWER, eventually


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def audit_texts(slack) -> list[str]:
    return [c.payload["text"] for c in slack.calls_to("chat.postMessage") if c.payload.get("channel") == AUDIT_CHANNEL]


def test_a_stage_killed_mid_command_gives_a_clear_message_and_changes_nothing(make_bot, own_cluster):
    url = own_cluster.create_database("platform")
    build_platform_database(url, TEST_SPEC)
    bot = make_bot({"dev": url}, STAGE_LOCK_TIMEOUT_MS="120000")
    assert TEST_SPEC.big_slug in bot.command(f"find {TEST_SPEC.big_slug} --stage dev").text()

    # A read-only command whose query is running (waiting on a lock) when the server dies.
    blocker = psycopg.connect(own_cluster.dsn("platform"))
    blocker.execute("LOCK TABLE mcp_servers IN ACCESS EXCLUSIVE MODE")
    reply = bot.command(f"find {TEST_SPEC.big_slug} --stage dev")
    waiting = (
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mcp-ops/dev' AND wait_event_type = 'Lock'"
    )
    assert eventually(lambda: blocker.execute(waiting).fetchone()[0] == 1)
    own_cluster.stop("immediate")
    blocker.close()
    answer = reply.text(timeout=30)
    assert "stage dev is unreachable" in answer
    assert "Traceback" not in answer and "psycopg" not in answer and "127.0.0.1" not in answer
    assert bot.wait_audit(2)[-1].outcome == "unavailable"

    # A write transaction cut between two statements: nothing of it survives.
    own_cluster.start()
    stage = bot.runtime.stages.get("dev")
    counts = (
        "SELECT (SELECT name FROM mcp_servers WHERE slug = %s),"
        " (SELECT count(*) FROM mcp_tool_calls WHERE mcp_server_id = 'srv_big')"
    )
    with psycopg.connect(own_cluster.dsn("platform")) as check:
        before = check.execute(counts, (TEST_SPEC.big_slug,)).fetchone()
    with pytest.raises(StageUnavailable) as failed, stage.write(statement_timeout_ms=60_000) as conn:
        conn.execute(text("UPDATE mcp_servers SET name = 'half-done' WHERE slug = :s"), {"s": TEST_SPEC.big_slug})
        conn.execute(text("DELETE FROM mcp_tool_calls WHERE mcp_server_id = 'srv_big'"))
        own_cluster.stop("immediate")
        conn.execute(text("DELETE FROM mcp_servers WHERE slug = :s"), {"s": TEST_SPEC.big_slug})
    assert "stage dev is unreachable" in failed.value.message
    own_cluster.start()
    with psycopg.connect(own_cluster.dsn("platform")) as check:
        assert check.execute(counts, (TEST_SPEC.big_slug,)).fetchone() == before

    # The bot was not restarted: the stage works again on the next command.
    assert TEST_SPEC.big_slug in bot.command(f"find {TEST_SPEC.big_slug} --stage dev").text()


def test_the_bot_recovers_from_a_bot_database_restart_without_restarting(make_bot, stage_db, own_cluster):
    bot_db = own_cluster.create_database("bot")
    bot = make_bot({"dev": stage_db.url}, BOT_DATABASE_URL=bot_db)
    assert TEST_SPEC.big_slug in bot.command(f"find {TEST_SPEC.big_slug} --stage dev").text()
    assert eventually(lambda: len(audit_texts(bot.slack)) == 1)

    # A post queued while Slack fails, then the bot database goes away.
    bot.slack.fail("chat.postMessage", status=500, times=1000)
    bot.command("find queued-before-outage --stage dev").text()
    assert eventually(lambda: len(bot.audit_rows()) == 2)
    own_cluster.stop("fast")

    # Read-only commands still answer; what needs the bot database says so plainly; not ready.
    assert TEST_SPEC.big_slug in bot.command(f"find {TEST_SPEC.big_slug} --stage dev").text()
    audit = bot.command("audit --limit 5").text()
    assert "the bot database is unavailable right now" in audit
    assert http_status(bot.server.base_url + "/readyz") == 503
    # A button that asks for an operation (Create index) is answered in words, not "an unexpected error".
    target = {"schema": "public", "table": "mcp_tool_calls", "columns": ["mcp_server_user_id"]}
    asked = bot.runtime.requests.ask("create-index", "dev", target, requester=OPERATOR, channel=CHANNEL, thread=None)
    assert asked == BOT_DATABASE_DOWN
    # Acknowledge and Snooze on an alert: refused in words, nothing half-recorded.
    attention = AlertAttention(bot.runtime.health.book)
    for click in (lambda: attention.acknowledge(1, OPERATOR), lambda: attention.snooze(1, OPERATOR, 4)):
        with pytest.raises(BotDatabaseUnreachable, match="could not record that, so nothing changed"):
            click()
    attention.denied(1, VIEWER, "snooze", "only operators may snooze")  # said to the clicker even unaudited

    own_cluster.start()
    bot.slack.clear_failures()
    with bot.runtime.bot_engine.begin() as conn:  # skip the back-off the outage built up
        conn.execute(text("UPDATE outbox SET next_attempt_at = now() WHERE delivered_at IS NULL"))
    assert eventually(lambda: http_status(bot.server.base_url + "/readyz") == 200, timeout=30)
    assert TEST_SPEC.big_slug in bot.command(f"find {TEST_SPEC.big_slug} --stage dev").text()
    assert "Latest audit entries" in bot.command("audit --limit 5").text()
    # The outbox resumed: the post queued before the outage and the new ones arrive, once each.
    assert eventually(lambda: len(audit_texts(bot.slack)) == 4, timeout=30)
    texts = audit_texts(bot.slack)
    assert len(set(texts)) == 4
    assert any("queued-before-outage" in t for t in texts)
    assert bot.runtime.outbox.backlog() == 0
