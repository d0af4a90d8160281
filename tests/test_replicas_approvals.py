"""Delete requests on two real `mcp-ops serve` processes sharing BOT_DATABASE_URL and the fake Slack.

An approval clicked on one replica is seen by the other, a burst of clicks spread over both
runs the delete once, and the expiry job closes an overdue request once however many
replicas run it.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from bot.config import parse_database_url
from bot.console.client import SlackRequestSender
from bot.console.localslack import LocalSlack
from bot.console.process import ServeProcess
from tests.conftest import APPROVER, APPROVER2, CHANNEL, OPERATOR, SIGNING_SECRET, base_env, eventually, message_text
from tests.deletion_support import BIG, buttons

REASON = "customer asked to be forgotten"
SETTLE_S = 2.5  # two outbox ticks on each replica (OUTBOX_INTERVAL_SECONDS=1): time for a duplicate to show


class Pair:
    """Two replicas, their signed-request senders, and a connection to the shared bot database."""

    def __init__(self, replicas: list[ServeProcess], slack: LocalSlack, engine: Engine) -> None:
        self.replicas = replicas
        self.slack = slack
        self.engine = engine
        self.senders: list[SlackRequestSender] = [
            r.sender(SIGNING_SECRET, slack.base_url, slack.check_ack) for r in replicas
        ]

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params))

    def request(self, request_id: int) -> Any:
        return self.rows("SELECT * FROM delete_requests WHERE id = :i", i=request_id)[0]

    def command(self, replica: int, text_: str, user: str = OPERATOR) -> str:
        """A slash command through one replica; the text of its reply on the response_url."""
        sender = self.senders[replica]
        url = sender.new_response_url()
        assert sender.slash(text_, user=user, channel=CHANNEL, response_url=url).status == 200
        path = url.split(self.slack.base_url, 1)[1]
        return message_text(self.slack.wait_for_call("response_url", lambda c: c.path == path, 30)[0].payload)

    def start_delete(self, replica: int, args: str) -> Any:
        before = {r.id for r in self.rows("SELECT id FROM delete_requests")}
        reply = self.command(replica, f"delete {args}")
        assert "posted in this channel" in reply, reply
        (row,) = [r for r in self.rows("SELECT * FROM delete_requests") if r.id not in before]
        assert eventually(lambda: self.request(row.id).message_ts, timeout=10)
        return self.request(row.id)

    def updates(self, row: Any, needle: str) -> list[dict[str, Any]]:
        """chat.update calls Slack accepted for the request's message whose text contains `needle`."""
        return [
            c.payload
            for c in self.slack.calls_to("chat.update")
            if c.payload.get("channel") == row.channel
            and c.payload.get("ts") == row.message_ts
            and needle in c.payload.get("text", "")
        ]

    def audit_outcomes(self, request_id: int) -> list[str]:
        return [
            r.outcome
            for r in self.rows(
                "SELECT outcome FROM audit_log WHERE command = 'delete' AND detail->>'request' = :i ORDER BY id",
                i=str(request_id),
            )
        ]


@pytest.fixture
def pair(tmp_path, bot_db_url, stage_db, fake_slack) -> Iterator[Pair]:
    env = base_env(bot_db_url=bot_db_url, stages={"dev": stage_db.url, "production": stage_db.url}, slack=fake_slack)
    env["BACKUP_DIR"] = str(tmp_path / "backups")  # protected deletes always take a scoped backup
    replicas = [ServeProcess(env, tmp_path / f"replica{i}.log") for i in range(2)]
    engine = create_engine(parse_database_url("BOT_DATABASE_URL", bot_db_url))
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:  # both start at once: migration under its advisory lock
            list(pool.map(lambda r: r.start(), replicas))
        yield Pair(replicas, fake_slack, engine)
    finally:
        codes = [r.stop() for r in replicas]
        engine.dispose()
    assert codes == [0, 0]


def approvals_gauge(replica: ServeProcess, state: str) -> float | None:
    status, body = replica.get("/metrics")
    assert status == 200
    found = re.search(rf'^mcp_ops_approvals\{{state="{state}"\}} (\S+)$', body, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_an_approval_burst_over_two_replicas_runs_the_protected_delete_once(pair, stage_db):
    row = pair.start_delete(0, f'{BIG} --stage production --reason "{REASON}"')
    assert (row.state, row.protected, row.required_approvals) == ("pending", True, 1)
    assert f"#{row.id} " in pair.command(0, "pending --stage production")
    payload = pair.slack.messages[(row.channel, row.message_ts)].payload
    approve = buttons(payload)["Approve"]

    # The approver clicks through replica 1; at the same moment the same approver's double click lands
    # on replica 0 and a second approver clicks on both.
    clicks = [(APPROVER, 1), (APPROVER, 0), (APPROVER2, 0), (APPROVER2, 1)]
    urls = [pair.senders[replica].new_response_url() for _, replica in clicks]
    barrier = threading.Barrier(len(clicks))

    def click(index: int) -> int:
        user, replica = clicks[index]
        barrier.wait()
        reply = pair.senders[replica].block_actions(
            approve,
            user=user,
            channel=row.channel,
            message=payload,
            message_ts=row.message_ts,
            response_url=urls[index],
        )
        return reply.status

    with ThreadPoolExecutor(max_workers=len(clicks)) as pool:
        assert list(pool.map(click, range(len(clicks)))) == [200] * len(clicks)

    assert eventually(lambda: pair.request(row.id).state in ("done", "failed", "stale"), timeout=60)
    done = pair.request(row.id)
    assert done.state == "done", done.error
    assert stage_db.scalar("SELECT count(*) FROM mcp_servers WHERE slug = :s", s=BIG) == 0
    assert eventually(lambda: pair.updates(row, ": done"), timeout=20)
    time.sleep(SETTLE_S)
    assert len(pair.updates(row, ": done")) == 1
    # One click counted (it gets no answer); each of the other three was told, on its own replica, why not.
    paths = {url.split(pair.slack.base_url, 1)[1] for url in urls}

    def refusals() -> list[str]:
        return [message_text(c.payload) for c in pair.slack.calls_to("response_url") if c.path in paths]

    assert eventually(lambda: len(refusals()) >= len(clicks) - 1, timeout=10)
    answers = refusals()
    assert len(answers) == len(clicks) - 1 and all("already" in answer for answer in answers), answers

    outcomes = pair.audit_outcomes(row.id)
    assert outcomes.count("approved") == 1 and outcomes.count("voted") == 0
    assert outcomes.count("running") == 1 and outcomes.count("done") == 1
    voters = [v for (v,) in pair.rows("SELECT voter FROM delete_request_votes WHERE request_id = :i", i=row.id)]
    assert len(voters) == 1 and voters[0] in (APPROVER, APPROVER2)  # the quorum of one, counted once

    # Every replica sees the same state: the request left /mcp pending, the gauges agree.
    assert f"#{row.id} " not in pair.command(0, "pending --stage production")
    # (the gauges are refreshed in the background: at most METRICS_REFRESH_SECONDS behind another replica)
    for replica in pair.replicas:
        assert eventually(lambda r=replica: approvals_gauge(r, "done") == 1.0, timeout=40)
        assert not approvals_gauge(replica, "pending") and not approvals_gauge(replica, "running")


def test_the_expiry_job_closes_an_overdue_request_once_across_two_replicas(pair, stage_db):
    row = pair.start_delete(1, f"{BIG} --stage dev")
    with pair.engine.begin() as conn:
        conn.execute(
            text("UPDATE delete_requests SET expires_at = now() - interval '1 minute' WHERE id = :i"), {"i": row.id}
        )
    # deletion:expire runs every 30 s in each replica (once per slot across them); nobody clicks.
    assert eventually(lambda: pair.request(row.id).state != "pending", timeout=75, interval=0.5)
    assert pair.request(row.id).state == "expired"
    assert eventually(lambda: pair.updates(row, ": expired"), timeout=20)
    time.sleep(SETTLE_S)
    assert len(pair.updates(row, ": expired")) == 1
    assert pair.audit_outcomes(row.id).count("expired") == 1
    assert pair.rows("SELECT actor FROM audit_log WHERE outcome = 'expired'")[0].actor == "system"
    assert stage_db.scalar("SELECT count(*) FROM mcp_servers WHERE slug = :s", s=BIG) == 1
