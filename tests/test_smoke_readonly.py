"""First end-to-end checks of the read-only commands against the database's own counts."""

from __future__ import annotations

from tests.conftest import TEST_SPEC, message_text


def test_find_answers_from_the_database(bot, stage_db):
    reply = bot.command(f"find {TEST_SPEC.big_slug} --stage dev")
    assert reply.http.status == 200
    text = reply.text()
    assert "srv_big" in text
    assert TEST_SPEC.big_slug in text


def test_stats_counts_sessions_without_join_inflation(bot, stage_db):
    truth_sessions = stage_db.scalar(
        "SELECT count(*) FROM mcp_server_session WHERE mcp_server_slug = :s", s=TEST_SPEC.big_slug
    )
    text = message_text(bot.command(f"stats {TEST_SPEC.big_slug} --stage dev --days 3650").message())
    assert f"*Sessions*\n{truth_sessions:,}" in text
