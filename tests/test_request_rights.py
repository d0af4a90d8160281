"""Every transition re-checks rights at that moment (issue 12): a requester removed from OPERATORS, or an
approver removed from APPROVERS, before the request runs makes it end `revoked` with an audit line.

The configuration changes as it does in production: another bot process (same bot database, same stage)
starts with the new OPERATORS/APPROVERS, and the click reaches it over signed HTTP.
"""

from __future__ import annotations

import threading

from tests.conftest import APPROVER, APPROVER2, OPERATOR, VIEWER, BotHarness, eventually, message_text
from tests.deletion_support import (
    BIG,
    audit_outcomes,
    checksums,
    ephemeral_on,
    press,
    request_message,
    start_delete,
    wait_state,
    wait_update,
)

REASON = '--reason "customer left"'
OTHER = "UOPERATOR2"


def restarted(make_bot, db, **env: str) -> BotHarness:
    return make_bot({"dev": db.url, "production": db.url}, **env)


def assert_revoked(bot: BotHarness, request_id: int, why: str, db, before) -> None:
    row = wait_state(bot, request_id, {"revoked", "done", "failed", "stale"})
    assert row.state == "revoked", (row.state, row.error)
    assert why in row.error
    assert checksums(db) == before
    assert "revoked" in audit_outcomes(bot)
    body = message_text(wait_update(bot, request_id, ": revoked"))
    assert "Revoked, nothing was deleted" in body and why in body


def test_a_requester_removed_from_operators_before_approval_never_gets_the_delete(make_bot, db):
    first = restarted(make_bot, db, OPERATORS=OPERATOR)
    request_id = start_delete(first, stage="production", extra=REASON)
    before = checksums(db)
    second = restarted(make_bot, db, OPERATORS=OTHER)  # OPERATOR was removed
    payload = request_message(first, request_id)
    answer = ephemeral_on(second, press(second, request_id, "Approve", APPROVER, payload))
    assert "can't go on" in message_text(answer)
    why = f"the requester ({OPERATOR}) is no longer allowed to ask for a delete (not in OPERATORS)"
    assert_revoked(second, request_id, why, db, before)
    assert db.scalar("SELECT count(*) FROM mcp_servers WHERE slug = :s", s=BIG) == 1


def test_an_approver_removed_before_the_quorum_does_not_count(make_bot, db):
    first = restarted(make_bot, db, OPERATORS=OPERATOR, REQUIRED_APPROVALS="2")
    request_id = start_delete(first, stage="production", extra=REASON)
    press(first, request_id, "Approve", APPROVER)
    assert wait_state(first, request_id, {"pending"}).state == "pending"
    before = checksums(db)
    second = restarted(make_bot, db, OPERATORS=OPERATOR, APPROVERS=APPROVER2, REQUIRED_APPROVALS="2")
    press(second, request_id, "Approve", APPROVER2, request_message(first, request_id))
    why = f"an approval no longer counts: {APPROVER} is no longer in APPROVERS"
    assert_revoked(second, request_id, why, db, before)


def test_an_unprotected_confirmation_by_a_former_operator_closes_the_request(make_bot, db):
    first = restarted(make_bot, db, OPERATORS=OPERATOR)
    request_id = start_delete(first, stage="dev")
    before = checksums(db)
    second = restarted(make_bot, db, OPERATORS=OTHER)
    press(second, request_id, "Delete", OPERATOR, request_message(first, request_id))
    assert_revoked(second, request_id, "is no longer allowed to ask for a delete", db, before)
    audit = [r for r in second.audit_rows() if r.outcome == "revoked"]
    assert len(audit) == 1 and audit[0].actor == "system" and "OPERATORS" in audit[0].detail["reason"]


def test_a_strangers_click_moves_nothing_even_when_the_requester_lost_the_right(make_bot, db):
    first = restarted(make_bot, db, OPERATORS=OPERATOR)
    request_id = start_delete(first, stage="production", extra=REASON)
    second = restarted(make_bot, db, OPERATORS=OTHER)  # OPERATOR was removed
    payload = request_message(first, request_id)
    for user in (VIEWER, OTHER):  # neither is in APPROVERS
        answer = message_text(ephemeral_on(second, press(second, request_id, "Approve", user, payload)))
        assert "You can't approve this: you are not in APPROVERS" in answer, answer
    assert wait_state(second, request_id, {"pending"}).state == "pending"
    assert "revoked" not in audit_outcomes(second)
    assert audit_outcomes(second).count("denied") == 2
    # The approver's click is the one that finds the requester gone, and closes it.
    answer = message_text(ephemeral_on(second, press(second, request_id, "Approve", APPROVER, payload)))
    assert "can't go on" in answer
    assert wait_state(second, request_id, {"revoked"}).state == "revoked"


def test_an_approved_request_started_after_the_requester_lost_the_right_is_revoked(make_bot, db):
    """The approved -> running transition checks again: the run is started by another process (the
    recovery job of one started with the new OPERATORS) after the approving one could not start it."""
    first = restarted(make_bot, db, OPERATORS=OPERATOR, EXEC_WORKERS="1", EXEC_QUEUE="0")
    request_id = start_delete(first, stage="production", extra=REASON)
    release = threading.Event()
    assert eventually(lambda: first.runtime.lanes["exec"].held == 0)
    first.runtime.submit(release.wait, 120, lane="exec")  # approved runs find the exec lane full...
    try:
        before = checksums(db)
        press(first, request_id, "Approve", APPROVER)
        assert wait_state(first, request_id, {"approved"}).state == "approved"  # ...and wait for the recovery job
        second = restarted(make_bot, db, OPERATORS=OTHER)  # OPERATOR was removed; its recovery job starts it
        why = f"the requester ({OPERATOR}) is no longer allowed to ask for a delete (not in OPERATORS)"
        assert_revoked(second, request_id, why, db, before)
        assert db.scalar("SELECT count(*) FROM mcp_servers WHERE slug = :s", s=BIG) == 1
    finally:
        release.set()
