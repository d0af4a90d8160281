"""Two real `mcp-ops serve` processes sharing BOT_DATABASE_URL behave as one bot."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import create_engine, text

from bot.config import parse_database_url
from bot.console.process import ServeProcess
from tests.conftest import (
    ALERT_CHANNEL,
    AUDIT_CHANNEL,
    CHANNEL,
    OPERATOR,
    SIGNING_SECRET,
    base_env,
    eventually,
    message_text,
)

COMMANDS = 24


def conn_rows(engine, sql: str) -> list:
    with engine.connect() as conn:
        return list(conn.execute(text(sql)))


FIND_ROWS = "SELECT count(*) FROM audit_log WHERE command = 'find'"
ACTIVITY_RUNS = 3  # finished slots of the 10-second health job before the replicas are stopped


def activity_runs(engine) -> list:
    return conn_rows(
        engine,
        "SELECT slot, outcome FROM job_runs WHERE job = 'health:dev:activity' AND finished_at IS NOT NULL",
    )


def audit_texts(slack) -> list[str]:
    """The audit posts of this test's commands (health checks may audit things of their own)."""
    return [
        c.payload["text"]
        for c in slack.calls_to("chat.postMessage")
        if c.payload.get("channel") == AUDIT_CHANNEL and "find replica-" in c.payload.get("text", "")
    ]


def alert_posts(slack) -> list:
    """The connections alert's own posts in the alert channel (not replies in its thread)."""
    return [
        c
        for c in slack.calls_to("chat.postMessage")
        if c.payload.get("channel") == ALERT_CHANNEL
        and "thread_ts" not in c.payload
        and "connections at" in c.payload.get("text", "")
    ]


def test_two_replicas_drain_the_outbox_once_and_share_state(tmp_path, bot_db_url, stage_db, fake_slack):
    env = base_env(bot_db_url=bot_db_url, stages={"dev": stage_db.url}, slack=fake_slack)
    # Scheduled checks every 10 s, and a connections warning that fires at once and keeps firing
    # (the health round's own connection and the replicas' pools are well over 1% of max_connections).
    env.update(HEALTH_CHECKS="on", HEALTH_INTERVAL_SECONDS="10", CONNECTIONS_WARN_PERCENT="1")
    replicas = [ServeProcess(env, tmp_path / f"replica{i}.log") for i in range(2)]
    engine = create_engine(parse_database_url("BOT_DATABASE_URL", bot_db_url))
    try:
        for replica in replicas:
            replica.start()
        senders = [r.sender(SIGNING_SECRET, fake_slack.base_url, fake_slack.check_ack) for r in replicas]

        # Slack fails for a while, so posts pile up and both replicas' outbox workers go at them.
        fake_slack.fail("chat.postMessage", status=500, times=12)

        def send(index: int) -> int:
            sender = senders[index % 2]
            return sender.slash(f"find replica-{index} --stage dev", user=OPERATOR, channel=CHANNEL).status

        with ThreadPoolExecutor(max_workers=8) as pool:
            assert set(pool.map(send, range(COMMANDS))) == {200}
        with engine.connect() as conn:
            assert eventually(lambda: conn.execute(text(FIND_ROWS)).scalar() == COMMANDS)
        with engine.begin() as conn:  # let the back-off pass
            conn.execute(text("UPDATE outbox SET next_attempt_at = now() WHERE delivered_at IS NULL"))
        assert eventually(lambda: len(audit_texts(fake_slack)) >= COMMANDS, timeout=60)
        time.sleep(2.5)  # two more outbox ticks on each replica: nothing may arrive twice
        counts = Counter(audit_texts(fake_slack))
        assert len(counts) == COMMANDS and set(counts.values()) == {1}
        with engine.connect() as conn:
            pending, delivered = conn.execute(
                text(
                    "SELECT count(*) FILTER (WHERE delivered_at IS NULL),"
                    " count(*) FILTER (WHERE delivered_at IS NOT NULL) FROM outbox"
                    " WHERE payload->>'text' LIKE '%find replica-%'"
                )
            ).one()
        assert (pending, delivered) == (0, COMMANDS)
        # Both replicas were draining (each met some of the 500s).
        for replica in replicas:
            assert any("slack delivery postponed" in line for line in replica.log_lines())

        # A reply started on one replica continues on the other: its More button works there.
        first_url = senders[0].new_response_url()
        senders[0].slash("list --limit 2 --stage dev", user=OPERATOR, channel=CHANNEL, response_url=first_url)
        page = fake_slack.wait_for_call("response_url", lambda c: c.path.endswith(first_url.rsplit("/", 1)[1]))[0]
        more = next(
            element for block in page.payload["blocks"] if block["type"] == "actions" for element in block["elements"]
        )
        second_url = senders[1].new_response_url()
        assert senders[1].block_actions(more, user=OPERATOR, channel=CHANNEL, response_url=second_url).status == 200
        next_page = fake_slack.wait_for_call("response_url", lambda c: c.path.endswith(second_url.rsplit("/", 1)[1]))
        assert "3 to 4 of" in message_text(next_page[0].payload)

        # Scheduled checks run once per slot across the replicas. Let several activity slots pass with
        # both replicas up, then stop them (a stopped scheduler waits for its running job).
        assert eventually(lambda: len(activity_runs(engine)) >= ACTIVITY_RUNS, timeout=60, interval=0.5)
        assert eventually(lambda: alert_posts(fake_slack), timeout=30)
        for replica in replicas:
            assert replica.stop() == 0
        runs = activity_runs(engine)
        assert len(runs) >= ACTIVITY_RUNS and all(outcome == "ok" for _slot, outcome in runs), runs
        with engine.connect() as conn:
            alerts = conn.execute(
                text("SELECT state, consecutive FROM alerts WHERE stage = 'dev' AND check_name = 'connections'")
            ).all()
        # One alert row, seen by exactly one round per slot: a slot run by both replicas would count twice.
        assert [tuple(a) for a in alerts] == [("firing", len(runs))]
        # Posted to the alert channel once (later rounds at most edit that message), and audited once.
        assert len(alert_posts(fake_slack)) == 1
        firing = conn_rows(
            engine,
            "SELECT count(*) FROM audit_log WHERE command = 'alert' AND outcome = 'firing' AND stage = 'dev'"
            " AND detail->>'title' LIKE 'connections at%'",
        )
        assert firing[0][0] == 1
    finally:
        for replica in replicas:
            assert replica.stop() == 0
        engine.dispose()
