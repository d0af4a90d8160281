"""Cancel query / Terminate session, continued: the missing grant named as a GRANT must type it, two
operators' clicks through two replicas at once, the idle-in-transaction alert's one button, and a
replication backend refused. Real PostgreSQL, signed HTTP, the fake Slack Web API.
"""

from __future__ import annotations

import threading

import psycopg

from bot.sessions.targets import ACTIVE, session_actions
from handlers.render_operations import operation_button
from tests.conftest import CHANNEL, OPERATOR, message_text
from tests.deletion_support import ephemeral_on, requests_rows, wait_state
from tests.test_operations_sessions import (
    ENV,
    LOCKED_ROW,
    Sessions,
    alert_message,
    app_db,
    app_url,
    bot,
    buttons,
    latest_request,
    press_alert,
    press_value,
)

__all__ = ["app_db", "bot"]  # the fixtures, shared with tests/test_operations_sessions.py


def test_the_missing_grant_is_named_as_it_must_be_typed(make_bot, app_db):
    role = "OpsReader"  # capitals: a GRANT must quote it
    app_db.execute(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN "
        f'CREATE ROLE "{role}" LOGIN; END IF; END $$'
    )
    app_db.execute(f'GRANT pg_read_all_stats TO "{role}"')
    bot = make_bot({"reader": app_db.url.replace("postgres@", f"{role}@", 1)}, **ENV)
    sessions = Sessions(app_db)
    sessions.start("report", "SELECT pg_sleep(120)", "report-job")
    try:
        sessions.wait("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'report-job'")
        row = sessions.pid("report-job")
        answer = press_value(bot, "reader", dict(session_actions(row, ACTIVE)[0]))
        assert f"the stage's role `{role}` may not signal pid {row.pid}" in answer, answer
        assert f'GRANT pg_signal_backend TO "{role}";' in answer
        assert sessions.pid("report-job").state == "active"
    finally:
        app_db.execute(f'REVOKE pg_read_all_stats FROM "{role}"')
        app_db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'report-job'")
        sessions.join()


def test_two_clicks_on_two_replicas_at_once_ask_once_and_signal_once(make_bot, app_db):
    other = "UOPERATOR2"
    replicas = [make_bot({"dev": app_db.url}, OPERATORS=f"{OPERATOR},{other}", **ENV) for _ in range(2)]
    sessions = Sessions(app_db)
    sessions.start("report", "SELECT pg_sleep(120)", "report-job")
    try:
        sessions.wait(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'report-job' AND state = 'active'"
        )
        cancel = dict(session_actions(sessions.pid("report-job"), ACTIVE)[0])
        element = operation_button("dev", cancel, 0)
        urls = [replica.sender.new_response_url() for replica in replicas]
        barrier = threading.Barrier(2)

        def click(i: int) -> None:
            barrier.wait()
            replicas[i].sender.block_actions(element, user=(OPERATOR, other)[i], channel=CHANNEL, response_url=urls[i])

        clickers = [threading.Thread(target=click, args=(i,)) for i in range(2)]
        for thread in clickers:
            thread.start()
        for thread in clickers:
            thread.join(30)
        request = wait_state(replicas[0], latest_request(replicas[0], "cancel").id, {"done", "failed", "stale"})
        assert request.state == "done", request.error
        sessions.join()
        assert sessions.errors.get("report") == "QueryCanceled"
        # The other click is answered: the same request, or (once it ran) a query that is no longer there.
        loser = 1 - (OPERATOR, other).index(request.requester)
        answer = message_text(ephemeral_on(replicas[loser], urls[loser]))
        assert f"already request #{request.id}" in answer or "already gone or changed, nothing sent" in answer
        assert [r.kind for r in requests_rows(replicas[0])] == ["cancel"]
        outcomes = [r.outcome for r in replicas[0].audit_rows() if r.command == "cancel"]
        assert outcomes.count("running") == 1 and outcomes.count("done") == 1
    finally:
        app_db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'report-job'")
        sessions.join()


def test_an_idle_in_transaction_alert_carries_terminate_only_and_it_ends_the_session(bot, app_db):
    """Cancel cannot help a session idle in a transaction (there is no query to cancel): only Terminate."""
    idle = psycopg.connect(app_url(app_db), application_name="billing-worker")
    idle.execute(LOCKED_ROW)  # a transaction left open, holding its row lock
    try:
        sessions = Sessions(app_db)
        pid = sessions.wait(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'billing-worker'"
            " AND state = 'idle in transaction' AND state_change < now() - interval '1.2 seconds'"
        )
        bot.runtime.health.run_group("dev", "activity")
        ts, payload = alert_message(bot, "idle in transaction for", "billing-worker", timeout=60)
        assert "Terminate session" in buttons(payload) and "Cancel query" not in buttons(payload)
        press_alert(bot, ts, payload, "Terminate session", OPERATOR)
        request = wait_state(bot, latest_request(bot, "terminate").id, {"done", "failed", "stale"}, timeout=60)
        assert request.state == "done", request.error
        assert request.server_key["pid"] == pid and request.server_key["expect"] == "idle in transaction"
        assert request.result["ended"] and request.result["state_after"] == "gone"
        assert app_db.scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'billing-worker'") == 0
    finally:
        idle.close()


def test_a_replication_backend_is_refused_with_its_reason(make_bot, app_db):
    """A walsender running SQL (a logical replication connection) looks active, but it is not a client session."""
    role = "wal_reader"
    app_db.execute(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN "
        f"CREATE ROLE {role} LOGIN REPLICATION; END IF; END $$"
    )
    bot = make_bot({"dev": app_db.url}, **ENV)
    errors: list[str] = []

    def stream() -> None:
        url = app_db.url.replace("postgres@", f"{role}@", 1)
        try:
            with psycopg.connect(url, autocommit=True, replication="database", application_name="wal-reader") as c:
                c.execute("SELECT pg_sleep(120)")
        except psycopg.Error as exc:
            errors.append(type(exc).__name__)

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    sessions = Sessions(app_db)
    try:
        sessions.wait(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'wal-reader'"
            " AND backend_type = 'walsender' AND state = 'active'"
        )
        row = sessions.pid("wal-reader")
        for action in session_actions(row, ACTIVE):
            answer = press_value(bot, "dev", dict(action))
            assert f"pid {row.pid} is a replication backend, not a client session" in answer, answer
        assert sessions.pid("wal-reader").state == "active" and errors == []  # nothing was sent
        assert requests_rows(bot) == []
    finally:
        app_db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'wal-reader'")
        thread.join(30)
