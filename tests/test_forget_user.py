"""`/mcp forget-user` through the real HTTP endpoint (signed requests) and the fake Slack Web API."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import text

from bot.erasure.identity import Person
from bot.erasure.plan import ErasureTarget
from bot.kinds.forget_user import forget_user_kind
from bot.logs import JsonFormatter
from tests.conftest import APPROVER, OPERATOR, VIEWER, BotHarness, StageDb, message_text
from tests.deletion_support import (
    add_extra_tables,
    buttons,
    checksums,
    ephemeral_on,
    press,
    request_message,
    requests_rows,
    wait_state,
    wait_update,
)
from tests.erasure_support import EMAIL, TYPED, add_person, hand_erase


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
    assert "Dry run on every stage" in body and "on 2 of 3 stages" in body
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
    assert_nowhere(app, log_lines, EMAIL)


def start_forget(bot: BotHarness, extra: str, stage: str = "dev") -> int:
    before = {r.id for r in requests_rows(bot)}
    reply = bot.command(f"forget-user '{TYPED}' --stage {stage} {extra}".strip())
    body = reply.text(timeout=60)
    assert "is posted in this channel as request" in body, body
    [new] = [r.id for r in requests_rows(bot) if r.id not in before]
    return new


def test_the_requester_confirms_and_the_receipt_holds_no_email(app, person_db, make_stage_db, log_lines):
    reference = make_stage_db()
    add_extra_tables(reference)
    add_person(reference)
    hand_erase(reference)
    request_id = start_forget(app, "")
    pending = message_text(request_message(app, request_id))
    assert "Forget sha256:" in pending and "`mcp_tool_calls`: 3 rows deleted" in pending
    assert "The servers themselves are untouched." in pending
    forget = buttons(request_message(app, request_id))["Forget"]
    assert forget["style"] == "danger" and "can't be undone" in forget["confirm"]["text"]["text"]
    refusal = ephemeral_on(app, press(app, request_id, "Forget", APPROVER))
    assert f"only <@{OPERATOR}>" in message_text(refusal)

    press(app, request_id, "Forget", OPERATOR)
    row = wait_state(app, request_id, {"done", "failed", "stale"})
    assert row.state == "done", row.error
    assert checksums(person_db) == checksums(reference)  # exactly the hand-written erase
    receipt = message_text(wait_update(app, request_id, ": done"))
    assert f"Erasure #{row.result['erasure']}" in receipt and "Checked after the commit" in receipt
    assert "No scoped backup taken before the erasure holds the person." in receipt
    with app.runtime.bot_engine.connect() as conn:
        ledger = conn.execute(text("SELECT * FROM erasures")).one()
    assert ledger.state == "done" and ledger.request_id == request_id and ledger.requested_by == OPERATOR
    assert len(ledger.identifier_sha256) == 64 and ledger.target["person"]["normalised"] == ledger.identifier_sha256
    assert ledger.counts["mcp_tool_calls (delete)"] == 3
    app.wait_audit(1)
    lines = [r for r in app.audit_rows() if r.command == "forget-user"]
    assert {r.outcome for r in lines} >= {"requested", "confirmed", "running", "done"}
    assert all("sha256:" in r.args or r.args.startswith("#") for r in lines)
    assert_nowhere(app, log_lines, EMAIL, "alice.two", "did_alice")
    # The ledger finds the erasure again by the identifier, any of her emails or her user id (purge later).
    ledger = app.runtime.erasures.ledger
    for identifier in (EMAIL.upper(), "msu_alice"):
        assert getattr(ledger.erased("dev", Person.of(identifier)), "id", None) == row.result["erasure"], identifier
    assert ledger.erased("dev", Person.of("bob@example.com")) is None
    assert ledger.erased("staging", Person.of(EMAIL)) is None


def test_a_protected_stage_needs_a_reason_and_another_approver(app, person_db, log_lines):
    body = app.command(f"forget-user {EMAIL} --stage production").text(timeout=60)
    assert '--reason "..."' in body
    request_id = start_forget(app, '--reason "GDPR request 77, alice.two@example.com"', stage="production")
    assert "can't approve" not in message_text(request_message(app, request_id))
    refusal = ephemeral_on(app, press(app, request_id, "Approve", OPERATOR))
    assert "someone else has to approve it" in message_text(refusal)
    press(app, request_id, "Approve", APPROVER)
    row = wait_state(app, request_id, {"done", "failed", "stale"})
    assert row.state == "done", row.error
    assert person_db.scalar("SELECT count(*) FROM mcp_server_user WHERE id = 'msu_alice'") == 0
    with app.runtime.bot_engine.connect() as conn:
        ledger = conn.execute(text("SELECT approved_by, reason FROM erasures")).one()
    assert ledger.approved_by == [APPROVER] and "a***@example.com" in ledger.reason
    assert_nowhere(app, log_lines, EMAIL)


def test_a_new_user_row_with_the_email_makes_the_request_stale(app, person_db):
    request_id = start_forget(app, "")
    person_db.execute("INSERT INTO mcp_server_user (id, email) VALUES ('msu_alice_2', 'ALICE.two@example.com')")
    before = checksums(person_db)
    press(app, request_id, "Forget", OPERATOR)
    row = wait_state(app, request_id, {"done", "failed", "stale"})
    assert row.state == "stale" and "changed since the plan" in (row.error or ""), (row.state, row.error)
    assert checksums(person_db) == before
    with app.runtime.bot_engine.connect() as conn:
        assert conn.execute(text("SELECT state FROM erasures")).scalars().all() == ["failed"]


def test_a_request_left_running_is_settled_from_the_stage(app, person_db):
    """What the recovery job asks the kind about a request a dead process left running."""
    request_id = start_forget(app, "")
    kind = forget_user_kind(app.runtime)
    request = app.runtime.requests.store.get(request_id)
    assert request is not None
    state, error = kind.recover(request)  # the person is still there: the transaction rolled back
    assert state == "failed" and "nothing was erased" in (error or "")
    stage = app.runtime.stages.get("dev")
    app.runtime.erasures.run(
        stage,
        ErasureTarget.from_json(request.target),
        expected=request.snapshot,
        requested_by=OPERATOR,
        request_id=request_id,
        budget_s=60,
    )
    assert kind.recover(request) == ("done", None)  # nothing matches any more: it committed


def test_forgetting_by_user_id_keeps_the_id_out_of_the_bot_database(app, person_db, log_lines):
    """The identifier is a user id here: the request, the ledger and the receipt keep its digest only."""
    before = {r.id for r in requests_rows(app)}
    body = app.command("forget-user msu_alice --stage dev").text(timeout=60)
    assert "is posted in this channel as request" in body, body
    [request_id] = [r.id for r in requests_rows(app) if r.id not in before]
    press(app, request_id, "Forget", OPERATOR)
    row = wait_state(app, request_id, {"done", "failed", "stale"})
    assert row.state == "done", row.error
    assert person_db.scalar("SELECT count(*) FROM mcp_server_user WHERE id = 'msu_alice'") == 0
    app.wait_audit(1)
    assert_nowhere(app, log_lines, "msu_alice", "did_alice", EMAIL)
