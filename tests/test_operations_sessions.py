"""Cancel query / Terminate session where the alert is (issue 15): a real blocking chain on real PostgreSQL,
the alert it raises, the buttons pressed over the signed HTTP endpoint, the fake Slack Web API.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from bot.sessions.targets import ACTIVE, session_actions
from handlers.render_operations import operation_button
from tests.conftest import ALERT_CHANNEL, APPROVER, CHANNEL, OPERATOR, BotHarness, StageDb, message_text
from tests.deletion_support import ephemeral_on, request_message, requests_rows, wait_state, wait_update

APP_ROLE = "app_worker"  # the platform's own sessions: not superusers, so the bot may signal them
LOCKED_ROW = "UPDATE organization SET name = name WHERE id = 'org_1'"
# One statement that takes the row lock and keeps running: cancelling it rolls it back and frees the row.
HOLD_WHILE_RUNNING = f"WITH held AS ({LOCKED_ROW} RETURNING 1) SELECT pg_sleep(120) FROM held"
ENV = {
    "BLOCKED_QUERY_SECONDS": "1",
    "LONG_QUERY_SECONDS": "1",
    "IDLE_IN_TRANSACTION_SECONDS": "1",
    "ALERT_CLEAR_AFTER_RUNS": "1",
}


def app_url(db: StageDb) -> str:
    return db.url.replace("postgres@", f"{APP_ROLE}@", 1)


@pytest.fixture
def app_db(stage_db: StageDb) -> StageDb:
    stage_db.execute(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN "
        f"CREATE ROLE {APP_ROLE} LOGIN; END IF; END $$"
    )
    stage_db.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {APP_ROLE}")
    return stage_db


@pytest.fixture
def bot(make_bot, app_db: StageDb) -> BotHarness:
    return make_bot({"dev": app_db.url, "production": app_db.url}, **ENV)


class Sessions:
    """Client sessions of the platform, each in a thread; the errors they end with are kept."""

    def __init__(self, db: StageDb) -> None:
        self.db = db
        self.threads: list[threading.Thread] = []
        self.errors: dict[str, str] = {}

    def start(self, name: str, sql: str, app: str) -> None:
        def run() -> None:
            try:
                with psycopg.connect(app_url(self.db), autocommit=True, application_name=app) as conn:
                    conn.execute(sql)
            except psycopg.Error as exc:
                self.errors[name] = type(exc).__name__

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def pid(self, app: str) -> Any:
        rows = self.db.rows("SELECT * FROM pg_stat_activity WHERE application_name = :a", a=app)
        return rows[0] if rows else None

    def wait(self, sql: str, timeout: float = 20) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.db.scalar(sql)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"never true: {sql}")

    def join(self, timeout: float = 30) -> None:
        for thread in self.threads:
            thread.join(timeout)


@contextmanager
def blocking_chain(db: StageDb, waiters: int = 2) -> Iterator[Sessions]:
    """One session holding a row lock while it runs, others waiting on it for over a second."""
    sessions = Sessions(db)
    sessions.start("holder", HOLD_WHILE_RUNNING, "billing-worker")
    # Holding the row (asleep inside the statement that locked it), not merely connected: a waiter started
    # before would take the row first and never wait.
    sessions.wait(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'billing-worker' AND wait_event = 'PgSleep'"
    )
    for i in range(waiters):
        sessions.start(f"waiter{i}", LOCKED_ROW, "api-server")
    sessions.wait(
        "SELECT count(*) >= 2 FROM pg_stat_activity WHERE application_name = 'api-server' AND wait_event_type = 'Lock'"
        " AND query_start < now() - interval '1.2 seconds'"
    )
    try:
        yield sessions
    finally:
        db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name IN"
            " ('billing-worker', 'api-server', 'report-job')"
        )
        sessions.join()


def blocked_alerts(bot: BotHarness, stage: str) -> list[Any]:
    with bot.runtime.bot_engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT * FROM alerts WHERE stage = :s AND check_name = 'blocked' ORDER BY id"), {"s": stage}
            )
        )


def alert_message(bot: BotHarness, *needles: str, timeout: float = 20) -> tuple[str, dict[str, Any]]:
    """(ts, payload) of the alert message in the alert channel whose text has every one of `needles`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        bot.runtime.outbox.drain()
        for (channel, ts), stored in list(bot.slack.messages.items()):
            if channel == ALERT_CHANNEL and all(n in message_text(stored.payload) for n in needles):
                return ts, stored.payload
        time.sleep(0.05)
    raise AssertionError(f"no alert message with {needles!r}")


def buttons(payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The buttons of a message by label (menus, such as Snooze, have no label and are left out)."""
    return {
        element["text"]["text"]: element
        for block in payload.get("blocks", [])
        if block.get("type") == "actions"
        for element in block["elements"]
        if element.get("type") == "button"
    }


def press_alert(bot: BotHarness, ts: str, payload: dict[str, Any], label: str, user: str) -> str:
    response_url = bot.sender.new_response_url()
    reply = bot.sender.block_actions(
        buttons(payload)[label],
        user=user,
        channel=ALERT_CHANNEL,
        message=payload,
        message_ts=ts,
        response_url=response_url,
    )
    assert reply.status == 200
    return response_url


def latest_request(bot: BotHarness, kind: str, count: int = 1, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = [r for r in requests_rows(bot) if r.kind == kind]
        if len(rows) >= count:
            return rows[-1]
        time.sleep(0.05)
    raise AssertionError(f"no {kind} request")


def test_a_blocking_chain_alerts_and_cancel_on_an_unprotected_stage_ends_it(bot, app_db):
    with blocking_chain(app_db) as chain:
        holder = chain.pid("billing-worker")
        bot.runtime.health.run_group("dev", "activity")
        ts, payload = alert_message(bot, f"by pid {holder.pid}")
        assert {"Cancel query", "Terminate session"} <= set(buttons(payload))
        assert [a.state for a in blocked_alerts(bot, "dev")] == ["firing", "firing"]
        # `/mcp sessions --blocked` lists the two waiters, who blocks them, and the same buttons.
        listed = bot.command("sessions --stage dev --blocked").message(timeout=30)
        shown = message_text(listed)
        assert shown.count("waiting on a lock for") == 2 and "billing-worker" in shown and "report-job" not in shown
        assert {"Cancel query", "Terminate session"} <= set(buttons(listed))

        press_alert(bot, ts, payload, "Cancel query", OPERATOR)
        request = wait_state(bot, latest_request(bot, "cancel").id, {"done", "failed", "stale"})
        assert request.state == "done", request.error
        assert request.server_key["pid"] == holder.pid and request.server_key["expect"] == "blocking"
        assert request.result["ended"] is True
        assert request.result["blocked_before"] >= 2 and request.result["blocked_after"] == 0
        chain.join()
        assert chain.errors.get("holder") == "QueryCanceled"  # its statement was cancelled, its lock released
        assert "waiter0" not in chain.errors and "waiter1" not in chain.errors  # they went through

    # The report is in the alert's thread; the alert resolves through its normal lifecycle.
    report = wait_update(bot, request.id, ": done")
    assert f"pid {holder.pid} query cancelled" in message_text(report)
    assert "*2* before, *0* after" in message_text(report)
    thread = [c for c in bot.slack.calls_to("chat.postMessage") if c.payload.get("thread_ts") == ts]
    assert thread, "the request was posted in the alert's thread"
    bot.runtime.health.run_group("dev", "activity")
    assert [a.state for a in blocked_alerts(bot, "dev")] == ["resolved", "resolved"]
    outcomes = [r.outcome for r in bot.audit_rows() if r.command == "cancel"]
    assert outcomes == ["requested", "confirmed", "running", "done"]


def test_on_a_protected_stage_cancel_needs_another_approver_and_a_double_click_signals_once(bot, app_db):
    with blocking_chain(app_db) as chain:
        holder = chain.pid("billing-worker")
        bot.runtime.health.run_group("production", "activity")
        ts, payload = alert_message(bot, f"by pid {holder.pid}")
        press_alert(bot, ts, payload, "Cancel query", OPERATOR)
        request = wait_state(bot, latest_request(bot, "cancel").id, {"pending"})
        assert request.protected and request.required_approvals == 1
        # A second click on the alert asks nothing new.
        again = ephemeral_on(bot, press_alert(bot, ts, payload, "Cancel query", OPERATOR))
        assert f"already request #{request.id}" in message_text(again)
        assert chain.pid("billing-worker").state == "active"  # nothing was sent yet

        message = request_message(bot, request.id)
        refused = ephemeral_on(bot, press_on_request(bot, request.id, "Approve", OPERATOR, message))
        assert "you asked for this cancel, so someone else has to approve it" in message_text(refused)
        press_on_request(bot, request.id, "Approve", APPROVER, message)
        press_on_request(bot, request.id, "Approve", APPROVER, message)  # a double click
        done = wait_state(bot, request.id, {"done", "failed", "stale"})
        assert done.state == "done", done.error
        chain.join()
        assert chain.errors.get("holder") == "QueryCanceled"
    assert [r.kind for r in requests_rows(bot)] == ["cancel"]
    with bot.runtime.bot_engine.connect() as conn:
        votes = conn.execute(text("SELECT voter, vote FROM delete_request_votes")).all()
    assert [tuple(v) for v in votes] == [(APPROVER, "approve")]
    outcomes = [r.outcome for r in bot.audit_rows() if r.command == "cancel"]
    assert outcomes.count("running") == 1 and outcomes.count("done") == 1


def press_on_request(bot: BotHarness, request_id: int, label: str, user: str, payload: dict[str, Any]) -> str:
    from tests.deletion_support import press

    return press(bot, request_id, label, user, payload)


def press_value(
    bot: BotHarness, stage: str, action: dict[str, Any], user: str = OPERATOR, *, refused: bool = True
) -> str:
    """Press an operation button as a listing shows it (the target's identity is in its value); the refusal."""
    element = operation_button(stage, action, 0)
    assert element is not None
    response_url = bot.sender.new_response_url()
    bot.sender.block_actions(element, user=user, channel=CHANNEL, response_url=response_url)
    return message_text(ephemeral_on(bot, response_url)) if refused else ""


def test_a_pid_whose_session_ended_and_was_replaced_is_not_signalled(bot, app_db):
    sessions = Sessions(app_db)
    sessions.start("report", "SELECT pg_sleep(120)", "report-job")
    try:
        now = sessions.wait(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'report-job' AND state = 'active'"
        )
        row = sessions.pid("report-job")
        # What the button was made for: an earlier session that had this pid (another backend_start).
        old = dict(session_actions(row, ACTIVE)[0])
        old["target"] = {**old["target"], "backend_start": "2020-01-01T00:00:00+00:00"}
        answer = press_value(bot, "dev", old)
        assert f"pid {now} (its query) is already gone or changed, nothing sent" in answer
        assert sessions.pid("report-job").state == "active"  # the new session was not touched
        assert requests_rows(bot) == []

        # Asked for on a protected stage, then the session moved on to another query before the approval.
        current = dict(session_actions(row, ACTIVE)[0])
        url = bot.sender.new_response_url()
        bot.sender.block_actions(
            operation_button("production", current, 0), user=OPERATOR, channel=CHANNEL, response_url=url
        )
        request = wait_state(bot, latest_request(bot, "cancel").id, {"pending"})
        app_db.execute("SELECT pg_cancel_backend(:p)", p=now)  # its query ends; a new one would have a new start
        sessions.join()
        press_on_request(bot, request.id, "Approve", APPROVER, request_message(bot, request.id))
        stale = wait_state(bot, request.id, {"done", "failed", "stale"})
        assert stale.state == "stale" and "already gone or changed, nothing sent" in stale.error
        assert "Stale, nothing was signalled" in message_text(wait_update(bot, request.id, ": stale"))
    finally:
        app_db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'report-job'")
        sessions.join()


def test_the_bot_refuses_its_own_superuser_sessions_and_names_a_missing_grant(make_bot, app_db):
    limited = "ops_limited"
    app_db.execute(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{limited}') THEN "
        f"CREATE ROLE {limited} LOGIN; END IF; END $$"
    )
    app_db.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {limited}")
    bot = make_bot({"dev": app_db.url, "limited": app_db.url.replace("postgres@", f"{limited}@", 1)}, **ENV)
    sessions = Sessions(app_db)
    sessions.start("report", "SELECT pg_sleep(120)", "report-job")
    try:
        sessions.wait("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'report-job'")
        row = sessions.pid("report-job")
        cancel = dict(session_actions(row, ACTIVE)[0])
        answer = press_value(bot, "limited", cancel)
        assert f"the stage's role `{limited}` can't see what pid {row.pid} is doing" in answer
        assert f"GRANT pg_read_all_stats TO {limited};" in answer
        app_db.execute(f"GRANT pg_read_all_stats TO {limited}")
        answer = press_value(bot, "limited", cancel)
        assert f"the stage's role `{limited}` may not signal pid {row.pid}" in answer
        assert f"GRANT pg_signal_backend TO {limited};" in answer
        app_db.execute(f"GRANT pg_signal_backend TO {limited}")
        try:
            press_value(bot, "limited", cancel, refused=False)
            request = wait_state(bot, latest_request(bot, "cancel").id, {"done", "failed", "stale"})
            assert request.state == "done", request.error
        finally:
            app_db.execute(f"REVOKE pg_signal_backend, pg_read_all_stats FROM {limited}")

        with psycopg.connect(app_db.url, autocommit=True, application_name="dba-console") as su:
            su.execute("BEGIN")
            su_row = app_db.rows("SELECT * FROM pg_stat_activity WHERE application_name = 'dba-console'")[0]
            answer = press_value(bot, "dev", dict(session_actions(su_row, "idle in transaction")[0]))
            assert "runs as a superuser" in answer
            su.execute("ROLLBACK")
        # The bot's own: its name and the stage's role (`limited` connects as ops_limited).
        limited_url = app_db.url.replace("postgres@", f"{limited}@", 1)
        with psycopg.connect(limited_url, autocommit=True, application_name="mcp-ops/limited/request-9") as ours:
            ours.execute("BEGIN")
            our_row = app_db.rows(
                "SELECT * FROM pg_stat_activity WHERE application_name = 'mcp-ops/limited/request-9'"
            )[0]
            answer = press_value(bot, "limited", dict(session_actions(our_row, "idle in transaction")[0]))
            assert "is one of the bot's own sessions; the bot never signals itself" in answer
            ours.execute("ROLLBACK")
        assert len(requests_rows(bot)) == 1  # only the one that was allowed
        # Another role calling itself mcp-ops is not the bot: it is not refused as one of its own sessions.
        spoof = psycopg.connect(app_url(app_db), autocommit=True, application_name="mcp-ops/dev/request-9")
        try:
            spoof.execute("BEGIN")
            row = app_db.rows("SELECT * FROM pg_stat_activity WHERE application_name = 'mcp-ops/dev/request-9'")[0]
            press_value(bot, "dev", dict(session_actions(row, "idle in transaction")[0]), refused=False)
            request = wait_state(bot, latest_request(bot, "terminate").id, {"done", "failed", "stale"})
            assert request.state == "done", request.error
        finally:
            spoof.close()  # terminated: closing it is all that is left
    finally:
        app_db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'report-job'")
        sessions.join()


def test_sessions_lists_what_the_checks_see_with_the_same_buttons(bot, app_db):
    sessions = Sessions(app_db)
    sessions.start("report", "SELECT pg_sleep(120)", "report-job")
    idle = psycopg.connect(app_url(app_db), application_name="billing-worker")
    idle.execute(LOCKED_ROW)  # a transaction left open, holding its row lock
    try:
        sessions.wait(
            "SELECT count(*) = 2 FROM pg_stat_activity WHERE application_name IN ('report-job', 'billing-worker')"
            " AND state_change < now() - interval '1.2 seconds'"
        )
        listing = bot.command("sessions --stage dev").message(timeout=20)
        body = message_text(listing)
        assert "*long* pid" in body and "report-job" in body and "*idle* pid" in body and "billing-worker" in body
        assert "mcp-ops" not in body
        idle_only = bot.command("sessions --stage dev --idle").message(timeout=20)
        assert set(buttons(idle_only)) == {"Terminate session"}  # cancel cannot help an idle transaction
        assert "report-job" not in message_text(idle_only)

        # The listing's buttons are the alert's: Terminate on the idle transaction ends it.
        url = bot.sender.new_response_url()
        bot.sender.block_actions(
            buttons(idle_only)["Terminate session"],
            user=OPERATOR,
            channel=CHANNEL,
            message=idle_only,
            response_url=url,
        )
        request = wait_state(bot, latest_request(bot, "terminate").id, {"done", "failed", "stale"})
        assert request.state == "done", request.error
        assert request.result["ended"] and request.result["state_after"] == "gone"
        assert app_db.scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'billing-worker'") == 0
        assert "session terminated" in message_text(wait_update(bot, request.id, ": done"))
        assert "pid" in message_text(bot.command("sessions --stage dev --long").message(timeout=20))
    finally:
        idle.close()
        app_db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'report-job'")
        sessions.join()
