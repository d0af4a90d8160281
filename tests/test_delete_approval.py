"""Two-person approval for deletes on protected stages, end to end over HTTP and the fake Slack API."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from tests.conftest import (
    APPROVER,
    APPROVER2,
    AUDIT_CHANNEL,
    CHANNEL,
    OPERATOR,
    VIEWER,
    BotHarness,
    message_text,
)
from tests.deletion_support import (
    BIG,
    SET_NULL_TRUTH,
    assert_only_scope_changed,
    audit_outcomes,
    buttons,
    checksums,
    ephemeral_on,
    fingerprints,
    left_running,
    press,
    request_message,
    requests_rows,
    start_delete,
    truth,
    updates_of,
    wait_state,
    wait_update,
)

GROUP = "SAPPROVERS"
GROUP_MEMBER = "UGROUPMEM1"
REASON = '--reason "customer asked to be forgotten"'


@pytest.fixture
def make_prod(make_bot, db, fake_slack):
    fake_slack.usergroups[GROUP] = [GROUP_MEMBER]

    def make(**env: str) -> BotHarness:
        settings = {
            "OPERATORS": OPERATOR,
            "APPROVERS": f"{APPROVER},{APPROVER2},{OPERATOR},{GROUP}",
            **env,
        }
        return make_bot({"dev": db.url, "production": db.url}, **settings)

    return make


@pytest.fixture
def prod(make_prod) -> BotHarness:
    return make_prod()


def request_prod(bot: BotHarness) -> int:
    return start_delete(bot, stage="production", extra=REASON)


def refusal_text(bot: BotHarness, request_id: int, label: str, user: str, payload: dict[str, Any] | None = None) -> str:
    reply = ephemeral_on(bot, press(bot, request_id, label, user, payload))
    assert reply["response_type"] == "ephemeral"
    return message_text(reply)


def test_a_protected_delete_needs_a_reason_and_posts_a_request(prod, db):
    assert '--reason "..."' in prod.command(f"delete {BIG} --stage production").text(timeout=30)
    assert requests_rows(prod) == []
    request_id = request_prod(prod)
    row = requests_rows(prod)[0]
    assert (row.state, row.protected, row.required_approvals, row.requester) == ("pending", True, 1, OPERATOR)
    assert row.reason == "customer asked to be forgotten"
    assert timedelta(minutes=29) < row.expires_at - row.created_at <= timedelta(minutes=30)
    assert row.snapshot["public.mcp_tool_calls"] == len(truth(db)["public.mcp_tool_calls"])
    payload = request_message(prod, request_id)
    assert set(buttons(payload)) == {"Approve", "Reject", "Cancel"}
    body = message_text(payload)
    for needed in (
        "customer asked to be forgotten",
        "Needs *1* approval from approvers",
        "Backup before the delete",
        "mcp_tool_calls",
        f"<@{OPERATOR}>",
        "This stage is protected",
    ):
        assert needed in body, needed
    line = prod.slack.wait_for(
        lambda calls: [
            c
            for c in calls
            if c.method == "chat.postMessage"
            and c.payload.get("channel") == AUDIT_CHANNEL
            and "requested" in c.payload.get("text", "")
        ]
    )
    assert f"#{request_id}" in line[0].payload["text"]


def test_self_approval_and_non_approvers_are_refused_and_audited(prod, db):
    request_id = request_prod(prod)
    assert "You can't approve this: you asked for this delete" in refusal_text(prod, request_id, "Approve", OPERATOR)
    assert "You can't approve this: you are not in APPROVERS" in refusal_text(prod, request_id, "Approve", VIEWER)
    assert "you asked for this delete; use Cancel instead" in refusal_text(prod, request_id, "Reject", OPERATOR)
    assert "You can't reject this: you are not in APPROVERS" in refusal_text(prod, request_id, "Reject", VIEWER)
    assert wait_state(prod, request_id, {"pending"}).state == "pending"
    denied = [r for r in prod.audit_rows() if r.command == "delete" and r.outcome == "denied"]
    assert [(r.actor, r.detail["click"]) for r in denied] == [
        (OPERATOR, "approve"),
        (VIEWER, "approve"),
        (OPERATOR, "reject"),
        (VIEWER, "reject"),
    ]
    assert db.scalar("SELECT count(*) FROM mcp_servers WHERE slug = :s", s=BIG) == 1


def test_two_of_three_approvals_delete_exactly_the_approved_rows(make_prod, db):
    prod = make_prod(REQUIRED_APPROVALS="2")
    expected = truth(db)
    nulled = truth(db, queries=SET_NULL_TRUTH)
    before = fingerprints(db)
    request_id = request_prod(prod)
    approved_snapshot = requests_rows(prod)[0].snapshot

    press(prod, request_id, "Approve", APPROVER)
    one = message_text(wait_update(prod, request_id, "waiting for approval"))
    assert "1 of 2" in one and f"approved so far by <@{APPROVER}>" in one
    again = refusal_text(prod, request_id, "Approve", APPROVER)
    assert "already voted" in again and "1 of 2 approvals so far" in again
    assert wait_state(prod, request_id, {"pending"}).state == "pending"

    press(prod, request_id, "Approve", APPROVER2)
    row = wait_state(prod, request_id, {"done", "failed", "stale"})
    assert row.state == "done", row.error
    done = message_text(wait_update(prod, request_id, ": done"))
    assert f"deleted *{sum(len(v) for v in expected.values()):,} rows*" in done
    assert f"Approved by <@{APPROVER}>, <@{APPROVER2}>" in done
    # Exactly the approved rows: every count as approved, every other row byte-identical.
    steps = {s["table"]: s["rows"] for s in row.result["steps"] if s["action"] == "delete"}
    assert sum(steps.values()) == sum(v for k, v in approved_snapshot.items() if " set " not in k)
    assert_only_scope_changed(before, fingerprints(db), expected, nulled)
    with prod.runtime.bot_engine.connect() as conn:
        votes = conn.execute(text("SELECT voter, vote FROM delete_request_votes ORDER BY at")).all()
    assert [tuple(v) for v in votes] == [(APPROVER, "approve"), (APPROVER2, "approve")]
    prod.wait_audit(1)
    outcomes = audit_outcomes(prod)
    assert [o for o in outcomes if o in ("requested", "voted", "approved", "running", "done")] == [
        "requested",
        "voted",
        "approved",
        "running",
        "done",
    ]


def test_a_vote_whose_audit_row_cannot_be_written_changes_nothing(prod, db):
    request_id = request_prod(prod)
    with prod.runtime.bot_engine.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION refuse_approvals() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " IF NEW.outcome = 'approved' THEN RAISE EXCEPTION 'audit disk full'; END IF; RETURN NEW; END $$;"
                " CREATE TRIGGER refuse_approvals BEFORE INSERT ON audit_log"
                " FOR EACH ROW EXECUTE FUNCTION refuse_approvals()"
            )
        )
    before = checksums(db)
    reply = refusal_text(prod, request_id, "Approve", APPROVER)
    assert "could not record that, so nothing changed" in reply
    row = wait_state(prod, request_id, {"pending"})
    assert row.state == "pending" and row.decided_by is None
    with prod.runtime.bot_engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM delete_request_votes")).scalar() == 0  # the vote rolled back
        conn.execute(text("DROP TRIGGER refuse_approvals ON audit_log"))
    assert checksums(db) == before
    press(prod, request_id, "Approve", APPROVER)  # once the audit works, the same click goes through
    assert wait_state(prod, request_id, {"done", "failed"}).state == "done"


def test_a_user_group_in_approvers_is_resolved_and_cached_briefly(prod, db, fake_slack):
    flow = prod.runtime.deletion
    now = [1000.0]
    flow.approvers.clock = lambda: now[0]
    request_id = request_prod(prod)
    fake_slack.usergroups[GROUP] = []  # not (yet) a member
    assert "not in APPROVERS" in refusal_text(prod, request_id, "Approve", GROUP_MEMBER)
    fake_slack.usergroups[GROUP] = [GROUP_MEMBER]
    assert "not in APPROVERS" in refusal_text(prod, request_id, "Approve", GROUP_MEMBER)  # cached for a minute
    lookups = len(fake_slack.calls_to("usergroups.users.list"))
    now[0] += 61
    press(prod, request_id, "Approve", GROUP_MEMBER)
    assert wait_state(prod, request_id, {"done", "failed"}).state == "done"
    assert len(fake_slack.calls_to("usergroups.users.list")) == lookups + 1


def test_rejection_asks_for_a_reason_and_ends_the_request(prod, db):
    before = checksums(db)
    request_id = request_prod(prod)
    original = request_message(prod, request_id)
    press(prod, request_id, "Reject", APPROVER)
    opened = prod.slack.wait_for_call("views.open")[0].payload
    view = opened["view"]
    assert view["callback_id"] == "delete_reject_modal" and opened["trigger_id"].startswith("trigger.")
    empty = prod.sender.view_submission(
        view, {"reason": {"reason": {"type": "plain_text_input", "value": " "}}}, user=APPROVER
    )
    assert empty.json() == {"response_action": "errors", "errors": {"reason": "Say why you reject it."}}
    assert wait_state(prod, request_id, {"pending"}).state == "pending"
    reply = prod.sender.view_submission(
        view,
        {"reason": {"reason": {"type": "plain_text_input", "value": "wrong server, jane@example.com says"}}},
        user=APPROVER,
    )
    assert reply.status == 200
    row = wait_state(prod, request_id, {"rejected"})
    assert row.decided_by == APPROVER and row.decision_reason.startswith("wrong server")
    rejected = message_text(wait_update(prod, request_id, ": rejected"))
    assert f"Rejected by <@{APPROVER}>: wrong server, j***@example.com says" in rejected
    assert not buttons(request_message(prod, request_id))
    assert "already rejected" in refusal_text(prod, request_id, "Approve", APPROVER2, original)
    assert "rejected" in audit_outcomes(prod)
    assert checksums(db) == before


def test_only_the_requester_can_cancel(prod, db):
    request_id = request_prod(prod)
    original = request_message(prod, request_id)
    assert f"only <@{OPERATOR}>, who asked for it, can cancel it" in refusal_text(prod, request_id, "Cancel", APPROVER)
    press(prod, request_id, "Cancel", OPERATOR)
    assert wait_state(prod, request_id, {"cancelled"}).state == "cancelled"
    assert "Cancelled by" in message_text(wait_update(prod, request_id, ": cancelled"))
    assert "already cancelled" in refusal_text(prod, request_id, "Approve", APPROVER, original)
    assert db.scalar("SELECT count(*) FROM mcp_servers WHERE slug = :s", s=BIG) == 1
    assert "cancelled" in audit_outcomes(prod)


def test_reminder_then_expiry_with_controllable_time(prod, db):
    flow = prod.runtime.deletion
    request_id = request_prod(prod)
    original = request_message(prod, request_id)
    row = requests_rows(prod)[0]
    assert flow.remind_due(now=row.expires_at - timedelta(minutes=10)) == 0
    assert flow.remind_due(now=row.expires_at - timedelta(minutes=4)) == 1
    assert flow.remind_due(now=row.expires_at - timedelta(minutes=3)) == 0  # once
    reminder = prod.slack.wait_for_call(
        "chat.postMessage", lambda c: c.payload.get("thread_ts") == row.message_ts, timeout=10
    )[0].payload
    assert "expires in about 4 min" in reminder["text"] and "1 more approval" in reminder["text"]
    assert flow.expire_due(now=row.expires_at - timedelta(seconds=1)) == 0
    flow.clock = lambda: row.expires_at + timedelta(seconds=1)
    # A click after the deadline is refused even before the expiry job has run ...
    assert "already expired" in refusal_text(prod, request_id, "Approve", APPROVER, original)
    # ... and closes the request; the job then finds nothing left to do.
    assert wait_state(prod, request_id, {"expired"}).state == "expired"
    assert flow.expire_due() == 0
    assert "Expired" in message_text(wait_update(prod, request_id, ": expired"))
    assert "expired" in audit_outcomes(prod)
    assert db.scalar("SELECT count(*) FROM mcp_servers WHERE slug = :s", s=BIG) == 1


def test_the_expiry_job_closes_overdue_requests(prod):
    flow = prod.runtime.deletion
    request_id = request_prod(prod)
    row = requests_rows(prod)[0]
    assert flow.expire_due(now=row.expires_at + timedelta(minutes=1)) == 1
    assert wait_state(prod, request_id, {"expired"}).decided_by is None
    wait_update(prod, request_id, ": expired")


def test_drift_beyond_the_threshold_blocks_execution_and_asks_again(prod, db):
    request_id = request_prod(prod)
    approved = requests_rows(prod)[0].snapshot["public.mcp_tool_calls"]
    grow = approved // 50 + 1  # about 2%: more than APPROVAL_DRIFT_PERCENT (1)
    db.execute(
        "INSERT INTO mcp_tool_calls (id, mcp_server_id, tool_name, mcp_server_session_id)"
        " SELECT 'tc_new_' || g, 'srv_big', 'late', 'ses_big_0' FROM generate_series(1, :n) g",
        n=grow,
    )
    before = checksums(db)
    press(prod, request_id, "Approve", APPROVER)
    row = wait_state(prod, request_id, {"done", "failed", "stale"})
    assert row.state == "stale"
    stale = message_text(wait_update(prod, request_id, ": stale"))
    assert f"public.mcp_tool_calls: {approved:,} → {approved + grow:,}" in stale
    successor = wait_state(prod, row.replaced_by, {"pending"})
    assert successor.replaces == request_id and successor.snapshot["public.mcp_tool_calls"] == approved + grow
    assert f"request #{successor.id} for a fresh approval" in stale
    assert "Needs *1* approval from approvers" in message_text(request_message(prod, successor.id))
    assert checksums(db) == before  # nothing ran
    assert audit_outcomes(prod).count("stale") == 1


def test_a_table_created_after_the_approval_request_makes_it_stale(prod, db):
    request_id = request_prod(prod)
    db.execute(
        "CREATE TABLE server_badges (id text PRIMARY KEY,"
        " server_id text NOT NULL REFERENCES mcp_servers(id) ON DELETE CASCADE)"
    )
    before = checksums(db)
    press(prod, request_id, "Approve", APPROVER)
    row = wait_state(prod, request_id, {"done", "failed", "stale"})
    assert row.state == "stale"
    assert "public.server_badges: new in the plan (0 rows)" in message_text(wait_update(prod, request_id, ": stale"))
    successor = wait_state(prod, row.replaced_by, {"pending"})
    assert successor.snapshot["public.server_badges"] == 0
    assert checksums(db) == before


def test_drift_within_the_threshold_still_runs(prod, db):
    request_id = request_prod(prod)
    db.execute(
        "INSERT INTO mcp_tool_calls (id, mcp_server_id, tool_name, mcp_server_session_id)"
        " VALUES ('tc_one_more', 'srv_big', 'late', 'ses_big_0')"
    )
    press(prod, request_id, "Approve", APPROVER)
    assert wait_state(prod, request_id, {"done", "failed", "stale"}).state == "done"
    assert db.scalar("SELECT count(*) FROM mcp_tool_calls WHERE id = 'tc_one_more'") == 0


@pytest.mark.parametrize("required", [1, 3])
def test_twenty_concurrent_approvals_on_two_instances_run_once(make_bot, db, required):
    """Twenty approvers click at once, each twice (a double click), on two app instances sharing one bot database."""
    approvers = [f"UAPPR{i:02d}" for i in range(20)]
    env = {"OPERATORS": OPERATOR, "APPROVERS": ",".join(approvers), "REQUIRED_APPROVALS": str(required)}
    first = make_bot({"production": db.url}, **env)
    second = make_bot({"production": db.url}, **env)
    request_id = start_delete(first, stage="production", extra=REASON)
    payload = request_message(first, request_id)
    row = requests_rows(first)[0]
    barrier = threading.Barrier(40)
    statuses: list[int] = []

    def click(index: int) -> None:
        harness = first if index % 2 else second
        barrier.wait()
        reply = harness.sender.block_actions(
            buttons(payload)["Approve"],
            user=approvers[index // 2],
            channel=row.channel,
            message=payload,
            message_ts=row.message_ts,
        )
        statuses.append(reply.status)

    threads = [threading.Thread(target=click, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 40
    assert wait_state(first, request_id, {"done", "failed", "stale"}).state == "done"
    wait_update(first, request_id, ": done")
    time.sleep(1.5)  # give a duplicate every chance to show up
    assert sum(1 for p in updates_of(first, request_id) if ": done" in p.get("text", "")) == 1
    outcomes = audit_outcomes(first)
    assert outcomes.count("approved") == 1 and outcomes.count("running") == 1 and outcomes.count("done") == 1
    assert outcomes.count("voted") == required - 1
    with first.runtime.bot_engine.connect() as conn:
        voters = conn.execute(text("SELECT voter FROM delete_request_votes")).scalars().all()
    assert len(voters) == len(set(voters)) == required  # the quorum, each person once
    assert db.scalar("SELECT count(*) FROM mcp_servers WHERE slug = :s", s=BIG) == 0


def test_restart_keeps_pending_requests_and_fails_interrupted_ones(make_prod, db):
    first = make_prod()
    request_id = request_prod(first)
    original = request_message(first, request_id)
    first.close()

    second = make_prod()  # a restart: same bot database, new process state
    press(second, request_id, "Approve", APPROVER, original)
    assert wait_state(second, request_id, {"done", "failed"}).state == "done"

    # A delete interrupted by a crash: the row says running, nobody holds its runner lock.
    other = db.scalar("SELECT slug FROM mcp_servers WHERE id = 'srv_s3'")
    interrupted = start_delete(second, slug=other, stage="production", extra=REASON)
    left_running(second, interrupted)
    before = checksums(db)
    third = make_prod()
    row = wait_state(third, interrupted, {"failed"})
    assert "the bot stopped while the delete ran" in row.error
    failed = message_text(wait_update(third, interrupted, ": failed"))
    assert "Failed and rolled back, nothing was deleted" in failed
    assert checksums(db) == before
    assert "failed" in audit_outcomes(third)


def test_pending_lists_open_requests_with_links(prod, db):
    first = request_prod(prod)
    second = start_delete(prod, slug=db.scalar("SELECT slug FROM mcp_servers WHERE id = 'srv_s3'"))
    body = prod.command("pending").text()
    rows = {r.id: r for r in requests_rows(prod)}
    for request_id in (first, second):
        link = f"https://slack.com/archives/{rows[request_id].channel}/p{rows[request_id].message_ts.replace('.', '')}"
        assert f"<{link}|#{request_id} " in body
    only_prod = prod.command("pending --stage production").text()
    assert f"#{first} " in only_prod and f"#{second} " not in only_prod
    assert "0 of 1 approvals" in only_prod
    assert "only" in prod.command("pending", user=VIEWER).text()
    by_group = prod.command("pending --stage production", user=GROUP_MEMBER).text()  # an approver via a user group
    assert f"#{first} " in by_group
    press(prod, second, "Cancel", OPERATOR)
    wait_state(prod, second, {"cancelled"})
    assert f"#{second} " not in prod.command("pending").text()
    assert rows[first].channel == CHANNEL


def test_approval_settings_are_validated_without_echoing_values():
    from bot.config import ConfigError, load_settings

    env = {"BOT_DATABASE_URL": "postgresql://u:secretpw@h/db", "DATABASE_URL_DEV": "postgresql://u:secretpw@h/dev"}
    settings = load_settings(env, require_slack=False)
    assert (settings.required_approvals, settings.approval_ttl_minutes, settings.approval_drift_percent) == (1, 30, 1.0)
    tuned = load_settings(
        {**env, "REQUIRED_APPROVALS": "3", "APPROVAL_TTL_MINUTES": "5", "APPROVAL_DRIFT_PERCENT": "2.5"},
        require_slack=False,
    )
    assert (tuned.required_approvals, tuned.approval_ttl_minutes, tuned.approval_drift_percent) == (3, 5, 2.5)
    for name, value, message in (
        ("REQUIRED_APPROVALS", "99", "REQUIRED_APPROVALS is out of range"),
        ("APPROVAL_TTL_MINUTES", "soon", "APPROVAL_TTL_MINUTES is malformed"),
        ("APPROVAL_DRIFT_PERCENT", "lots", "APPROVAL_DRIFT_PERCENT is malformed"),
        ("APPROVAL_DRIFT_PERCENT", "101", "APPROVAL_DRIFT_PERCENT is out of range"),
    ):
        with pytest.raises(ConfigError) as caught:
            load_settings({**env, name: value}, require_slack=False)
        assert str(caught.value).startswith(message) and value not in str(caught.value)
