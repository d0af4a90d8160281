"""The deletion engine against real PostgreSQL: discovery, exact counts, exact deletes, rollbacks."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import text

from bot.config import load_settings
from bot.deletion.execute import DeleteFailed, SnapshotChanged, execute_delete
from bot.deletion.impact import compare_snapshots, plan_and_measure, snapshot_hash
from bot.deletion.plan import PlanProblem, ServerChanged, ServerGone, build_plan, server_exists
from bot.deletion.scope import Rules
from bot.errors import ConcurrentChange, NotFound, QueryTimeout, StageUnavailable
from bot.stages import Stage, StageRegistry
from tests.conftest import StageDb
from tests.deletion_support import (
    BIG,
    SET_NULL_TRUTH,
    assert_only_scope_changed,
    checksums,
    fingerprints,
    truth,
)


def make_stage(db: StageDb, **env: str) -> Stage:
    settings = load_settings({"BOT_DATABASE_URL": db.url, "DATABASE_URL_DEV": db.url, **env}, require_slack=False)
    return StageRegistry(settings).get("dev")


@pytest.fixture
def stage(db: StageDb) -> Iterator[Stage]:
    stage = make_stage(db, STAGE_LOCK_TIMEOUT_MS="300")
    yield stage
    stage.dispose()


def impact(stage: Stage, slug: str = BIG):
    with stage.read() as conn:
        return plan_and_measure(conn, slug)


def test_discovers_tables_no_code_names_with_their_rules(stage):
    plan, report = impact(stage)
    tables = {t.key: t for t in report.tables}
    for name in (
        "public.deploys",
        "public.deploy_steps",
        "public.deploy_logs",
        "billing.usage_records",
        "public.server_notes",
        "public.user_prefs",
    ):
        assert name in tables and tables[name].action == "delete", name
    assert any("cascade from deploy_steps (deploy_id, step_no)" in v for v in tables["public.deploy_logs"].via)
    nulls = [t for t in report.tables if t.action == "set null"]
    assert [(t.table, t.columns) for t in nulls] == [("session_bookmarks", ["session_id"])]
    # NO ACTION (no rule declared): rows pointing at the server are deleted with it, and say so.
    assert "no ON DELETE rule: deleted with the server (server_id → mcp_servers)" in tables["billing.usage_records"].via
    assert (
        "no ON DELETE rule: deleted with the server (mcp_server_id → mcp_servers)"
        in tables["public.mcp_tool_calls"].via
    )
    blocking = {(fk.child.qualified, fk.on_delete) for fk in plan.blocking}
    assert blocking == {("public.legal_holds", "restrict")}  # outside the scope: checked, no rows here
    assert report.blockers == []
    # children before parents: every delete comes after the deletes of the tables referencing it
    order = [s.table.qualified for s in plan.delete_steps]
    for fk in plan.catalog.foreign_keys:
        if fk.child.qualified in order and fk.parent.qualified in order and fk.child != fk.parent:
            assert order.index(fk.child.qualified) < order.index(fk.parent.qualified), fk.describe()


def test_counts_equal_the_databases_truth(db, stage):
    _, report = impact(stage)
    expected = {table: len(keys) for table, keys in truth(db).items()}
    counted = {t.key: t.rows for t in report.tables if t.action == "delete"}
    assert counted == expected
    assert {t.table: t.rows for t in report.tables if t.action == "set null"} == {
        "session_bookmarks": len(truth(db, queries=SET_NULL_TRUTH)["public.session_bookmarks"])
    }
    assert report.orphaned_users == expected["public.mcp_server_user"] > 0
    assert expected["public.server_notes"] == 3  # the reply of a reply is found through the fixed point
    assert report.total_rows == sum(expected.values())
    assert report.snapshot_hash == snapshot_hash(report.snapshot)


def test_orphaned_users_are_only_the_servers_own(db, stage):
    _, report = impact(stage)
    orphans = truth(db)["public.mcp_server_user"]
    assert not any(u.startswith(("msu_shared_", "msu_lonely_", "msu_s")) for u in orphans)
    assert report.orphaned_users == len(orphans)


def test_delete_removes_exactly_the_scope_and_nothing_else(db, stage):
    _, report = impact(stage)
    expected = truth(db)
    nulled = truth(db, queries=SET_NULL_TRUTH)
    before = fingerprints(db)
    before_sums = checksums(db)
    seen = []
    result = execute_delete(stage, BIG, expected=report.snapshot, budget_s=60, progress=seen.append)
    assert result.verified and not result.dry_run
    assert {s.key: s.rows for s in result.steps if s.action == "delete"} == {t: len(k) for t, k in expected.items()}
    assert_only_scope_changed(before, fingerprints(db), expected, nulled)
    assert db.scalar("SELECT count(*) FROM session_bookmarks WHERE session_id IS NULL") == 1 + len(
        nulled["public.session_bookmarks"]
    )
    # Tables the delete does not reach are byte-identical as a whole.
    after_sums = checksums(db)
    for table in (
        "public.organization",
        "public.user",
        "public.walkthroughs",
        "public.walkthrough_steps",
        "public.legal_holds",
    ):
        assert after_sums[table] == before_sums[table]
    assert any(p.phase == "deleting" and p.table == "mcp_tool_calls" for p in seen)


def test_verification_after_commit_checks_every_deleted_key_not_a_sample(db, stage):
    _, report = impact(stage)
    last = db.scalar("SELECT max(id) FROM mcp_tool_calls WHERE mcp_server_id = 'srv_big'")
    # A trigger puts one deleted tool call back, moved to another server, inside the delete's own transaction.
    db.execute(
        "CREATE FUNCTION keep_one() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF OLD.id = '" + last + "' THEN INSERT INTO mcp_tool_calls (id, mcp_server_id, tool_name,"
        " mcp_server_session_id) VALUES (OLD.id, 'srv_s1', OLD.tool_name, 'ses_s1_0'); END IF; RETURN OLD; END $$;"
        " CREATE TRIGGER keep_one AFTER DELETE ON mcp_tool_calls FOR EACH ROW EXECUTE FUNCTION keep_one()"
    )
    result = execute_delete(stage, BIG, expected=report.snapshot, budget_s=60)
    assert not result.verified
    assert result.verification == [
        f"mcp_tool_calls: 1 of the {report.snapshot['public.mcp_tool_calls']:,} deleted rows are there again"
    ]
    assert db.scalar("SELECT count(*) FROM mcp_servers WHERE slug = :s", s=BIG) == 0
    # The kept tables of keys are gone with the check: the session went back to the pool clean.
    with stage.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM pg_class WHERE relname LIKE 'mcpops_%'")).scalar() == 0


def test_a_small_server_delete_leaves_the_big_one_alone(db, stage):
    slug = db.scalar("SELECT slug FROM mcp_servers WHERE id = 'srv_s1'")
    _, report = impact(stage, slug)
    expected = truth(db, slug)
    nulled = truth(db, slug, SET_NULL_TRUTH)
    assert nulled["public.session_bookmarks"] == {"bm_4"}
    before = fingerprints(db)
    execute_delete(stage, slug, expected=report.snapshot, budget_s=60)
    assert_only_scope_changed(before, fingerprints(db), expected, nulled)
    assert db.scalar("SELECT count(*) FROM mcp_server_user WHERE id LIKE 'msu_shared_%'") == 6  # still shared


def test_dry_run_reports_real_counts_and_changes_nothing(db, stage):
    _, report = impact(stage)
    before = checksums(db)
    result = execute_delete(stage, BIG, expected=None, budget_s=60, dry_run=True)
    assert result.dry_run
    assert {s.key: s.rows for s in result.steps if s.action == "delete"} == {t: len(k) for t, k in truth(db).items()}
    assert checksums(db) == before
    assert result.counts == report.snapshot


def test_restrict_edge_from_outside_the_scope_blocks_and_shows_the_rows(db, stage):
    db.execute("INSERT INTO legal_holds VALUES ('lh_9', 'msu_big_3', 'litigation')")
    _, report = impact(stage)
    assert len(report.blockers) == 1
    blocker = report.blockers[0]
    assert blocker.table == "legal_holds" and blocker.rows == 1
    assert blocker.sample == [{"id": "lh_9", "user_id": "msu_big_3"}]
    before = checksums(db)
    with pytest.raises(DeleteFailed, match="legal_holds"):
        execute_delete(stage, BIG, expected=report.snapshot, budget_s=60)
    assert checksums(db) == before


def test_no_action_rows_go_with_the_server_unless_the_team_blocks_them(db, stage):
    # A usage record of the big server whose session belongs to another server: NO ACTION, no rule declared.
    db.execute("INSERT INTO billing.usage_records VALUES ('ur_odd', 'ses_s2_0', 'srv_big', 1)")
    _, report = impact(stage)
    assert report.blockers == []
    assert report.snapshot["billing.usage_records"] == len(truth(db)["billing.usage_records"])
    assert "ur_odd" in truth(db)["billing.usage_records"]
    with stage.read() as conn:
        _, strict = plan_and_measure(conn, BIG, rules=Rules(no_action="block"))
    assert [b.table for b in strict.blockers] == ["billing.usage_records", "mcp_tool_calls"][:1]
    assert strict.blockers[0].sample[0]["id"] == "ur_odd"
    assert "NO_ACTION_EDGES=block" in strict.blockers[0].reason
    before = checksums(db)
    with pytest.raises(DeleteFailed, match="usage_records"):
        execute_delete(stage, BIG, expected=None, budget_s=60, rules=Rules(no_action="block"))
    assert checksums(db) == before


def test_forced_failure_mid_plan_rolls_everything_back(db, stage):
    _, report = impact(stage)
    before = checksums(db)

    def fail_on_sessions(progress):
        if progress.phase == "deleting" and progress.table == "mcp_server_session":
            raise RuntimeError("simulated crash after tool calls were deleted")

    with pytest.raises(RuntimeError):
        execute_delete(stage, BIG, expected=report.snapshot, budget_s=60, progress=fail_on_sessions)
    assert checksums(db) == before


def test_failing_before_delete_hook_rolls_back(db, stage):
    _, report = impact(stage)
    before = checksums(db)

    def hook(conn, plan, scopes):
        raise OSError("backup store unreachable")

    with pytest.raises(OSError):
        execute_delete(stage, BIG, expected=report.snapshot, budget_s=60, before_delete=hook)
    assert checksums(db) == before


def test_before_delete_hook_can_export_each_scope(db, stage):
    _, report = impact(stage)
    exported: dict[str, int] = {}

    def hook(conn, plan, scopes):
        raw = conn.connection.driver_connection
        for scope in scopes:
            using = ", ".join(f'"{k}"' for k in scope.key)
            sql = (
                f'COPY (SELECT t.* FROM "{scope.table.schema}"."{scope.table.name}" t '
                f'JOIN "{scope.temp_table}" USING ({using})) TO STDOUT'
            )
            with raw.cursor().copy(sql) as copy:
                exported[f"{scope.action} {scope.table.qualified}"] = sum(bytes(b).count(b"\n") for b in copy)

    execute_delete(stage, BIG, expected=report.snapshot, budget_s=60, before_delete=hook)
    deletes = {k.removeprefix("delete "): v for k, v in exported.items() if k.startswith("delete ")}
    assert deletes == {t.key: t.rows for t in report.tables if t.action == "delete"}
    assert exported["set null public.session_bookmarks"] == 3
    assert deletes["public.deploy_steps"] == 6  # composite key, exported through USING (deploy_id, step_no)


def test_lock_timeout_rolls_back_and_says_so(db, stage):
    _, report = impact(stage)
    before = checksums(db)
    holder = psycopg.connect(db.url.replace("postgresql+psycopg://", "postgresql://"))
    try:
        holder.execute("SELECT 1 FROM mcp_server_session WHERE mcp_server_session_id = 'ses_big_5' FOR UPDATE")
        with pytest.raises(QueryTimeout, match="lock"):
            execute_delete(stage, BIG, expected=report.snapshot, budget_s=60)
    finally:
        holder.rollback()
        holder.close()
    assert checksums(db) == before


def test_lost_connection_mid_plan_rolls_back(db, stage):
    _, report = impact(stage)
    before = checksums(db)
    killer = psycopg.connect(db.url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)

    def kill_after_tool_calls(progress):
        if progress.phase == "deleting" and progress.table == "mcp_server_session":
            killer.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'mcp-ops/dev' AND datname = current_database() AND pid <> pg_backend_pid()"
                " AND state = 'idle in transaction'"
            )

    try:
        with pytest.raises(StageUnavailable):
            execute_delete(stage, BIG, expected=report.snapshot, budget_s=60, progress=kill_after_tool_calls)
    finally:
        killer.close()
    assert checksums(db) == before


def test_counts_that_changed_since_confirmation_roll_back(db, stage):
    _, report = impact(stage)
    db.execute(
        "INSERT INTO mcp_tool_calls (id, mcp_server_id, tool_name, mcp_server_session_id)"
        " VALUES ('tc_late', 'srv_big', 'late', 'ses_big_0')"
    )
    before = checksums(db)
    with pytest.raises(SnapshotChanged) as caught:
        execute_delete(stage, BIG, expected=report.snapshot, budget_s=60)
    assert "public.mcp_tool_calls" in caught.value.message
    assert checksums(db) == before


def test_snapshot_comparison_rules():
    approved = {"a": 1000, "b": 0}
    assert compare_snapshots(approved, {"a": 1000, "b": 0}) == []
    assert compare_snapshots(approved, {"a": 1001, "b": 0}) == ["a: 1,000 → 1,001"]
    assert compare_snapshots(approved, {"a": 1010, "b": 0}, 1.0) == []
    assert compare_snapshots(approved, {"a": 1011, "b": 0}, 1.0) == ["a: 1,000 → 1,011"]
    assert compare_snapshots(approved, {"a": 1000, "b": 1}, 1.0) == ["b: 0 → 1"]
    assert compare_snapshots(approved, {"a": 1000, "b": 0, "c": 5}, 1.0) == ["c: new in the plan (5 rows)"]
    assert compare_snapshots(approved, {"a": 1000, "b": 0, "c": 0}, 1.0) == ["c: new in the plan (0 rows)"]


def test_unindexed_foreign_keys_are_measured_and_an_index_is_proposed(db, stage):
    _, report = impact(stage)
    keys = {(k.table, tuple(k.columns)): k for k in report.slow_keys}
    slow = keys[("mcp_tool_calls", ("mcp_server_user_id",))]
    assert slow.parent == "mcp_server_user" and slow.parent_rows == report.orphaned_users
    assert slow.per_row_ms > 0 and slow.estimated_s > 0
    assert slow.create_index.startswith("CREATE INDEX CONCURRENTLY IF NOT EXISTS")
    assert ("support_requests", ("mcp_server_session_id",)) in keys
    assert ("deploy_logs", ("deploy_id", "step_no")) in keys  # composite, unindexed
    db.execute(slow.create_index.replace(" CONCURRENTLY", ""))
    _, after = impact(stage)
    assert ("mcp_tool_calls", ("mcp_server_user_id",)) not in {(k.table, tuple(k.columns)) for k in after.slow_keys}


def test_unknown_slug_and_missing_key(db, stage):
    with pytest.raises(NotFound, match="no server with slug `nope`"), stage.read() as conn:
        build_plan(conn, "nope")
    db.execute("CREATE TABLE keyless (server_id text REFERENCES mcp_servers(id) ON DELETE CASCADE)")
    with pytest.raises(PlanProblem, match="keyless"), stage.read() as conn:
        build_plan(conn, BIG)


def test_concurrent_session_for_an_orphan_on_another_server_fails_the_delete(db, stage):
    """REPEATABLE READ: a user who stops being an orphan mid-delete makes it fail, not delete their new session."""
    _, report = impact(stage)
    writer = psycopg.connect(db.url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
    fired = threading.Event()

    def add_session(progress):
        if progress.phase == "deleting" and not fired.is_set():
            fired.set()
            writer.execute(
                "INSERT INTO mcp_server_session (mcp_server_session_id, mcp_server_slug, connection_date,"
                " mcp_server_user_id) SELECT 'ses_new', slug, current_date, 'msu_big_7' FROM mcp_servers"
                " WHERE id = 'srv_s1'"
            )

    try:
        with pytest.raises(ConcurrentChange):
            execute_delete(stage, BIG, expected=report.snapshot, budget_s=60, progress=add_session)
    finally:
        writer.close()
    assert db.scalar("SELECT count(*) FROM mcp_server_session WHERE mcp_server_session_id = 'ses_new'") == 1
    assert db.scalar("SELECT count(*) FROM mcp_servers WHERE slug = :s", s=BIG) == 1


def test_catalog_reads_search_path_and_schemas(db, stage):
    with stage.read() as conn:
        plan = build_plan(conn, BIG)
        assert conn.execute(text("SELECT 1")).scalar() == 1
    assert any(t.schema == "billing" for t in plan.graph.tables)


def test_a_plan_bound_to_the_servers_primary_key_never_follows_a_reused_slug(db, stage):
    slug = db.scalar("SELECT slug FROM mcp_servers WHERE id = 'srv_s1'")
    by_slug, report = impact(stage, slug)
    assert report.server_key == by_slug.server_key == {"id": "srv_s1"}
    with stage.read() as conn:
        by_key = build_plan(conn, server_key=report.server_key)
        both = build_plan(conn, slug, server_key=report.server_key)
    assert by_key.slug == both.slug == slug
    assert [s.snapshot_key for s in by_key.steps] == [s.snapshot_key for s in by_slug.steps]

    # Renamed: the key still finds it, but not under the slug people approved.
    db.execute(
        "INSERT INTO mcp_servers (id, organization_id, name, product_platform_or_tool, slug)"
        " SELECT 'srv_bare', organization_id, 'bare', 'tool', 'bare-one' FROM mcp_servers WHERE id = 'srv_s2';"
        " UPDATE mcp_servers SET slug = 'bare-two' WHERE id = 'srv_bare'"
    )
    with pytest.raises(ServerChanged, match="now called `bare-two`, not `bare-one`"), stage.read() as conn:
        build_plan(conn, "bare-one", server_key={"id": "srv_bare"})

    # Deleted, and the slug taken by another organisation's new server: the bound request finds nothing.
    execute_delete(stage, server_key=report.server_key, expected=report.snapshot, budget_s=60)
    db.execute(
        "INSERT INTO mcp_servers (id, organization_id, name, product_platform_or_tool, slug)"
        " SELECT 'srv_new', organization_id, 'new', 'tool', :s FROM mcp_servers WHERE id = 'srv_s2'",
        s=slug,
    )
    before = checksums(db)
    with stage.read() as conn:
        assert not server_exists(conn, server_key=report.server_key)
        assert server_exists(conn, slug)
        with pytest.raises(ServerGone, match=r"\(id=srv_s1\) no longer exists"):
            build_plan(conn, slug, server_key=report.server_key)
    with pytest.raises(ServerGone):
        execute_delete(stage, slug, server_key=report.server_key, expected=report.snapshot, budget_s=60)
    assert checksums(db) == before
