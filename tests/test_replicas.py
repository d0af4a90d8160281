"""Two real `mcp-ops serve` processes sharing BOT_DATABASE_URL behave as one bot."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import create_engine, text

from bot.config import parse_database_url
from bot.console.process import ServeProcess
from tests.conftest import AUDIT_CHANNEL, CHANNEL, OPERATOR, SIGNING_SECRET, base_env, eventually, message_text

COMMANDS = 24


def conn_rows(engine, sql: str) -> list:
    with engine.connect() as conn:
        return list(conn.execute(text(sql)))


FIND_ROWS = "SELECT count(*) FROM audit_log WHERE command = 'find'"


def audit_texts(slack) -> list[str]:
    """The audit posts of this test's commands (health checks may audit things of their own)."""
    return [
        c.payload["text"]
        for c in slack.calls_to("chat.postMessage")
        if c.payload.get("channel") == AUDIT_CHANNEL and "find replica-" in c.payload.get("text", "")
    ]


def test_two_replicas_drain_the_outbox_once_and_share_state(tmp_path, bot_db_url, stage_db, fake_slack):
    env = base_env(bot_db_url=bot_db_url, stages={"dev": stage_db.url}, slack=fake_slack)
    env.update(HEALTH_CHECKS="on", HEALTH_INTERVAL_SECONDS="10")
    replicas = [ServeProcess(env, tmp_path / f"replica{i}.log") for i in range(2)]
    engine = create_engine(parse_database_url("BOT_DATABASE_URL", bot_db_url))
    try:
        for replica in replicas:
            replica.start()
        senders = [r.sender(SIGNING_SECRET, fake_slack.base_url) for r in replicas]

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

        # Scheduled health checks: every slot of every job was run by exactly one replica, to the end.
        with engine.connect() as conn:
            runs = conn.execute(
                text(
                    "SELECT job, count(*), count(DISTINCT slot), count(DISTINCT owner),"
                    " bool_and(finished_at IS NOT NULL) FROM job_runs GROUP BY job"
                )
            ).all()
        assert {job for job, *_ in runs} >= {"health:dev:activity", "health:dev:statements"}
        for job, count, slots, _owners, finished in runs:
            assert count == slots, job
            assert finished or job == "health:dev:activity", job  # the newest slot may still be running
        owners = {o for (o,) in conn_rows(engine, "SELECT DISTINCT owner FROM job_runs")}
        assert len(owners) <= 2
    finally:
        for replica in replicas:
            assert replica.stop() == 0
        engine.dispose()
