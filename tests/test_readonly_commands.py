"""The read-only commands, each checked against the database's own answer."""

from __future__ import annotations

import json
import re
import time

from tests.conftest import CHANNEL, OPERATOR, TEST_SPEC, VIEWER, message_text, shown_text

BIG = TEST_SPEC.big_slug
DAY_MS = 86_400_000


def _more_button(message: dict) -> dict | None:
    for block in message.get("blocks", []):
        if block.get("type") == "actions":
            for element in block["elements"]:
                if element["action_id"] == "page_more":
                    return element
    return None


def _click_through(bot, first_message: dict, user: str = OPERATOR) -> list[dict]:
    """Press More until it disappears; return every page's message."""
    pages = [first_message]
    while (button := _more_button(pages[-1])) is not None:
        response_url = bot.sender.new_response_url()
        reply = bot.sender.block_actions(button, user=user, channel=CHANNEL, response_url=response_url)
        assert reply.status == 200
        path = response_url.split(bot.slack.base_url, 1)[1]
        pages.append(bot.slack.wait_for_call("response_url", lambda c, p=path: c.path == p)[0].payload)
        assert len(pages) < 50
    return pages


def test_help_lists_every_command(bot):
    for text in ("", "help"):
        message = bot.command(text).message()
        assert message["response_type"] == "ephemeral"
        for verb in ("find", "list", "stats", "users", "audit"):
            assert f"/mcp {verb}" in message_text(message)
    assert "--days N" in bot.command("help stats").text()


def test_find_shows_the_server_as_stored(bot, stage_db):
    row = stage_db.rows(
        "SELECT s.id, s.name, s.organization_id, o.name AS org FROM mcp_servers s "
        "JOIN organization o ON o.id = s.organization_id WHERE s.slug = :slug",
        slug=BIG,
    )[0]
    message = bot.command(f"find {BIG} --stage dev").message()
    assert message["response_type"] == "in_channel"
    text = message_text(message)
    for expected in (row.id, row.name, row.organization_id, row.org):
        assert expected in text


def test_find_unknown_slug_suggests_close_ones(bot):
    text = bot.command("find acme-analytcs-mcp --stage dev").text()
    assert "no server with slug `acme-analytcs-mcp`" in text
    assert f"`{BIG}`" in text
    suggestions = re.findall(r"`([^`]+)`", text.split("Close matches:")[1].splitlines()[0])
    assert suggestions[0] == BIG
    assert 1 <= len(suggestions) <= 5


def test_find_with_no_similar_slug_says_so_plainly(bot):
    text = bot.command("find zzzzzz --stage dev").text()
    assert "no server with slug `zzzzzz`" in text
    assert "Close matches" not in text


def test_list_pages_through_every_server_newest_first(bot, stage_db):
    truth = [
        r.slug for r in stage_db.rows("SELECT slug FROM mcp_servers ORDER BY coalesce(created_at, -1) DESC, id DESC")
    ]
    first = bot.command("list --stage dev --limit 2").message()
    assert f"{len(truth)} servers" in message_text(first)
    pages = _click_through(bot, first)
    assert len(pages) == (len(truth) + 1) // 2
    shown = [s for page in pages for s in re.findall(r"• `([^`]+)`", message_text(page))]
    assert shown == truth


def test_list_filters_by_organization(bot, stage_db):
    truth = {r.slug for r in stage_db.rows("SELECT slug FROM mcp_servers WHERE organization_id = 'org_2'")}
    text = bot.command("list --org org_2 --stage dev --limit 100").text()
    assert set(re.findall(r"• `([^`]+)`", text)) == truth
    assert f"{len(truth)} servers in organization `org_2`" in text


def test_stats_match_the_database_and_not_the_runbook_join(bot, stage_db):
    days = 7
    since = int(time.time() * 1000) - days * DAY_MS
    calls = stage_db.scalar(
        "SELECT count(*) FROM mcp_tool_calls WHERE mcp_server_id = 'srv_big' AND created_at >= :s", s=since
    )
    sessions, users = stage_db.rows(
        "SELECT count(*), count(DISTINCT mcp_server_user_id) FROM mcp_server_session "
        "WHERE mcp_server_slug = :slug AND connection_timestamp >= :s",
        slug=BIG,
        s=since,
    )[0]
    top = stage_db.rows(
        "SELECT tool_name, count(*) AS n FROM mcp_tool_calls WHERE mcp_server_id = 'srv_big' AND created_at >= :s "
        "GROUP BY tool_name ORDER BY n DESC, tool_name LIMIT 5",
        s=since,
    )
    # The runbook's analytics query: count() over tool calls LEFT JOIN sessions, i.e. one "session" per call.
    runbook_sessions = stage_db.scalar(
        "SELECT count(s.mcp_server_session_id) FROM mcp_tool_calls t LEFT JOIN mcp_server_session s "
        "ON t.mcp_server_session_id = s.mcp_server_session_id WHERE t.mcp_server_id = 'srv_big'"
    )
    text = bot.command(f"stats {BIG} --stage dev --days {days}").text()
    assert f"*Tool calls*\n{calls:,}" in text
    assert f"*Sessions*\n{sessions:,}" in text
    assert f"*Users*\n{users:,}" in text
    for rank, row in enumerate(top, 1):
        assert f"{rank}. `{row.tool_name}`: {row.n:,}" in text
    assert runbook_sessions > sessions  # the join inflates; we do not report its number
    assert f"*Sessions*\n{runbook_sessions:,}" not in text


def test_stats_of_an_idle_server_reports_last_activity(bot, stage_db):
    stage_db.execute(
        "UPDATE mcp_tool_calls SET created_at = created_at - 400::bigint * 86400000 WHERE mcp_server_id = 'srv_s1'"
    )
    stage_db.execute(
        "UPDATE mcp_server_session SET connection_timestamp = connection_timestamp - 400::bigint * 86400000 "
        "WHERE mcp_server_slug = (SELECT slug FROM mcp_servers WHERE id = 'srv_s1')"
    )
    slug = stage_db.scalar("SELECT slug FROM mcp_servers WHERE id = 'srv_s1'")
    text = bot.command(f"stats {slug} --stage dev --days 30").text()
    assert "*Tool calls*\n0" in text
    assert "no tool calls in this window" in text
    assert "*Last activity*\nnever" not in text


def test_users_are_the_servers_users_with_masked_emails(bot, stage_db):
    truth = stage_db.rows(
        "SELECT u.id, u.email FROM mcp_server_user u WHERE u.id IN "
        "(SELECT mcp_server_user_id FROM mcp_server_session WHERE mcp_server_slug = :slug)",
        slug=BIG,
    )
    first = bot.command(f"users {BIG} --stage dev --limit 10").message()
    assert f"{len(truth):,} users" in message_text(first)
    pages = _click_through(bot, first)
    shown = [uid for page in pages for uid in re.findall(r"• `([^`]+)`", message_text(page))]
    assert sorted(shown) == sorted(r.id for r in truth)
    everything = "\n".join(json.dumps(page) for page in pages)
    for row in truth:
        if row.email:
            assert row.email not in everything
            local, domain = row.email.split("@")
            assert f"{local[0]}***@{domain}" in everything


def test_audit_is_for_operators_and_approvers(bot):
    bot.command(f"find {BIG} --stage dev").message()
    refused = bot.command("audit", user=VIEWER).message()
    assert refused["response_type"] == "ephemeral"
    assert "operators and approvers only" in message_text(refused)
    bot.wait_audit(2)
    text = bot.command("audit --limit 5").text()
    assert f"find {BIG}" in text
    assert "denied" in text


def test_a_channel_bound_to_a_stage_needs_no_flag(make_bot, stage_db):
    harness = make_bot({"dev": stage_db.url, "production": stage_db.url}, CHANNEL_STAGES=f"{CHANNEL}=dev")
    assert "srv_big" in harness.command(f"find {BIG}", channel=CHANNEL).text()
    elsewhere = harness.command(f"find {BIG}", channel="COTHER0001").message()
    assert elsewhere["response_type"] == "ephemeral"
    assert "name a stage with `--stage <name>`; known stages: dev, production" in shown_text(elsewhere)
