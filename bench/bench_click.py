"""Delete end to end: the signed click on Delete to the commit, against the same hand-written SQL.

Split from bench_delete.py (which measures the impact, the delete itself and the prediction); the
hand-written statements are that module's.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import psycopg
from sqlalchemy import text

from bench.bench_delete import HAND_DELETE, PARAMS, SLUG
from bench.common import BenchContext, ratio_line
from bot.config import load_settings
from bot.console.client import SlackRequestSender
from bot.console.localslack import LocalSlack
from bot.runtime import Runtime
from handlers.server import build_asgi, serve_in_thread

# Told at the commit of whichever transaction deletes the server row: how the click bench sees the commit
# (NOTIFY is delivered when the deleting transaction commits). Both sides run with it.
COMMIT_SIGNAL = """
CREATE FUNCTION bench_gone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('bench_gone', ''); RETURN NULL; END $$;
CREATE TRIGGER bench_gone AFTER DELETE ON mcp_servers FOR EACH STATEMENT EXECUTE FUNCTION bench_gone();
"""


def _committed_clone(ctx: BenchContext, label: str) -> tuple[str, psycopg.Connection[Any]]:
    """A fresh copy with both FK indexes and the commit signal, and a connection listening for it."""
    url = ctx.clone(label, with_fk_indexes=True)
    listener = psycopg.connect(ctx.dsn(url), autocommit=True)
    listener.execute(COMMIT_SIGNAL)
    listener.execute("LISTEN bench_gone")
    return url, listener


def _wait_commit(listener: psycopg.Connection[Any]) -> float:
    for _ in listener.notifies(timeout=3600, stop_after=1):
        return time.perf_counter()
    raise RuntimeError("the delete never committed")


def _hand_delete(ctx: BenchContext, label: str) -> tuple[float, int]:
    url, listener = _committed_clone(ctx, label)
    with psycopg.connect(ctx.dsn(url)) as conn:
        started = time.perf_counter()
        rows = 0
        for statement in HAND_DELETE:
            cur = conn.execute(statement, PARAMS)
            rows += cur.rowcount if statement.startswith("DELETE") else 0
        conn.commit()
        took = _wait_commit(listener) - started
    listener.close()
    return took, rows


def _click_delete(ctx: BenchContext, label: str) -> tuple[float, int]:
    """The bot on a fresh copy: `/mcp delete` posts the request (not timed), then the signed click on Delete,
    timed until the delete's transaction commits (told by the commit signal)."""
    url, listener = _committed_clone(ctx, label)
    settings = load_settings(
        {
            "SLACK_SIGNING_SECRET": "bench-secret",
            "SLACK_BOT_TOKEN": "xoxb-bench",
            "BOT_DATABASE_URL": ctx.cluster.url("postgres"),
            "DATABASE_URL_BENCH": url,
            "OPERATORS": "UBENCH1",
            "OUTBOX_INTERVAL_SECONDS": "1",
            "DELETE_TIMEOUT_SECONDS": "3600",
            "HEALTH_CHECKS": "off",
        }
    )
    slack = LocalSlack().start()
    runtime = Runtime(dataclasses.replace(settings, slack_api_url=slack.api_url))
    runtime.start()
    server = serve_in_thread(build_asgi(runtime))
    sender = SlackRequestSender(server.events_url, "bench-secret", response_base=slack.base_url)
    try:
        response_url = sender.new_response_url()
        path = response_url.split(slack.base_url, 1)[1]
        sender.slash(f"delete {SLUG} --stage bench", user="UBENCH1", channel="CBENCH", response_url=response_url)
        slack.wait_for_call("response_url", lambda c: c.path == path, timeout=600)
        request_id, channel, ts, message = _posted_request(runtime, slack)
        button = next(
            e
            for b in message["blocks"]
            if b.get("type") == "actions"
            for e in b["elements"]
            if e["text"]["text"] == "Delete"
        )
        started = time.perf_counter()
        sender.block_actions(button, user="UBENCH1", channel=channel, message=message, message_ts=ts)
        took = _wait_commit(listener) - started
        rows = _finished_rows(runtime, request_id)
    finally:
        listener.close()
        server.stop()
        runtime.close()
        slack.stop()
    return took, rows


def _posted_request(runtime: Runtime, slack: LocalSlack) -> tuple[int, str, str, dict[str, Any]]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with runtime.bot_engine.connect() as conn:
            row = conn.execute(
                text("SELECT id, channel, message_ts FROM delete_requests ORDER BY id DESC LIMIT 1")
            ).first()
        if row is not None and row.message_ts and (row.channel, row.message_ts) in slack.messages:
            return row.id, row.channel, row.message_ts, slack.messages[(row.channel, row.message_ts)].payload
        time.sleep(0.05)
    raise RuntimeError("the delete request was never posted")


def _finished_rows(runtime: Runtime, request_id: int) -> int:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        with runtime.bot_engine.connect() as conn:
            row = conn.execute(
                text("SELECT state, result FROM delete_requests WHERE id = :id"), {"id": request_id}
            ).one()
        if row.state in ("done", "failed"):
            assert row.state == "done", row.result
            return int(row.result["rows"])
        time.sleep(0.05)
    raise RuntimeError("the delete request never finished")


def bench_click(ctx: BenchContext) -> None:
    """From the signed click on Delete to the commit (request lifecycle, re-plan, materialise, re-count,
    compare, delete), against the same hand-written SQL; a fresh copy of the data for every run."""
    ours: list[float] = []
    hand: list[float] = []
    for round_ in range(2):
        took, rows = _click_delete(ctx, f"click_{round_}")
        ours.append(took)
        hand_took, hand_rows = _hand_delete(ctx, f"click_hand_{round_}")
        hand.append(hand_took)
        assert rows == hand_rows, (rows, hand_rows)
        print(f"  round {round_ + 1}: click to commit {took:.2f} s, hand-written {hand_took:.2f} s ({rows:,} rows)")
    label = "delete end to end, signed click on Delete to commit (both FK indexes)"
    print(ratio_line(label, min(ours), min(hand), 1.2), flush=True)


def run(ctx: BenchContext) -> None:
    bench_click(ctx)
