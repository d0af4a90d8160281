"""Long output: a summary Slack accepts in the message, the whole of it as a file beside it.

Every payload here also passes the fake Slack's checks (Block Kit models and limits, ~12,000
characters of blocks text), or the fixture fails the test.
"""

from __future__ import annotations

import csv
import io
import re

import psycopg
import pytest

from bot.slacktext.blocks import block_chars
from tests.conftest import CHANNEL, OPERATOR, TEST_SPEC, BotHarness, StageDb, message_text
from tests.deletion_support import buttons, press, request_message, start_delete, wait_state

BIG = TEST_SPEC.big_slug
TABLES = 150


def add_wide_schema(db: StageDb, tables: int = TABLES) -> None:
    """`tables` tables hanging off the big server, 1 to 7 rows each, with long names (and their index)."""
    statements = []
    for i in range(tables):
        name = f"integration_event_log_partition_{i:03d}"
        statements.append(
            f"CREATE TABLE {name} (id bigint PRIMARY KEY, server_id text NOT NULL"
            f" REFERENCES mcp_servers(id) ON DELETE CASCADE, note text);"
            f"CREATE INDEX ON {name} (server_id);"
            f"INSERT INTO {name} SELECT g, 'srv_big', 'n' FROM generate_series(1, {1 + i % 7}) g;"
        )
    db.execute("".join(statements) + "ANALYZE;")


@pytest.fixture
def wide(make_bot, stage_db) -> BotHarness:
    add_wide_schema(stage_db)
    return make_bot({"dev": stage_db.url})


def files_named(bot: BotHarness, prefix: str) -> list:
    return [f for f in bot.slack.shared_files(CHANNEL) if f.filename.startswith(prefix)]


def test_impact_of_a_server_reaching_150_tables_is_summarised_with_the_report_attached(wide):
    reply = wide.command(f"impact {BIG} --stage dev").message(timeout=60)
    shown = message_text(reply)
    assert block_chars(reply["blocks"]) < 12_000 and len(reply["blocks"]) <= 50
    assert "more tables: the attached `impact-dev-" in shown
    # The largest tables are the ones shown: tables of 7 rows, none of 1 row.
    assert "partition_006`: *7* rows" in shown and "*1* row to delete" not in shown
    report = wide.slack.wait_for_file(lambda f: f.filename == f"impact-dev-{BIG}.txt").text
    for i in range(TABLES):
        assert f"integration_event_log_partition_{i:03d}`: *{1 + i % 7}* row" in report
    assert report.startswith(f"Impact of deleting {BIG} on stage dev")


def test_a_150_table_delete_reports_per_table_in_its_thread(wide, stage_db):
    request_id = start_delete(wide)
    posted = request_message(wide, request_id)
    assert block_chars(posted["blocks"]) < 12_000
    assert f"/mcp impact {BIG}" in message_text(posted)  # where the whole list is
    thread_file = wide.slack.wait_for_file(lambda f: f.filename.startswith("impact-") and f.thread_ts)
    row = wait_state(wide, request_id, {"pending"})
    assert thread_file.thread_ts == row.message_ts
    press(wide, request_id, "Delete", OPERATOR)
    wait_state(wide, request_id, {"done"}, timeout=120)
    done = wide.slack.wait_for_file(lambda f: f.filename == f"delete-dev-{BIG}.txt")
    assert done.thread_ts == row.message_ts
    for i in range(TABLES):
        assert f"integration_event_log_partition_{i:03d}`: {1 + i % 7} row" in done.text
    final = request_message(wide, request_id)  # once its "done" update is delivered
    assert "Done: deleted" in message_text(final) and "every table's count is in the thread" in message_text(final)
    assert block_chars(final["blocks"]) < 12_000
    assert stage_db.scalar("SELECT count(*) FROM integration_event_log_partition_149") == 0
    assert "Delete" not in buttons(final)


def test_a_dry_run_over_150_tables_attaches_every_count(wide):
    reply = wide.command(f"delete {BIG} --stage dev --dry-run").message(timeout=90)
    assert "Dry run" in message_text(reply) and block_chars(reply["blocks"]) < 12_000
    file = wide.slack.wait_for_file(lambda f: f.filename == f"delete-dev-{BIG}.txt")
    assert file.text.count("integration_event_log_partition_") == TABLES


def add_servers(db: StageDb, count: int) -> None:
    db.execute(
        "INSERT INTO mcp_servers (id, organization_id, name, product_platform_or_tool, slug, created_at)"
        " SELECT 'srv_many_' || g, (SELECT min(id) FROM organization),"
        " 'A server with a rather long descriptive name for listing number ' || g, 'github',"
        " 'many-servers-with-long-slugs-' || g, 1700000000000 + g FROM generate_series(1, :n) g",
        n=count,
    )


def test_list_limit_100_fits_and_attaches_the_page_as_csv(make_bot, stage_db):
    add_servers(stage_db, 120)
    bot = make_bot({"dev": stage_db.url})
    reply = bot.command("list --limit 100 --stage dev").message()
    shown = message_text(reply)
    assert block_chars(reply["blocks"]) < 12_000 and len(reply["text"]) < 4_000
    assert "75 more on this page: all of them are in the attached `servers-dev.csv`" in shown
    assert "More (26 left)" in shown  # paging still works beside the file
    rows = list(csv.DictReader(io.StringIO(bot.slack.wait_for_file(lambda f: f.filename == "servers-dev.csv").text)))
    assert len({r["slug"] for r in rows}) == 100 and rows[0]["name"] and rows[0]["organization_id"]
    shown_slugs = re.findall(r"• `([^`]+)`", shown)
    assert [r["slug"] for r in rows[: len(shown_slugs)]] == shown_slugs  # the file begins where the message does


def test_a_long_users_list_goes_along_as_csv_with_emails_masked(make_bot, stage_db):
    stage_db.execute(
        "INSERT INTO mcp_server_user (id, distinct_id, email, first_seen_at)"
        " SELECT 'extra_user_' || g, 'person' || g || '@example.com', 'mail' || g || '@example.org', g"
        " FROM generate_series(1, 40) g"
    )
    stage_db.execute(
        "INSERT INTO mcp_server_session (mcp_server_session_id, mcp_server_slug, connection_date, mcp_server_user_id)"
        " SELECT 'extra_session_' || g, :slug, current_date, 'extra_user_' || g FROM generate_series(1, 40) g",
        slug=BIG,
    )
    bot = make_bot({"dev": stage_db.url})
    reply = bot.command(f"users {BIG} --limit 100 --stage dev").message()
    assert "all of them are in the attached `users-dev-" in message_text(reply)
    file = bot.slack.wait_for_file(lambda f: f.filename == f"users-dev-{BIG}.csv")
    rows = list(csv.DictReader(io.StringIO(file.text)))
    users = stage_db.scalar(
        "SELECT count(DISTINCT mcp_server_user_id) FROM mcp_server_session WHERE mcp_server_slug = :slug", slug=BIG
    )
    assert len(rows) == min(users, 100) and users > 60
    assert "@example" in file.text and "person1@" not in file.text and "mail1@" not in file.text
    assert all(r["email"] in ("-", "") or "***@" in r["email"] for r in rows)


def test_fifty_busy_queries_with_long_text_fit_and_go_along_as_a_file(make_bot, stage_db):
    bot = make_bot({"dev": stage_db.url})
    assert "first snapshot" in bot.command("health --stage dev").text()
    with psycopg.connect(stage_db.url, autocommit=True, application_name="report-job") as conn:
        for i in range(60):  # a different number of columns each: 60 statements to pg_stat_statements
            columns = ", ".join(f"{n} AS a_rather_long_column_alias_for_reporting_{n}" for n in range(i + 12))
            for _ in range(2):
                conn.execute(f"SELECT pg_sleep(0.02), {columns}")
    bot.command("health --stage dev").text()
    reply = bot.command("slow-queries --stage dev --limit 50").message()
    shown = message_text(reply)
    assert block_chars(reply["blocks"]) < 12_000 and len(reply["blocks"]) <= 50
    assert "more: the attached `slow-queries-dev.txt` has them all" in shown
    report = bot.slack.wait_for_file(lambda f: f.filename == "slow-queries-dev.txt").text
    assert len(re.findall(r"^\d+\. ", report, re.MULTILINE)) == 50
    assert report.count("a_rather_long_column_alias_for_reporting_0,") >= 45  # ours, nearly all the busiest
    assert shown.count("a_rather_long_column_alias_for_reporting_0,") < 50


def test_an_audit_trail_longer_than_a_message_says_how_to_narrow_it(make_bot, stage_db):
    bot = make_bot({"dev": stage_db.url})
    for _ in range(100):
        bot.command('find "a-slug-that-does-not-exist-but-is-rather-long-to-make-the-line-long" --stage dev')
    bot.wait_audit(100)
    reply = bot.command("audit --limit 100", user=OPERATOR).message()
    assert reply["response_type"] == "ephemeral" and block_chars(reply["blocks"]) < 12_000
    assert "more: narrow it with `--limit` or `--stage`" in message_text(reply)
