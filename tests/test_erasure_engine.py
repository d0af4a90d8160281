"""Forgetting a person at the domain level, on real PostgreSQL, against a hand-written reference erase."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bot.deletion.execute import Progress, SnapshotChanged
from bot.erasure.identity import Person, email_digest, token
from bot.erasure.plan import ErasureTarget, measure_erasure
from bot.erasure.run import run_erasure
from bot.erasure.settings import load_erasure_settings
from bot.errors import NotFound
from tests.conftest import StageDb
from tests.deletion_support import add_extra_tables, checksums
from tests.erasure_support import ANONYMISE_ENV, EMAIL, HAND_ANONYMISE, TYPED, USER, add_person, hand_erase
from tests.test_deletion_engine import make_stage


@pytest.fixture
def twins(make_stage_db: Callable[[], StageDb]) -> tuple[StageDb, StageDb]:
    """Two identical platform databases with Alice on them: one for the bot, one for the hand-written erase."""
    pair = (make_stage_db(), make_stage_db())
    for db in pair:
        add_extra_tables(db)
        add_person(db)
    return pair


def forget(db: StageDb, env: dict[str, str], identifier: str = TYPED):
    settings = load_erasure_settings(env)
    stage = make_stage(db)
    try:
        with stage.read() as conn:
            impact = measure_erasure(conn, settings, Person.of(identifier))
        result = run_erasure(
            stage, settings, ErasureTarget.from_json(impact.target), expected=impact.snapshot, budget_s=60
        )
    finally:
        stage.dispose()
    return impact, result


def test_forgetting_a_user_of_two_servers_matches_the_hand_written_erase(twins):
    ours, reference = twins
    untouched = checksums(ours)
    impact, result = forget(ours, {})
    hand_erase(reference)
    assert checksums(ours) == checksums(reference)
    assert result.verified, result.verification
    slugs = ours.rows("SELECT slug FROM mcp_servers WHERE id IN ('srv_big', 'srv_s1') ORDER BY slug")
    assert impact.memberships == [r[0] for r in slugs]
    assert impact.servers_untouched and impact.users == 1
    assert impact.snapshot["public.support_requests"] == 2  # by its session and by its email
    assert impact.snapshot["public.mcp_tool_calls"] == 3
    after = checksums(ours)
    changed = {t for t in untouched if untouched[t] != after[t]}
    assert changed == {
        "public.mcp_server_user",
        "public.mcp_server_session",
        "public.mcp_tool_calls",
        "public.support_requests",
        "public.mcp_oauth_tokens",
        "public.user_prefs",
        "public.session_bookmarks",
    }
    # Bob and Carol, in the same session-less support thread, are untouched.
    assert ours.rows("SELECT id, email FROM support_requests WHERE title = 'Thread 7' ORDER BY id") == [
        ("sr_b2", "bob@example.com"),
        ("sr_c2", "carol@example.com"),
    ]


def test_anonymise_mode_and_the_json_scan_match_the_hand_written_erase(twins):
    ours, reference = twins
    impact, result = forget(ours, ANONYMISE_ENV, identifier="did_alice")  # by distinct_id: her email is found
    hand_erase(reference, HAND_ANONYMISE)
    assert checksums(ours) == checksums(reference)
    assert result.verified, result.verification
    found = {j.column: j for j in impact.json}
    assert found["mcp_tool_calls.input"].in_deleted == 1  # her own tool call, deleted anyway
    assert found["mcp_server_user.profile_data"].in_deleted == 1
    assert found["mcp_tool_calls.input"].scan_rows > 0  # ERASURE_SCAN_ALL: the cost is estimated first
    assert result.scanned == {"json public.mcp_tool_calls.input": 1, "json public.mcp_server_user.profile_data": 0}
    erased = token(email_digest(EMAIL))
    assert ours.rows("SELECT email, title, description FROM support_requests WHERE id = 'sr_a2'") == [
        (erased, None, None)
    ]
    assert ours.scalar("SELECT input->>'to' FROM mcp_tool_calls WHERE id = 'tc_b'") == erased
    assert ours.scalar("SELECT input->>'cc' FROM mcp_tool_calls WHERE id = 'tc_b'") == "bob@example.com"


def test_json_mentions_in_anonymised_rows_are_replaced_without_a_full_scan(twins):
    ours, _ = twins
    ours.execute(
        "ALTER TABLE support_requests ADD COLUMN meta jsonb;"
        ' UPDATE support_requests SET meta = \'{"cc": ["ALICE.two@example.com", "x@y.io"]}\' WHERE id LIKE \'sr_%2\''
    )
    env = {"ERASURE_MODE_support_requests": "anonymise", "ERASURE_JSON_COLUMNS": "support_requests.meta"}
    impact, result = forget(ours, env)
    assert impact.snapshot["json public.support_requests.meta"] == 1  # only Alice's row: others are not read
    assert result.verified
    metas = dict(ours.rows("SELECT id, meta::text FROM support_requests WHERE id LIKE 'sr_%2' ORDER BY id"))
    assert metas["sr_a2"] == f'{{"cc": ["{token(email_digest(EMAIL))}", "x@y.io"]}}'
    assert "alice" in metas["sr_b2"].lower()  # Bob's row is not Alice's: without ERASURE_SCAN_ALL it is not read


def test_an_identifier_matching_nothing_is_refused(twins):
    ours, _ = twins
    before = checksums(ours)
    for identifier in ("nobody@example.com", "did_nobody", "msu_nobody"):
        with pytest.raises(NotFound, match="nothing on this stage matches sha256:"):
            forget(ours, {}, identifier)
    assert checksums(ours) == before


def test_a_user_id_or_distinct_id_finds_the_same_person(twins):
    ours, _ = twins
    by_email = measure(ours, TYPED)
    assert measure(ours, USER).snapshot == by_email.snapshot
    assert measure(ours, "did_alice").snapshot == by_email.snapshot


def measure(db: StageDb, identifier: str):
    stage = make_stage(db)
    try:
        with stage.read() as conn:
            return measure_erasure(conn, load_erasure_settings({}), Person.of(identifier))
    finally:
        stage.dispose()


def test_a_new_user_row_with_the_email_since_the_plan_makes_it_stale(twins):
    ours, _ = twins
    impact = measure(ours, TYPED)
    ours.execute("INSERT INTO mcp_server_user (id, email) VALUES ('msu_alice_2', 'alice.two@EXAMPLE.com')")
    before = checksums(ours)
    stage = make_stage(ours)
    try:
        with pytest.raises(SnapshotChanged, match="changed since the plan"):
            run_erasure(
                stage,
                load_erasure_settings({}),
                ErasureTarget.from_json(impact.target),
                expected=impact.snapshot,
                budget_s=60,
            )
    finally:
        stage.dispose()
    assert checksums(ours) == before


def test_the_check_after_the_commit_finds_a_row_back_in_a_scope_deleted_by_its_query(twins):
    ours, _ = twins
    impact = measure(ours, TYPED)
    stage = make_stage(ours)

    def progress(p: Progress) -> None:  # right after the commit, a new support request under her email
        if p.phase == "verifying":
            ours.execute(
                "INSERT INTO support_requests (id, email, organization_id) VALUES ('sr_a9', :e, 'org_1')", e=EMAIL
            )

    try:
        result = run_erasure(
            stage,
            load_erasure_settings({}),
            ErasureTarget.from_json(impact.target),
            expected=impact.snapshot,
            budget_s=60,
            progress=progress,
        )
    finally:
        stage.dispose()
    assert not result.verified
    assert result.verification == [
        "support_requests: 1 row is in its scope again (2 rows deleted)",
        "support_requests: 1 row still holds the email",
    ]
