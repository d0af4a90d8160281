"""Long output on the other surfaces: `/mcp indexes`, `/mcp health`, `/mcp sessions`, `/mcp pending`
and the erasure receipt stay within what Slack accepts whatever the stage holds: the head in the
message, the count of the rest, and (for messages in the channel) the whole of it as a file.

Every payload also passes the fake Slack's checks, or the fixture fails the test.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from bot.console.payloads import check
from bot.health.checks import Finding
from bot.sessions.activity import Backend, SessionList
from bot.slacktext.blocks import block_chars
from handlers.render_sessions import render_sessions
from tests.conftest import CHANNEL, OPERATOR, TEST_SPEC, BotHarness, StageDb, message_text
from tests.deletion_support import (
    add_extra_tables,
    press,
    request_message,
    requests_rows,
    start_delete,
    wait_state,
    wait_update,
)
from tests.erasure_support import TYPED, add_person
from tests.test_long_output import add_wide_schema

BIG = TEST_SPEC.big_slug
TABLES = 150


def fits(reply: dict) -> bool:
    """Within Slack's limits, and nothing dropped by the builders' last-resort net (`:scissors:`)."""
    return (
        block_chars(reply["blocks"]) < 12_000
        and len(reply["blocks"]) <= 50
        and ":scissors:" not in message_text(reply)
        and check("response_url", reply) is None
    )


def add_unindexed_tables(db: StageDb) -> None:
    """150 tables hanging off the big server by a foreign key without an index, each with a duplicate index."""
    statements = []
    for i in range(TABLES):
        name = f"integration_event_log_partition_{i:03d}"
        statements.append(
            f"CREATE TABLE {name} (id bigint PRIMARY KEY, server_id text NOT NULL"
            f" REFERENCES mcp_servers(id) ON DELETE CASCADE, note text);"
            f"CREATE INDEX {name}_note_a ON {name} (note); CREATE INDEX {name}_note_b ON {name} (note);"
            f"INSERT INTO {name} VALUES (1, 'srv_big', 'n');"
        )
    db.execute("".join(statements) + "ANALYZE;")


@pytest.fixture
def unindexed(make_bot, stage_db) -> BotHarness:
    add_unindexed_tables(stage_db)
    return make_bot({"dev": stage_db.url})


def test_indexes_on_150_tables_lists_the_head_with_its_buttons_and_counts_the_rest(unindexed):
    reply = unindexed.command("indexes --stage dev").message(timeout=60)
    shown = message_text(reply)
    assert fits(reply), shown[-300:]
    counts = re.search(r": ([\d,]+) foreign keys? without an index, ([\d,]+) invalid \S+, ([\d,]+) dup", shown)
    assert counts, shown[:300]
    unindexed_fks, invalid, duplicates = (int(n.replace(",", "")) for n in counts.groups())
    assert unindexed_fks >= 150 and duplicates >= 150
    listed = shown.count("• *")
    assert 0 < listed <= 20
    assert "• *duplicate*" in shown and "• *no index*" in shown  # taken in turn: neither crowds the other out
    assert sum(1 for b in reply["blocks"] if b["type"] == "actions") == listed  # every listed item has its buttons
    left = unindexed_fks + invalid + duplicates - listed
    assert f"… and {left:,} more: build or drop these first, then run `/mcp indexes` again" in shown


def test_health_with_150_findings_shows_the_first_and_attaches_every_finding(unindexed):
    reply = unindexed.command("health --stage dev").message(timeout=90)
    shown = message_text(reply)
    assert fits(reply), shown[-300:]
    assert "more: the attached `health-dev.txt` has every finding in full" in shown
    report = unindexed.slack.wait_for_file(lambda f: f.filename == "health-dev.txt").text
    for i in range(TABLES):
        assert f"integration_event_log_partition_{i:03d}_note_" in report
    assert report.startswith("Health of dev at ")
    assert "[info] index public.integration_event_log_partition_149" in report


def test_sessions_with_long_queries_fit_with_their_count():
    start = datetime.now(UTC) - timedelta(hours=1)
    backends = [
        Backend("long", f"pid {1000 + i} (report-job, app)", "active", 3600.0, "SELECT " + "x, " * 400, 1000 + i, start)
        for i in range(15)
    ]
    listing = SessionList("dev", ("long", "idle", "blocked"), backends, 40, {"long": 300, "idle": 60, "blocked": 30})
    reply = render_sessions(None, listing)  # type: ignore[arg-type]  # the renderer reads only the listing
    shown = message_text(reply)
    assert fits(reply), shown[-300:]
    assert shown.count("• *long*") == 15  # each query cut to its head, so all fetched sessions show
    assert "… and 25 more: narrow it with `--long`, `--idle` or `--blocked`" in shown


def add_open_requests(bot: BotHarness, count: int) -> None:
    """`count` open delete requests, as the request machine stores them, each with a long reason."""
    now = datetime.now(UTC)
    for i in range(count):
        bot.runtime.requests.store.create(
            kind="delete",
            stage="dev",
            slug=f"a-server-with-a-rather-long-slug-{i}",
            server_key={"id": f"srv_{i}"},
            requester=OPERATOR,
            reason="clean-up after the migration of the customer's tenancy to the new region " * 2,
            protected=False,
            required_approvals=0,
            state="pending",
            impact={"total_rows": i},
            snapshot={},
            snapshot_hash="0" * 64,
            created_at=now,
            expires_at=now + timedelta(hours=1),
            channel=CHANNEL,
        )


def test_pending_with_80_requests_counts_every_one_and_says_how_to_narrow(make_bot, stage_db):
    bot = make_bot({"dev": stage_db.url})
    add_open_requests(bot, 80)
    reply = bot.command("pending").message()
    shown = message_text(reply)
    assert fits(reply) and reply["response_type"] == "ephemeral", shown[-300:]
    assert "Open requests: 80" in shown and reply["text"] == "80 open requests"
    listed = shown.count("• ")
    assert 0 < listed <= 30 and f"… and {80 - listed} more: narrow it with `--stage`" in shown
    on_dev = message_text(bot.command("pending --stage dev").message())
    assert "Open requests on stage *dev*: 80" in on_dev and "App Home lists those waiting for you" in on_dev


def add_person_tables(db: StageDb) -> None:
    """150 tables holding a row of each person (Alice among them), deleted with the person."""
    db.execute(
        "".join(
            f"CREATE TABLE person_event_log_{i:03d} (id bigint PRIMARY KEY,"
            f" user_id text NOT NULL REFERENCES mcp_server_user(id) ON DELETE CASCADE);"
            f"CREATE INDEX ON person_event_log_{i:03d} (user_id);"
            f"INSERT INTO person_event_log_{i:03d} VALUES (1, 'msu_alice');"
            for i in range(TABLES)
        )
        + "ANALYZE;"
    )


def test_an_erasure_over_150_tables_has_its_whole_receipt_in_the_thread(make_bot, stage_db):
    add_extra_tables(stage_db)
    add_person(stage_db)
    add_person_tables(stage_db)
    bot = make_bot({"dev": stage_db.url})
    before = {r.id for r in requests_rows(bot)}
    assert "is posted in this channel as request" in bot.command(f"forget-user '{TYPED}' --stage dev").text(60)
    [request_id] = [r.id for r in requests_rows(bot) if r.id not in before]
    pending = request_message(bot, request_id)
    assert fits(pending) and "more tables: the erasure's receipt lists every table" in message_text(pending)
    press(bot, request_id, "Forget", OPERATOR)
    row = wait_state(bot, request_id, {"done", "failed", "stale"}, timeout=120)
    assert row.state == "done", row.error
    receipt = wait_update(bot, request_id, ": done", timeout=60)
    assert fits(receipt) and "more tables: the whole receipt is in the thread" in message_text(receipt)
    name = f"receipt-dev-erasure-{row.result['erasure']}.txt"
    file = bot.slack.wait_for_file(lambda f: f.filename == name)
    assert file.thread_ts == row.message_ts and file.text.startswith(f"Receipt of erasure #{row.result['erasure']}")
    for i in range(TABLES):
        assert f"person_event_log_{i:03d}`: 1 row deleted" in file.text
    assert "alice" not in file.text.lower()


def test_a_restore_of_150_tables_is_summarised_with_every_table_attached(make_bot, stage_db):
    add_wide_schema(stage_db)
    bot = make_bot({"dev": stage_db.url})
    request_id = start_delete(bot, extra="--backup")
    press(bot, request_id, "Delete", OPERATOR)
    assert wait_state(bot, request_id, {"done", "failed"}, timeout=120).state == "done"
    dry = bot.command(f"restore {request_id} --stage dev --dry-run").message(timeout=60)
    assert fits(dry) and "more tables: the backup's manifest lists them all" in message_text(dry)
    reply = bot.command(f"restore {request_id} --stage dev").message(timeout=120)
    shown = message_text(reply)
    assert fits(reply) and "Restored backup" in shown, shown[:300]
    [name] = re.findall(r"more tables: the attached `(restore-dev-[^`]+\.txt)` has them all", shown)
    report = bot.slack.wait_for_file(lambda f: f.filename == name).text
    for i in range(TABLES):
        assert f"integration_event_log_partition_{i:03d}`: {1 + i % 7} row" in report
    assert stage_db.scalar("SELECT count(*) FROM integration_event_log_partition_149") == 1 + 149 % 7


def test_app_home_with_40_requests_waiting_shows_10_and_counts_the_rest(make_bot, stage_db):
    bot = make_bot({"dev": stage_db.url})
    add_open_requests(bot, 40)  # the operator's own, waiting for their confirmation
    assert bot.sender.event({"type": "app_home_opened", "user": OPERATOR, "tab": "home"}).status == 200
    [call] = bot.slack.wait_for_call("views.publish", lambda c: c.payload.get("user_id") == OPERATOR)
    view = call.payload["view"]
    shown = message_text(view)
    assert len(view["blocks"]) <= 100 and ":scissors:" not in shown
    assert len(re.findall(r"#\d+ delete `a-server-with-a-rather-long-slug-", shown)) == 10
    assert "… and 30 more: `/mcp pending` lists every open request" in shown


def test_forty_open_alerts_show_25_and_go_along_as_a_file(bot):
    findings = [
        Finding("connections", f"database db_{i:02d}", "warning", f"connections of db_{i:02d} at 9{i % 10}%", "d", "a")
        for i in range(40)
    ]
    bot.runtime.health.book.apply("dev", ["connections"], findings)
    reply = bot.command("alerts --stage dev").message()
    shown = message_text(reply)
    assert fits(reply) and "… and 15 more: the attached `alerts-dev.txt` has them all" in shown, shown[-300:]
    assert shown.count("connections of db_") == 25 and "seen in the last run" in shown
    report = bot.slack.wait_for_file(lambda f: f.filename == "alerts-dev.txt").text
    assert all(f"connections of db_{i:02d}" in report for i in range(40))
