"""Acting from the alert on a chain of three: A idle in a transaction holds a lock, B waits on A, C queues
behind B. C's alert names A as the head of the chain and its Terminate ends A, not B; the chain drains
and both blocked alerts resolve.
"""

from __future__ import annotations

import json

from tests.conftest import OPERATOR, message_text
from tests.deletion_support import wait_state
from tests.scenario_support import Sessions
from tests.test_operations_sessions import (  # noqa: F401 (fixtures)
    alert_message,
    app_db,
    app_url,
    blocked_alerts,
    bot,
    buttons,
    latest_request,
    press_alert,
)


def all_buttons(payload: dict) -> list[dict]:
    return [e for b in payload.get("blocks", []) if b.get("type") == "actions" for e in b["elements"]]


def test_terminate_from_the_tail_of_a_chain_of_three_ends_its_head_and_the_chain_drains(bot, app_db):  # noqa: F811
    held = Sessions(app_url(app_db))
    try:
        head, _ = held.idle_in_transaction("LOCK TABLE organization IN ROW EXCLUSIVE MODE", "billing-worker")
        middle = held.running("BEGIN; LOCK TABLE organization IN ACCESS EXCLUSIVE MODE; COMMIT", "migrator")
        held.wait_until(f"SELECT cardinality(pg_blocking_pids({middle})) = 1")
        tail = held.running("SELECT count(*) FROM organization", "api-server")
        held.wait_until(
            "SELECT count(*) = 2 FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query_start < now() - interval '1.2 s'"
        )
        bot.runtime.health.run_group("dev", "activity")
        ts, payload = alert_message(bot, f"pid {tail} (api-server")
        shown = message_text(payload)
        assert f"by pid {middle}" in shown and f"At the head of the chain: pid {head} (billing-worker" in shown
        assert set(buttons(payload)) == {"Acknowledge", "Terminate session"}  # the head is idle in a transaction
        # /mcp sessions --blocked shows the same: both waiters, the same button, on the head; none as "long".
        listed = bot.command("sessions --stage dev --blocked").message(timeout=30)
        targets = {json.loads(b["value"])["t"]["pid"] for b in all_buttons(listed) if "value" in b}
        assert targets == {head}
        listed_long = message_text(bot.command("sessions --stage dev --long").message(timeout=30))
        assert "migrator" not in listed_long and "api-server" not in listed_long
        press_alert(bot, ts, payload, "Terminate session", OPERATOR)
        request = wait_state(bot, latest_request(bot, "terminate").id, {"done", "failed", "stale"})
        assert request.state == "done", request.error
        assert request.server_key["pid"] == head
        held.wait_until(
            "SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    finally:
        held.close()
    bot.runtime.health.run_group("dev", "activity")
    assert [a.state for a in blocked_alerts(bot, "dev")] == ["resolved", "resolved"]
