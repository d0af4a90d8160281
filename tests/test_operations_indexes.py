"""Create index / Drop index (issue 15): from the impact report, the daily foreign-key alert and `/mcp indexes`;
`CREATE INDEX CONCURRENTLY` on real PostgreSQL, a failed build's INVALID index cleaned up, signed HTTP, fake Slack.
"""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pytest

from tests.conftest import (
    ALERT_CHANNEL,
    APPROVER,
    CHANNEL,
    OPERATOR,
    TEST_SPEC,
    BotHarness,
    StageDb,
    eventually,
    message_text,
)
from tests.deletion_support import ephemeral_on, request_message, requests_rows, updates_of, wait_state, wait_update
from tests.test_operations_sessions import alert_message, buttons, latest_request

BIG = TEST_SPEC.big_slug
USER_KEY = "mcp_tool_calls_mcp_server_user_id_idx"
SESSION_KEY = "support_requests_mcp_server_session_id_idx"
INVALID = "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE NOT i.indisvalid"


@pytest.fixture
def bot(make_bot, stage_db: StageDb) -> BotHarness:
    return make_bot({"dev": stage_db.url, "production": stage_db.url}, STAGE_LOCK_TIMEOUT_MS="1000")


def index_valid(db: StageDb, name: str) -> bool | None:
    return db.scalar(
        "SELECT i.indisvalid AND i.indisready FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE c.relname = :n",
        n=name,
    )


def press(bot: BotHarness, payload: dict[str, Any], label: str, user: str = OPERATOR, channel: str = CHANNEL) -> str:
    url = bot.sender.new_response_url()
    reply = bot.sender.block_actions(
        buttons(payload)[label], user=user, channel=channel, message=payload, response_url=url
    )
    assert reply.status == 200
    return url


def finished(bot: BotHarness, kind: str, count: int = 1) -> Any:
    return wait_state(bot, latest_request(bot, kind, count).id, {"done", "failed", "stale"}, timeout=60)


def test_create_index_from_the_impact_report_builds_it_and_the_estimate_uses_it(bot, stage_db):
    report = bot.command(f"impact {BIG} --stage dev").message(timeout=60)
    assert "Create index: mcp_tool_calls(mcp_server_user_id)" in buttons(report)
    press(bot, report, "Create index: mcp_tool_calls(mcp_server_user_id)")
    request = finished(bot, "create-index")
    assert request.state == "done", request.error
    assert request.result["index"] == USER_KEY and index_valid(stage_db, USER_KEY) is True
    named = {"schema": "public", "table": "mcp_tool_calls", "columns": ["mcp_server_user_id"]}
    assert request.server_key.items() >= named.items()
    table_oid = stage_db.scalar("SELECT 'mcp_tool_calls'::regclass::oid")
    assert (request.server_key["table_oid"], request.server_key["types"]) == (table_oid, ["text"])
    assert f"index `{USER_KEY}` built in" in message_text(wait_update(bot, request.id, ": done"))
    assert [r.outcome for r in bot.audit_rows() if r.command == "create-index"] == [
        "requested",
        "confirmed",
        "running",
        "done",
    ]

    # The impact report now counts with the index: no scan of mcp_tool_calls per deleted user.
    after = bot.command(f"impact {BIG} --stage dev").message(timeout=60)
    assert "Create index: mcp_tool_calls(mcp_server_user_id)" not in buttons(after)
    assert "mcp_tool_calls(mcp_server_user_id)" not in message_text(after)
    # Pressed again on the old report: an equivalent index exists, nothing is asked.
    again = message_text(ephemeral_on(bot, press(bot, report, "Create index: mcp_tool_calls(mcp_server_user_id)")))
    assert "an equivalent index exists already" in again and USER_KEY in again
    assert [r.kind for r in requests_rows(bot)] == ["create-index"]


def test_a_failed_build_leaves_no_invalid_index_behind(bot, stage_db):
    listing = bot.command("indexes --stage dev").message(timeout=30)
    assert "support_requests (mcp_server_session_id) has no index" in message_text(listing)
    writer = psycopg.connect(stage_db.url, application_name="billing-worker")
    writer.execute("UPDATE support_requests SET status = status WHERE id = (SELECT min(id) FROM support_requests)")
    try:
        # The build waits for the open writer, runs out of lock_timeout, and leaves an INVALID index.
        label = "Create index: public.support_requests (mcp_server_session_id)"
        press(bot, listing, label)
        failed_build = f"({INVALID}) = 1 AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_create_index)"
        deadline = time.monotonic() + 30
        while not stage_db.scalar(f"SELECT {failed_build}") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stage_db.scalar(f"SELECT {failed_build}"), "the build never failed on its lock_timeout"
        assert latest_request(bot, "create-index").state == "running"  # dropping what it left, waiting on the writer
    finally:
        writer.rollback()  # the writer goes: the INVALID index can be dropped now
        writer.close()
    request = finished(bot, "create-index")
    assert request.state == "failed"
    assert f"the build of `{SESSION_KEY}` failed: a lock could not be taken within lock_timeout" in request.error
    assert f"it left an INVALID index `{SESSION_KEY}`, which was dropped" in request.error
    assert stage_db.scalar(INVALID) == 0 and index_valid(stage_db, SESSION_KEY) is None
    assert "Failed, nothing was built" in message_text(wait_update(bot, request.id, ": failed"))


def test_a_build_reports_its_phase_from_pg_stat_progress_create_index(make_bot, stage_db):
    """While the build waits for an open writer, the request's message says so (read from the progress view)."""
    bot = make_bot({"dev": stage_db.url}, STAGE_LOCK_TIMEOUT_MS="120000")
    listing = bot.command("indexes --stage dev").message(timeout=30)
    writer = psycopg.connect(stage_db.url, application_name="billing-worker")
    writer.execute("UPDATE support_requests SET status = status WHERE id = (SELECT min(id) FROM support_requests)")
    try:
        press(bot, listing, "Create index: public.support_requests (mcp_server_session_id)")
        request = latest_request(bot, "create-index")

        def waiting() -> str | None:
            texts = [message_text(p) for p in updates_of(bot, request.id)]
            return next((t for t in texts if "waiting for writers before build" in t), None)

        shown = eventually(waiting, timeout=60)
        assert shown and "Running: `CREATE INDEX CONCURRENTLY`, waiting for writers before build" in shown, shown
        assert latest_request(bot, "create-index").state == "running"
    finally:
        writer.rollback()  # the writer goes: the build goes on
        writer.close()
    done = finished(bot, "create-index")
    assert done.state == "done", done.error
    assert index_valid(stage_db, SESSION_KEY) is True and stage_db.scalar(INVALID) == 0


def test_the_daily_alert_and_indexes_carry_create_and_drop_buttons(bot, stage_db):
    with psycopg.connect(stage_db.url, autocommit=True) as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY tool_name_uq ON mcp_tool_calls (tool_name)")
    stage_db.execute("CREATE INDEX session_slug_twin ON mcp_server_session (mcp_server_slug)")
    bot.runtime.health.run_group("dev", "fk_indexes")
    _ts, alert = alert_message(bot, "on stage *dev*", "without an index")
    assert "Create index: public.support_requests (mcp_server_session_id)" in buttons(alert)

    listing = bot.command("indexes --stage dev").message(timeout=30)
    text_ = message_text(listing)
    assert "invalid index public.tool_name_uq" in text_ and "session_slug_twin" in text_
    # One Drop index per invalid or duplicate index, each naming its index by name and definition.
    elements = [
        e
        for block in listing["blocks"]
        if block.get("type") == "actions"
        for e in block["elements"]
        if e["text"]["text"] == "Drop index"
    ]
    by_index = {json.loads(e["value"])["t"]["index"]: e for e in elements}
    assert {"tool_name_uq", "session_slug_twin"} <= set(by_index)
    for count, index in enumerate(("tool_name_uq", "session_slug_twin"), 1):
        url = bot.sender.new_response_url()
        bot.sender.block_actions(by_index[index], user=OPERATOR, channel=CHANNEL, message=listing, response_url=url)
        assert finished(bot, "drop-index", count).state == "done"
    assert stage_db.scalar(INVALID) == 0
    assert index_valid(stage_db, "session_slug_twin") is None and index_valid(stage_db, "mcp_server_session_slug_idx")

    # On a protected stage the same button asks approvers; the requester cannot approve it.
    bot.runtime.health.run_group("production", "fk_indexes")
    _ts, alert = alert_message(bot, "on stage *production*", "without an index")
    press(bot, alert, "Create index: public.support_requests (mcp_server_session_id)", channel=ALERT_CHANNEL)
    request = wait_state(bot, latest_request(bot, "create-index").id, {"pending"})
    assert request.protected and index_valid(stage_db, SESSION_KEY) is None
    from tests.deletion_support import press as press_request

    message = request_message(bot, request.id)
    refused = message_text(ephemeral_on(bot, press_request(bot, request.id, "Approve", OPERATOR, message)))
    assert "someone else has to approve it" in refused
    press_request(bot, request.id, "Approve", APPROVER, message)
    assert wait_state(bot, request.id, {"done", "failed", "stale"}, timeout=60).state == "done"
    assert index_valid(stage_db, SESSION_KEY) is True


def test_index_names_are_predictable_and_fit_in_63_bytes():
    from bot.indexes.naming import index_name

    assert index_name("support_requests", ["mcp_server_session_id"]) == SESSION_KEY
    long = index_name("ünterschiedlich_lange_tabelle_" * 2, ["spalte_eins", "spalte_zwei"])
    assert len(long.encode()) <= 63 and long.encode().decode() == long  # cut on a character boundary
    assert long == index_name("ünterschiedlich_lange_tabelle_" * 2, ["spalte_eins", "spalte_zwei"])
    assert long != index_name("ünterschiedlich_lange_tabelle_" * 2, ["spalte_eins", "spalte_drei"])


def test_odd_identifiers_are_quoted_by_sqlalchemy_and_the_build_and_drop_run_as_shown(bot, stage_db):
    from bot.indexes.build import build, create_statement, drop, drop_statement

    with psycopg.connect(stage_db.url, autocommit=True) as conn:  # sent as written: no placeholders read
        conn.execute('CREATE TABLE "Odd %Tbl" ("Who :id" int, "say ""hi""" text, plain int)', prepare=False)
    try:
        statement = create_statement("public", "Odd %Tbl", ["Who :id", 'say "hi"', "plain"], "Odd %idx")
        assert statement == 'CREATE INDEX CONCURRENTLY "Odd %idx" ON public."Odd %Tbl" ("Who :id", "say ""hi""", plain)'
        assert drop_statement("public", "Odd %idx") == 'DROP INDEX CONCURRENTLY IF EXISTS public."Odd %idx"'
        stage = bot.runtime.stages.get("dev")
        built = build(
            stage,
            "public",
            "Odd %Tbl",
            ["Who :id", 'say "hi"', "plain"],
            "Odd %idx",
            lock_timeout_ms=1000,
            statement_timeout_ms=30_000,
            work_name=None,
            progress=lambda _p: None,
        )
        assert built.name == "Odd %idx" and '("Who :id", "say ""hi""", plain)' in built.definition
        assert index_valid(stage_db, "Odd %idx") is True
        assert drop(stage, "public", "Odd %idx", lock_timeout_ms=1000, statement_timeout_ms=30_000) is None
        assert index_valid(stage_db, "Odd %idx") is None
    finally:
        with psycopg.connect(stage_db.url, autocommit=True) as conn:
            conn.execute('DROP TABLE IF EXISTS "Odd %Tbl"')
