"""Two-person approval for deletes on protected stages, over time: reminders and expiry, drift since the
approval, concurrent votes on two instances, a restart, the pending list, the settings."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import text

from tests.approval_support import GROUP_MEMBER, REASON, refusal_text, request_prod
from tests.approval_support import make_prod as make_prod  # the fixtures, shared by the approval files
from tests.approval_support import prod as prod
from tests.conftest import (
    APPROVER,
    CHANNEL,
    OPERATOR,
    VIEWER,
    message_text,
)
from tests.deletion_support import (
    BIG,
    audit_outcomes,
    buttons,
    checksums,
    left_running,
    press,
    request_message,
    requests_rows,
    start_delete,
    updates_of,
    wait_state,
    wait_update,
)


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
