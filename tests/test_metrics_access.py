"""/metrics: values read from the bot database are cached (a scrape runs no query), and the
endpoint can be put behind a bearer token or on a port of its own."""

from __future__ import annotations

import urllib.error
import urllib.request

from bot.localpg import free_port
from tests.conftest import StageDb, eventually
from tests.test_metrics_readyz import scrape, value

TOKEN = "metrics-token-0123456789abcdef"

# The approvals gauge's statement, as pg_stat_statements normalises it, in the bot database.
APPROVAL_COUNTS = """
SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
WHERE d.datname = :db AND s.query LIKE '%delete_requests.state, count(*)%'
"""


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_scrapes_read_cached_values_and_run_no_bot_database_query(make_bot, stage_db: StageDb):
    bot = make_bot({"dev": stage_db.url}, METRICS_REFRESH_SECONDS="3600")
    database = bot.runtime.bot_engine.url.database
    assert eventually(lambda: value(scrape(bot), "mcp_ops_bot_database_up") == 1)
    before = stage_db.scalar(APPROVAL_COUNTS, db=database)
    assert before >= 1  # the background refresh ran it
    for _ in range(20):
        samples = scrape(bot)
    assert value(samples, "mcp_ops_approvals", state="pending") == 0
    assert stage_db.scalar(APPROVAL_COUNTS, db=database) == before


def test_metrics_behind_a_bearer_token_on_a_port_of_their_own(serve):
    port = free_port()
    server = serve(METRICS_TOKEN=TOKEN, METRICS_PORT=str(port))
    assert server.get("/metrics")[0] == 404  # not on the Slack port
    url = f"http://127.0.0.1:{port}/metrics"
    assert eventually(lambda: get(url, {"Authorization": f"Bearer {TOKEN}"})[0] == 200)
    assert get(url)[0] == 401
    assert get(url, {"Authorization": "Bearer wrong-token-0123456789"})[0] == 401
    status, body = get(url, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and "mcp_ops_commands_total" in body
    assert server.get("/healthz") == (200, "ok")


def test_metrics_token_on_the_main_port(make_bot, stage_db: StageDb):
    bot = make_bot({"dev": stage_db.url}, METRICS_TOKEN=TOKEN)
    url = bot.server.base_url + "/metrics"
    assert get(url)[0] == 401
    status, body = get(url, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and "mcp_ops_draining 0.0" in body
