"""The deletion engine rooted at arbitrary rows (forget-user roots it at a person's user rows)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Connection, text

from bot.deletion.catalog import TableRef
from bot.deletion.execute import execute_delete
from bot.deletion.impact import measure_impact
from bot.deletion.plan import DeletePlan, build_rooted_plan
from bot.stages import Stage
from tests.conftest import StageDb
from tests.deletion_support import assert_only_scope_changed, fingerprints, truth
from tests.test_deletion_engine import make_stage

USERS = TableRef("public", "mcp_server_user")
USER = "msu_big_0"

SESSIONS = "SELECT mcp_server_session_id FROM mcp_server_session WHERE mcp_server_user_id = :u"
# What deleting user :u must remove, written by hand for this schema (tests/deletion_support.py's tables).
USER_TRUTH = {
    "public.mcp_server_user": "SELECT id FROM mcp_server_user WHERE id = :u",
    "public.mcp_server_session": SESSIONS,
    "public.mcp_tool_calls": f"""SELECT id FROM mcp_tool_calls
        WHERE mcp_server_user_id = :u OR mcp_server_session_id IN ({SESSIONS})""",
    "public.walkthrough_step_completions": f"""SELECT id FROM walkthrough_step_completions
        WHERE mcp_server_user_id = :u OR mcp_server_session_id IN ({SESSIONS})""",
    "public.support_requests": f"SELECT id FROM support_requests WHERE mcp_server_session_id IN ({SESSIONS})",
    "public.mcp_oauth_tokens": "SELECT id FROM mcp_oauth_tokens WHERE mcp_server_user_id = :u",
    "public.user_prefs": "SELECT user_id FROM user_prefs WHERE user_id = :u",
    "billing.usage_records": f"SELECT id FROM billing.usage_records WHERE session_id IN ({SESSIONS})",
}
USER_SET_NULL = {"public.session_bookmarks": f"SELECT id FROM session_bookmarks WHERE session_id IN ({SESSIONS})"}


@pytest.fixture
def stage(db: StageDb) -> Iterator[Stage]:
    stage = make_stage(db)
    yield stage
    stage.dispose()


def user_plan(user: str) -> Callable[[Connection], DeletePlan]:
    def plan_for(conn: Connection) -> DeletePlan:
        return build_rooted_plan(conn, {USERS: lambda t: t.c.id == user}, label="user")

    return plan_for


def hand_truth(db: StageDb, queries: dict[str, str], user: str) -> dict[str, set[str]]:
    with db.engine.connect() as conn:
        return {t: {str(r[0]) for r in conn.execute(text(q), {"u": user})} for t, q in queries.items()}


def test_a_scope_rooted_at_user_rows_removes_exactly_their_rows(db, stage):
    # The user also used a second server: a session and a tool call there, and a bookmark on it.
    db.execute(
        "INSERT INTO mcp_server_session (mcp_server_session_id, mcp_server_slug, connection_date, mcp_server_user_id)"
        " SELECT 'ses_two', slug, current_date, 'msu_big_0' FROM mcp_servers WHERE id = 'srv_s1';"
        " INSERT INTO mcp_tool_calls (id, mcp_server_id, tool_name, mcp_server_session_id)"
        " VALUES ('tc_two', 'srv_s1', 'search_docs', 'ses_two');"
        " INSERT INTO session_bookmarks VALUES ('bm_two', 'ses_two', 'on s1')"
    )
    deleted = hand_truth(db, USER_TRUTH, USER)
    nulled = hand_truth(db, USER_SET_NULL, USER)
    assert "tc_two" in deleted["public.mcp_tool_calls"] and nulled["public.session_bookmarks"] >= {"bm_two"}
    with stage.read() as conn:
        plan = user_plan(USER)(conn)
        report = measure_impact(conn, plan, probe=False)
    assert not report.blockers
    counted = {t.key: t.rows for t in report.tables if t.action == "delete" and t.rows}
    assert counted == {t: len(rows) for t, rows in deleted.items() if rows}
    assert "public.mcp_servers" not in report.snapshot  # servers are never in a user's scope
    before = fingerprints(db)
    result = execute_delete(stage, "user", expected=report.snapshot, budget_s=60, plan_for=user_plan(USER))
    assert result.verified, result.verification
    assert_only_scope_changed(before, fingerprints(db), deleted, nulled)
    # The server-rooted truth of the big server did not move: only this user's rows went.
    assert truth(db)["public.mcp_servers"] == {"srv_big"}


def test_a_restrict_edge_to_a_root_row_is_a_blocker(db, stage):
    # legal_holds(user_id) -> mcp_server_user ON DELETE RESTRICT holds msu_shared_0.
    with stage.read() as conn:
        report = measure_impact(conn, user_plan("msu_shared_0")(conn), probe=False)
    assert [(b.table, b.rows) for b in report.blockers] == [("legal_holds", 1)]
