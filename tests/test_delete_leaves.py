"""The deletion engine's `delete_leaves` (forget-user's path), on real PostgreSQL.

Tables no foreign key references are deleted by their scope query while the scopes are
materialised, instead of collecting their keys and deleting by them: the delete must be the same,
the counts the same, the hook must see only scopes whose rows are still there, a table with a
DELETE trigger keeps the key path, and the check after the commit still finds rows left in scope.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, text

from bot.deletion.execute import execute_delete
from bot.deletion.plan import DeletePlan
from bot.deletion.steps import MaterializedScope
from bot.stages import Stage
from tests.conftest import StageDb
from tests.deletion_support import BIG, SET_NULL_TRUTH, assert_only_scope_changed, fingerprints, truth
from tests.engine_harness import ROOT, EngineHarness, checksums, differences
from tests.test_deletion_engine import impact, make_stage
from tests.test_engine_schemas import PARTITIONED

KEEP_ONE = (
    "CREATE FUNCTION keep_one() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " IF OLD.id = '{last}' THEN INSERT INTO mcp_tool_calls (id, mcp_server_id, tool_name,"
    " mcp_server_session_id) VALUES (OLD.id, 'srv_s1', OLD.tool_name, 'ses_s1_0'); END IF; RETURN OLD; END $$;"
    " CREATE TRIGGER keep_one AFTER DELETE ON mcp_tool_calls FOR EACH ROW EXECUTE FUNCTION keep_one()"
)


@pytest.fixture
def stage(db: StageDb) -> Iterator[Stage]:
    stage = make_stage(db, STAGE_LOCK_TIMEOUT_MS="300")
    yield stage
    stage.dispose()


class Hook:
    """Records what the hook was handed, and what the database held at that moment."""

    def __init__(self) -> None:
        self.scopes: list[MaterializedScope] = []
        self.temp_rows: dict[str, int] = {}
        self.tool_calls_left = -1

    def __call__(self, conn: Connection, plan: DeletePlan, scopes: list[MaterializedScope]) -> None:
        self.scopes = scopes
        for s in scopes:
            self.temp_rows[s.table.qualified] = conn.execute(
                text(f'SELECT count(*) FROM "{s.temp_table}"')
            ).scalar_one()
        self.tool_calls_left = conn.execute(
            text("SELECT count(*) FROM mcp_tool_calls WHERE mcp_server_id = 'srv_big'")
        ).scalar_one()


def test_leaves_deleted_as_found_make_the_same_delete_and_the_hook_sees_only_the_rest(db, stage):
    _, report = impact(stage)
    expected = truth(db)
    nulled = truth(db, queries=SET_NULL_TRUTH)
    before = fingerprints(db)
    hook = Hook()
    result = execute_delete(stage, BIG, expected=report.snapshot, budget_s=60, before_delete=hook, delete_leaves=True)
    assert result.verified, result.verification
    assert {s.key: s.rows for s in result.steps if s.action == "delete"} == {t: len(k) for t, k in expected.items()}
    assert result.counts == report.snapshot
    assert_only_scope_changed(before, fingerprints(db), expected, nulled)
    handed = {s.table.qualified for s in hook.scopes}
    # Leaves (nothing references them) were gone before the hook; every scope it got has its temp table, full.
    assert handed.isdisjoint(
        {"public.mcp_tool_calls", "public.deploy_logs", "public.user_prefs", "billing.usage_records"}
    )
    assert {"public.mcp_servers", "public.mcp_server_session", "public.deploy_steps", "public.server_notes"} <= handed
    assert "public.session_bookmarks" in handed  # the SET NULL rows
    assert hook.tool_calls_left == 0
    assert hook.temp_rows == {s.table.qualified: s.rows for s in hook.scopes}
    with stage.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM pg_class WHERE relname LIKE 'mcpops_%'")).scalar() == 0


def test_a_dry_run_deleting_leaves_as_found_counts_the_same_and_changes_nothing(db, stage):
    _, report = impact(stage)
    before = fingerprints(db)
    result = execute_delete(stage, BIG, expected=None, budget_s=60, dry_run=True, delete_leaves=True)
    assert result.dry_run and result.counts == report.snapshot
    assert fingerprints(db) == before


def test_a_leaf_with_a_delete_trigger_keeps_its_keys_and_the_check_finds_the_row_it_put_back(db, stage):
    _, report = impact(stage)
    db.execute(KEEP_ONE.format(last=db.scalar("SELECT max(id) FROM mcp_tool_calls WHERE mcp_server_id = 'srv_big'")))
    result = execute_delete(stage, BIG, expected=report.snapshot, budget_s=60, delete_leaves=True)
    assert result.verification == [
        f"mcp_tool_calls: 1 of the {report.snapshot['public.mcp_tool_calls']:,} deleted rows are there again"
    ]


def test_the_check_after_the_commit_runs_a_leafs_scope_query_again(db, stage):
    _, report = impact(stage)

    def progress(p: Any) -> None:  # right after the commit: a new row in user_prefs' scope (a user it deleted)
        if p.phase == "verifying":
            db.execute(
                "INSERT INTO mcp_server_user (id) VALUES ('msu_big_0');"
                " INSERT INTO user_prefs VALUES ('msu_big_0', 'x')"
            )

    result = execute_delete(stage, BIG, expected=report.snapshot, budget_s=60, delete_leaves=True, progress=progress)
    assert result.verification == [  # children first, as deleted
        f"user_prefs: 1 row is in its scope again ({report.snapshot['public.user_prefs']:,} rows deleted)",
        f"mcp_server_user: 1 of the {report.snapshot['public.mcp_server_user']:,} deleted rows are there again",
    ]


def same_as_postgresql(h: EngineHarness, schema: str) -> tuple[dict[str, int], list[str]]:
    """Forget-user's path (`delete_leaves`) on `schema` vs PostgreSQL's own delete of server s1 on a clone:
    the snapshot, and the tables whose scopes the hook was handed."""
    db = h.database(schema)
    reference = h.clone(db)
    reference.execute("DELETE FROM mcp_servers WHERE slug = 's1'")
    stage = h.stage(db)
    _, report = h.impact(stage, "s1")
    handed: list[str] = []
    result = execute_delete(
        stage,
        "s1",
        expected=report.snapshot,
        budget_s=60,
        delete_leaves=True,
        before_delete=lambda _c, _p, scopes: handed.extend(s.table.qualified for s in scopes),
    )
    assert result.verified, result.verification
    assert differences(checksums(db.dsn), checksums(reference.dsn)) == []
    return report.snapshot, handed


def test_partitioned_and_composite_key_leaves_match_postgresqls_own_delete(h: EngineHarness):
    snapshot, handed = same_as_postgresql(
        h,
        PARTITIONED
        + """
        CREATE TABLE tags (server_id text REFERENCES mcp_servers ON DELETE CASCADE, name text,
            PRIMARY KEY (server_id, name));
        INSERT INTO tags VALUES ('srv1', 'a'), ('srv1', 'b'), ('srv2', 'a');
        """,
    )
    assert snapshot["public.events"] == 2 and snapshot["public.tags"] == 2
    assert handed == ["public.mcp_servers"]


def test_small_parents_keyed_by_a_domain_are_probed_as_an_array_of_it(h: EngineHarness):
    # A few parent rows: their children compare with an array of their keys, cast to an array of the domain.
    snapshot, handed = same_as_postgresql(
        h,
        ROOT
        + """
        CREATE DOMAIN code AS text CHECK (VALUE <> '');
        CREATE TABLE kinds (c code PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);
        CREATE TABLE kind_notes (id int PRIMARY KEY, c code REFERENCES kinds ON DELETE CASCADE);
        INSERT INTO kinds VALUES ('a', 'srv1'), ('b', 'srv2');
        INSERT INTO kind_notes VALUES (1, 'a'), (2, 'b'), (3, 'a'), (4, NULL);
        """,
    )
    assert snapshot["public.kind_notes"] == 2
    assert sorted(handed) == ["public.kinds", "public.mcp_servers"]
