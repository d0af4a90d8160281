"""200 concurrent signed slash commands against one `mcp-ops serve` process: ack latency;
then the same server with 200 slow clients holding connections open.

The server is the production one (uvicorn, `mcp-ops serve` in a subprocess) on the default
demo-size dataset; every request is a correctly signed `/mcp` command (a mix of `find`,
`stats`, `list` and `help`), all 200 sent at once from asyncio clients on loopback.
Latency is measured by the client, from sending the request to reading the ack: what Slack's
3-second clock sees behind a load balancer, whose connections to the bot are already open
(each request still gets a connection of its own, opened just before the burst).
Targets: p99 < 500 ms, none over 3 s, zero errors; and every command answered (its reply, or
a busy answer in the ack for heavy reads past the stage's cap) and audited. The 200 come from
200 people (one person's flood is capped per person). Slow clients (bot/console/slow.py: half
stalled in their headers, half in their bodies, from 127.0.0.2 and up) must leave /healthz and
signed commands answering: 20 of each, one after the other, timed while the 200 hold on (target:
every one answered, none over 3 s).
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from bench.common import BenchContext
from bot.console.client import SlackRequestSender, sign
from bot.console.localslack import LocalSlack
from bot.console.process import ServeProcess
from bot.console.slow import slow_clients
from bot.platform.demo_data import DatasetSpec

CONCURRENCY = 200
SECRET = "bench-load-signing-secret"  # noqa: S105 - a local benchmark's own key
OPERATOR = "UBENCHOPS1"
PEOPLE = "UBLOAD"  # the burst's 200 people: UBLOAD0000 ...
SPEC = DatasetSpec()
TARGET_P99_S = 0.5
TARGET_MAX_S = 3.0
SLOW_CLIENTS = 200
PROBES = 20


def _timed(call) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def _under_slow_clients(server: ServeProcess, sender: SlackRequestSender) -> None:
    """/healthz and signed `/mcp help` while SLOW_CLIENTS connections stall (deadlines beyond the probes)."""

    def healthz() -> None:
        assert server.get("/healthz", timeout=10) == (200, "ok")

    def command() -> None:
        assert sender.slash("help", user=OPERATOR, channel="CBENCH").status == 200

    with slow_clients(server.port, SLOW_CLIENTS, SECRET):
        health = [_timed(healthz) for _ in range(PROBES)]
        commands = [_timed(command) for _ in range(PROBES)]
    print(f"{SLOW_CLIENTS} slow clients held open (half stalled in headers, half in bodies):")
    for name, values in (("/healthz", health), ("signed /mcp help ack", commands)):
        print(
            f"  {name}: {len(values)}/{PROBES} answered, p50 {statistics.median(values) * 1000:.0f} ms, "
            f"max {max(values) * 1000:.0f} ms"
        )
    met = max(health + commands) < TARGET_MAX_S
    print(f"  target every probe answered within {TARGET_MAX_S:.0f} s: {'met' if met else 'MISSED'}")


def _request_bytes(host: str, port: int, path: str, body: bytes) -> bytes:
    timestamp = int(time.time())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\nX-Slack-Request-Timestamp: {timestamp}\r\n"
        f"X-Slack-Signature: {sign(SECRET, body, timestamp)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


async def _one(host: str, port: int, raw: bytes, start: asyncio.Event) -> tuple[float, int, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    await start.wait()
    began = time.perf_counter()
    writer.write(raw)
    await writer.drain()
    status_line = await reader.readline()
    rest = await reader.read()  # the rest of the ack; the server closes the connection
    elapsed = time.perf_counter() - began
    writer.close()
    parts = status_line.split()
    return elapsed, int(parts[1]) if len(parts) > 1 else 0, rest


async def _burst(host: str, port: int, requests: list[bytes]) -> list[tuple[float, int, bytes] | BaseException]:
    start = asyncio.Event()
    tasks = [asyncio.create_task(_one(host, port, raw, start)) for raw in requests]
    await asyncio.sleep(0.2)  # every connection open and waiting: then all requests go at once
    start.set()
    return await asyncio.gather(*tasks, return_exceptions=True)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def run(ctx: BenchContext) -> None:
    stage_url = ctx.clone("load", spec=SPEC)
    bot_db = ctx.cluster.create_database(f"bench_load_bot_{time.time_ns()}", drop=True)
    slack = LocalSlack().start()
    env = {
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_BOT_TOKEN": "xoxb-bench-load",
        "SLACK_API_URL": slack.api_url,
        "BOT_DATABASE_URL": bot_db,
        "DATABASE_URL_BENCH": stage_url,
        "OPERATORS": OPERATOR,
        "AUDIT_CHANNEL": "CBENCHAUDIT",
        "LOG_LEVEL": "WARNING",
        # The slow clients must still be holding on while the probes run.
        "HTTP_HEADER_TIMEOUT_SECONDS": "120",
        "HTTP_BODY_TIMEOUT_SECONDS": "120",
    }
    log_dir = Path(tempfile.mkdtemp(prefix="mcp-ops-bench-load-"))
    log_path = log_dir / "serve.log"
    server = ServeProcess(env, log_path).start()
    try:
        parts = urlsplit(server.events_url)
        host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
        sender = SlackRequestSender(server.events_url, SECRET, response_base=slack.base_url)
        texts = [
            f"find {SPEC.big_slug} --stage bench",
            f"stats {SPEC.big_slug} --stage bench --days 7",
            "list --limit 5 --stage bench",
            "help",
        ]
        for text in texts:  # warm-up: first imports, pool connections, compiled-statement caches
            sender.slash(text, user=OPERATOR, channel="CBENCH")
        reply_urls = [sender.new_response_url() for _ in range(CONCURRENCY)]
        reply_paths = {urlsplit(url).path for url in reply_urls}
        # 200 people at once (one person's flood is capped: HEAVY_READS_PER_USER, the rate limit).
        bodies = [
            sender.slash_body(texts[i % len(texts)], user=f"{PEOPLE}{i:04d}", channel="CBENCH", response_url=url)
            for i, url in enumerate(reply_urls)
        ]
        results = asyncio.run(_burst(host, port, [_request_bytes(host, port, path, b) for b in bodies]))

        latencies = [r[0] for r in results if not isinstance(r, BaseException) and r[1] == 200]
        errors = len(results) - len(latencies)
        print(f"{CONCURRENCY} concurrent signed slash commands to one `mcp-ops serve` (uvicorn, 1 process):")
        if latencies:
            p50, p99, worst = (
                statistics.median(latencies),
                _percentile(latencies, 0.99),
                max(latencies),
            )
            print(f"  ack latency p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {worst * 1000:.0f} ms")
        else:
            p99 = worst = float("inf")
        statuses = sorted({r[1] for r in results if not isinstance(r, BaseException)})
        print(f"  errors: {errors} (HTTP statuses seen: {statuses})")

        # A heavy read past the stage's cap is answered in its ack ("busy ... try again in N s").
        busy = len([r for r in results if not isinstance(r, BaseException) and b"try again in" in r[2]])

        def replies() -> int:
            return len({c.path for c in slack.calls_to("response_url")} & reply_paths)

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and replies() + busy < CONCURRENCY:
            time.sleep(0.2)
        with psycopg.connect(ctx.dsn(bot_db)) as conn:
            query = "SELECT count(*) FROM audit_log WHERE actor LIKE %s"
            audited = conn.execute(query, (PEOPLE + "%",)).fetchone()[0]
        delivered = replies()
        print(
            f"  answered: {delivered} replies + {busy} busy (heavy reads past HEAVY_READS_PER_STAGE) "
            f"= {delivered + busy}/{CONCURRENCY}, audit rows: {audited}/{CONCURRENCY}"
        )
        answered = delivered + busy == audited == CONCURRENCY
        met = p99 < TARGET_P99_S and worst < TARGET_MAX_S and errors == 0 and answered
        print(
            f"  target p99 < {TARGET_P99_S * 1000:.0f} ms, max < {TARGET_MAX_S:.0f} s, zero errors, "
            f"every command answered and audited: {'met' if met else 'MISSED'}"
        )
        _under_slow_clients(server, sender)
    finally:
        if server.stop() != 0:
            print(f"  serve did not exit cleanly: {server.log_tail()}")
        shutil.rmtree(log_dir, ignore_errors=True)
        slack.stop()
        ctx.cluster.drop_database(bot_db.rsplit("/", 1)[-1])
