"""Cancel query / Terminate session, continued: the missing grant named as a GRANT must type it, and two
operators' clicks through two replicas at once. Real PostgreSQL, signed HTTP, the fake Slack Web API.
"""

from __future__ import annotations

import threading

from bot.requests.buttons import operation_button
from bot.sessions.targets import ACTIVE, session_actions
from tests.conftest import CHANNEL, OPERATOR, message_text
from tests.deletion_support import ephemeral_on, requests_rows, wait_state
from tests.test_operations_sessions import ENV, Sessions, app_db, latest_request, press_value

__all__ = ["app_db"]  # the fixture, shared with tests/test_operations_sessions.py


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
