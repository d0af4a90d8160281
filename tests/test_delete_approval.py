"""Two-person approval for deletes on protected stages, end to end over HTTP and the fake Slack API:
asking, voting, rejecting, cancelling."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from tests.approval_support import GROUP, GROUP_MEMBER, refusal_text, request_prod
from tests.approval_support import make_prod as make_prod  # the fixtures, shared by the approval files
from tests.approval_support import prod as prod
from tests.conftest import (
    APPROVER,
    APPROVER2,
    AUDIT_CHANNEL,
    OPERATOR,
    VIEWER,
    message_text,
)
from tests.deletion_support import (
    BIG,
    SET_NULL_TRUTH,
    assert_only_scope_changed,
    audit_outcomes,
    buttons,
    checksums,
    fingerprints,
    press,
    request_message,
    requests_rows,
    truth,
    wait_state,
    wait_update,
)


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
