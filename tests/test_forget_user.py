"""`/mcp forget-user` through the real HTTP endpoint (signed requests) and the fake Slack Web API."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import text

from bot.logs import JsonFormatter
from tests.conftest import OPERATOR, VIEWER, BotHarness, StageDb, message_text
from tests.deletion_support import add_extra_tables, checksums
from tests.erasure_support import EMAIL, TYPED, add_person


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Every log line the bot writes during the test, formatted as in production."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(previous)


@pytest.fixture
def person_db(stage_db: StageDb) -> StageDb:
    add_extra_tables(stage_db)
    add_person(stage_db)
    return stage_db


@pytest.fixture
def app(make_bot: Callable[..., BotHarness], person_db: StageDb, make_stage_db: Callable[[], StageDb]) -> BotHarness:
    return make_bot({"dev": person_db.url, "staging": make_stage_db().url, "production": person_db.url})


def bot_database_text(bot: BotHarness) -> str:
    """Every row of every table of the bot database, as text."""
    with bot.runtime.bot_engine.connect() as conn:
        tables = conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars().all()
        return "\n".join(
            str(row) for name in tables for row in conn.execute(text(f'SELECT t::text FROM "{name}" t')).scalars()
        )


def assert_nowhere(bot: BotHarness, logs: io.StringIO, *needles: str) -> None:
    """Not in the bot database, not in any Slack call the bot made, not in any log line."""
    payloads = "\n".join(str(c.payload) for c in bot.slack.calls)
    for haystack, where in ((bot_database_text(bot), "bot database"), (payloads, "Slack"), (logs.getvalue(), "logs")):
        for needle in needles:
            assert needle.lower() not in haystack.lower(), f"{needle!r} found in the {where}"


def test_dry_run_reports_the_real_counts_and_changes_nothing(app, person_db, log_lines):
    before = checksums(person_db)
    reply = app.command(f"forget-user '{TYPED}' --stage dev --dry-run")
    body = reply.text(timeout=60)
    assert reply.message()["response_type"] == "ephemeral"
    assert "Dry run on *dev*" in body and "rolled back" in body
    assert "`mcp_tool_calls`: 3 rows deleted" in body
    assert "`support_requests`: 2 rows deleted" in body
    assert "`session_bookmarks`: 1 row set to NULL" in body
    slugs = [r[0] for r in person_db.rows("SELECT slug FROM mcp_servers WHERE id IN ('srv_big', 'srv_s1') ORDER BY 1")]
    assert "Servers this person used: " + ", ".join(f"`{s}`" for s in slugs) in body
    assert "The servers themselves are untouched." in body
    assert "a***@example.com" in body and "sha256:" in body
    assert checksums(person_db) == before
    app.wait_audit(1)
    [audit] = [r for r in app.audit_rows() if r.command == "forget-user"]
    assert audit.args.startswith("sha256:") and "dry-run" in audit.args
    assert_nowhere(app, log_lines, EMAIL, "alice.two")


def test_an_identifier_matching_nothing_gets_a_clear_reply(app, person_db, log_lines):
    before = checksums(person_db)
    body = app.command("forget-user nobody@example.com --stage dev --dry-run").text(timeout=30)
    assert "nothing on this stage matches sha256:" in body and "no user row, no listed column" in body
    body = app.command("forget-user nobody@example.com --stage dev").text(timeout=30)
    assert "nothing on this stage matches" in body
    assert checksums(person_db) == before
    assert_nowhere(app, log_lines, "nobody@example.com")


def test_every_stage_dry_run_is_one_combined_impact(app, person_db, log_lines):
    before = checksums(person_db)
    reply = app.command(f"forget-user {EMAIL} --all-stages")
    body = reply.text(timeout=90)
    assert reply.message()["response_type"] == "in_channel"
    assert "Dry run on every stage" in body and "on 2 of 3 stage(s)" in body
    assert "*staging*: nothing matches." in body
    assert "*production* (protected): 11 rows" in body and "*dev*: 11 rows" in body, body
    assert checksums(person_db) == before
    assert_nowhere(app, log_lines, EMAIL)


def test_bad_input_is_refused_with_the_usage(app, log_lines):
    assert "missing &lt;email|distinct-id|user-id&gt;" in app.command("forget-user --stage dev").text()
    assert "only operators" in app.command(f"forget-user {EMAIL} --stage dev", user=VIEWER).text()
    assert "unknown stage" in app.command(f"forget-user {EMAIL} --stage nowhere").text()
    assert "name a stage" in app.command(f"forget-user {EMAIL} --dry-run").text(timeout=30)
    assert "leave out `--stage`" in app.command(f"forget-user {EMAIL} --all-stages --stage dev").text(timeout=30)
    app.wait_audit(5)
    refusals = [r for r in app.audit_rows() if r.command == "forget-user"]
    assert len(refusals) == 5 and all(EMAIL not in (r.args + str(r.detail)).lower() for r in refusals)
    assert OPERATOR  # the operator is the default sender
    assert_nowhere(app, log_lines, EMAIL)
    assert message_text  # imported for the request-flow tests below
