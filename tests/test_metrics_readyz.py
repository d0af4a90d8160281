"""/metrics after real commands, and /readyz that pings every dependency at once."""

from __future__ import annotations

import json
import socket
import threading
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from bot.requests.store import STATES
from tests.conftest import AUDIT_CHANNEL, OPERATOR, TEST_SPEC, VIEWER, dead_database_url, eventually
from tests.deletion_support import press, start_delete, wait_state


def scrape(bot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(bot.server.base_url + "/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        body = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_metrics_count_commands_by_verb_and_outcome_and_time_the_ack(bot):
    before = scrape(bot)
    bot.command(f"find {TEST_SPEC.big_slug} --stage dev").text()
    bot.command("find no-such-server-anywhere --stage dev").text()
    bot.command("frobnicate everything").text()
    bot.command("audit", user=VIEWER).text()
    bot.command("HELP").text()
    bot.wait_audit(5)
    after = scrape(bot)

    def delta(verb: str, outcome: str) -> float:
        labels = {"verb": verb, "outcome": outcome}
        return value(after, "mcp_ops_commands_total", **labels) - value(before, "mcp_ops_commands_total", **labels)

    assert delta("find", "ok") == 1
    assert delta("find", "not_found") == 1
    assert delta("unknown", "bad_input") == 1  # free text never becomes a label value
    assert delta("audit", "denied") == 1
    assert delta("help", "ok") == 1
    assert not any(labels and ("verb", "frobnicate") in labels for _, labels in after)
    acks = value(after, "mcp_ops_ack_latency_seconds_count") - value(before, "mcp_ops_ack_latency_seconds_count")
    assert acks == 5
    le_3s = value(after, "mcp_ops_ack_latency_seconds_bucket", le="3.0") - value(
        before, "mcp_ops_ack_latency_seconds_bucket", le="3.0"
    )
    assert le_3s == 5


def test_metrics_show_pool_use_per_database(bot):
    bot.command(f"find {TEST_SPEC.big_slug} --stage dev").text()
    samples = scrape(bot)
    assert value(samples, "mcp_ops_db_pool_size", database="bot") == 30
    assert value(samples, "mcp_ops_db_pool_size", database="stage:dev") == 15
    assert value(samples, "mcp_ops_db_pool_open", database="stage:dev") >= 1
    # Production was never used: its engine does not exist, and scraping does not create it.
    assert value(samples, "mcp_ops_db_pool_size", database="stage:production") == 0
    assert bot.runtime.stages.get("production").created_engine is None
    assert value(samples, "mcp_ops_bot_database_up") == 1
    assert value(samples, "mcp_ops_draining") == 0

    # A connection held open shows as checked out.
    with bot.runtime.stages.get("dev").read():
        held = scrape(bot)
    assert value(held, "mcp_ops_db_pool_checked_out", database="stage:dev") == 1


def test_the_outbox_backlog_rises_while_slack_fails_and_drains_after(bot):
    bot.slack.fail("chat.postMessage", status=500, times=1000)
    for index in range(3):
        bot.command(f"find backlog-{index} --stage dev").text()
    bot.wait_audit(3)
    # Values read from the bot database are refreshed in the background, soon after a change.
    assert eventually(lambda: value(scrape(bot), "mcp_ops_outbox_backlog") == 3)
    bot.slack.clear_failures()
    with bot.runtime.bot_engine.begin() as conn:  # due now rather than after the back-off
        conn.execute(text("UPDATE outbox SET next_attempt_at = now()"))
    bot.runtime.outbox_worker.notify()
    bot.slack.wait_for(lambda calls: len([c for c in calls if c.payload.get("channel") == AUDIT_CHANNEL]) >= 3)
    assert eventually(lambda: value(scrape(bot), "mcp_ops_outbox_backlog") == 0)


def test_approvals_are_counted_by_state_from_real_requests(bot):
    def approvals(state: str) -> float | None:
        return scrape(bot).get(("mcp_ops_approvals", (("state", state),)))

    # Every state is exported from the start, 0 included.
    assert eventually(lambda: {state: approvals(state) for state in STATES} == dict.fromkeys(STATES, 0))
    # A protected delete asked for through the bot waits for its approval ...
    request_id = start_delete(bot, stage="production", extra='--reason "x"')
    assert wait_state(bot, request_id, {"pending"}).protected
    assert eventually(lambda: approvals("pending") == 1)
    # ... until its requester cancels it.
    press(bot, request_id, "Cancel", OPERATOR)
    wait_state(bot, request_id, {"cancelled"})
    assert eventually(lambda: approvals("cancelled") == 1 and approvals("pending") == 0)


class Blackhole:
    """A TCP port that accepts connections and never answers, like a host dropping packets
    after the handshake; it records how many connections were open at the same time."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.open = 0
        self.peak = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                self.open += 1
                self.peak = max(self.peak, self.open)
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        with conn:
            while conn.recv(1024):
                pass
        with self.lock:
            self.open -= 1

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def blackhole():
    hole = Blackhole()
    yield hole
    hole.close()


def test_readyz_pings_stages_concurrently_and_caches_briefly(make_bot, stage_db, blackhole):
    silent = f"postgresql://postgres:hunter2@127.0.0.1:{blackhole.port}/silent"
    bot = make_bot(
        {"dev": stage_db.url, "s1": silent, "s2": silent, "s3": silent, "gone": dead_database_url()},
        STAGE_CONNECT_TIMEOUT="2",
    )
    status, report = get_json(bot.server.base_url + "/readyz")
    assert status == 200  # a stage down does not take the bot out of rotation; its database does
    assert report["status"] == "ready"
    assert report["bot_database"] == "ok"
    assert report["stages"]["dev"].startswith("ok")
    assert {report["stages"][s] for s in ("s1", "s2", "s3", "gone")} == {"unreachable"}
    # The three silent stages were waited on at the same time, not one connect timeout after another.
    assert blackhole.peak == 3
    accepted = blackhole.accepted
    status, again = get_json(bot.server.base_url + "/readyz")
    assert again["stages"] == report["stages"]
    assert blackhole.accepted == accepted  # answered from the short cache
    assert "hunter2" not in json.dumps(report)


def test_firing_alerts_are_counted_from_the_health_alerts_table(bot):
    from bot.health.alerts import alerts

    rows = [("dev", "firing"), ("dev", "pending"), ("production", "firing"), ("dev", "resolved")]
    with bot.runtime.bot_engine.begin() as conn:
        for index, (stage, state) in enumerate(rows):
            conn.execute(
                alerts.insert().values(
                    stage=stage,
                    check_name="test",
                    object=f"object-{index}",
                    state=state,
                    severity="warning",
                    title="t",
                    detail="d",
                )
            )
    bot.runtime.changes.publish("alerts")  # what the health monitor does after it commits
    assert eventually(lambda: value(scrape(bot), "mcp_ops_alerts_firing", stage="dev") == 1)
    assert value(scrape(bot), "mcp_ops_alerts_firing", stage="production") == 1
