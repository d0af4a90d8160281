"""Attacks on every surface: markup and mentions in data stay text, emails are masked wherever they come from.

Real endpoint, signed requests, real PostgreSQL, the fake Slack (which also refuses any payload with a
live `<!channel>`, `<!here>` or foreign link: bot/console/payloads.py).
"""

from __future__ import annotations

import html
import threading
import time
from typing import Any

import psycopg
import pytest

from tests.conftest import (
    ALERT_CHANNEL,
    APPROVER,
    AUDIT_CHANNEL,
    CHANNEL,
    OPERATOR,
    TEST_SPEC,
    message_text,
)
from tests.deletion_support import press, request_message, start_delete, wait_state, wait_update
from tests.health_support import health_factory

BIG = TEST_SPEC.big_slug
REASON = "ok <!channel> <https://evil.example|Approve here>"
LIVE = ("<!channel>", "<!here>", "<!everyone>", "<https://evil", "<@U0BOSS>")


def slack_text(reason: str) -> str:
    """Slack sends `&`, `<`, `>` of a slash command's text HTML-escaped."""
    return html.escape(reason, quote=False)


def mrkdwn_of(payload: dict[str, Any]) -> str:
    """What Slack parses as mrkdwn: the fallback text and every mrkdwn text object (plain_text is shown as is)."""
    return message_text(payload, kinds=("mrkdwn",))


def assert_inert(payload: dict[str, Any], *escaped: str) -> str:
    parsed = mrkdwn_of(payload)
    assert not [m for m in LIVE if m in parsed], parsed
    shown = message_text(payload)
    for part in escaped:
        assert part in shown, (part, shown)
    return shown


@pytest.fixture
def prod(make_bot, stage_db):
    return make_bot({"dev": stage_db.url, "production": stage_db.url})


def test_an_operators_reason_is_text_in_the_audit_channel_the_request_app_home_and_lists(prod):
    request_id = start_delete(prod, stage="production", extra=f'--reason "{slack_text(REASON)}"')
    escaped = "&lt;!channel&gt; &lt;https://evil.example|Approve here&gt;"
    # The request's message, where approvers decide.
    assert_inert(request_message(prod, request_id), escaped)
    # The audit channel: every line about it.
    posts = prod.slack.wait_for(
        lambda calls: [c for c in calls if c.payload.get("channel") == AUDIT_CHANNEL and "!channel" in str(c.payload)]
    )
    for post in posts:
        assert_inert(post.payload, "`delete ", "&lt;!channel&gt;")
    assert all(not [m for m in LIVE if m in mrkdwn_of(c.payload)] for c in prod.audit_posts())
    # An approver's App Home, /mcp pending and /mcp audit.
    prod.sender.event({"type": "app_home_opened", "user": APPROVER, "tab": "home"})
    [home] = prod.slack.wait_for_call("views.publish", lambda c: c.payload.get("user_id") == APPROVER)
    assert_inert({"blocks": home.payload["view"]["blocks"]}, escaped)
    assert_inert(prod.command("pending", user=APPROVER).message(), "&lt;!channel&gt;")
    assert_inert(prod.command("audit --limit 5", user=OPERATOR).message(), "&lt;!channel&gt;")


def test_markup_and_emails_in_server_names_and_distinct_ids(make_bot, stage_db):
    stage_db.execute(
        "UPDATE mcp_servers SET name = :name WHERE slug = :slug",
        name="Acme <!here> & `co` for jürgen@bücher.de, ops.team@localhost",
        slug=BIG,
    )
    users = stage_db.rows(
        "SELECT id FROM mcp_server_user WHERE id IN (SELECT mcp_server_user_id FROM mcp_server_session "
        "WHERE mcp_server_slug = :slug) ORDER BY coalesce(first_seen_at, -1) DESC, id DESC LIMIT 4",
        slug=BIG,
    )
    # distinct_id is whatever an MCP client sends: a dotless domain, an address literal, full-width forms.
    distinct_ids = [
        "tracker.person@example.org",
        "root.admin@localhost",
        "ops.pager@[10.0.0.1]",
        "\uff4a\uff41\uff4e\uff45\uff20\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45\uff0e\uff43\uff4f\uff4d",
    ]
    for (user,), distinct_id in zip(users, distinct_ids, strict=True):
        stage_db.execute("UPDATE mcp_server_user SET distinct_id = :d WHERE id = :id", d=distinct_id, id=user)
    bot = make_bot({"dev": stage_db.url})
    found = bot.command(f"find {BIG} --stage dev").message()
    shown = assert_inert(found, "&lt;!here&gt; &amp; 'co' for j***@bücher.de, o***@localhost")
    assert "jürgen" not in shown and "jürgen" not in found["text"] and "ops.team" not in found["text"]
    listed = bot.command("list --stage dev").message()
    assert "jürgen" not in message_text(listed) and "&lt;!here&gt;" in message_text(listed)
    shown_users = message_text(bot.command(f"users {BIG} --stage dev --limit 100").message())
    for kept in ("t***@example.org", "r***@localhost", "o***@[10.0.0.1]", "\uff4a***\uff20\uff45\uff58"):
        assert kept in shown_users, (kept, shown_users)
    for gone in ("tracker.person", "root.admin", "ops.pager", "\uff41\uff4e\uff45"):
        assert gone not in shown_users


def test_usage_lines_and_errors_escape_their_placeholders(make_bot, stage_db):
    bot = make_bot({"dev": stage_db.url})
    ack = bot.command("find --stage dev").ack
    assert ack is not None
    shown = message_text(ack)
    assert "missing &lt;slug&gt;" in shown and "/mcp find &lt;slug&gt; --stage &lt;stage&gt;" in shown
    assert "<slug>" not in shown and "<stage>" not in shown
    helped = message_text(bot.command("help").message())
    assert "&lt;request-id&gt;" in helped and "<request-id>" not in helped


def test_application_name_and_query_text_of_an_alert(bot_db_url, fake_slack, stage_db):
    """A long-running query whose client chose a hostile application_name and hides a secret behind E'\\''."""
    app = "<!here> & `x` jürgen@bücher.de"
    query = "SELECT pg_sleep(4), E'it\\'s', 'PGPASSWORD=hunter2 jane@example.com' /* ' */"

    def run() -> None:
        with psycopg.connect(stage_db.url, autocommit=True, application_name=app) as conn:
            conn.execute(query)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        factory = health_factory(bot_db_url, fake_slack)
        make = next(factory)
        health = make({"dev": stage_db.url}, LONG_QUERY_SECONDS="1")
        deadline = time.monotonic() + 3.5
        posts: list[Any] = []
        while not posts and time.monotonic() < deadline:
            time.sleep(0.3)
            health.run("activity")
            posts = [p for p in health.posts(ALERT_CHANNEL) if "query running" in message_text(p.payload)]
    finally:
        thread.join()
        next(factory, None)
    assert posts, "the long-running query was not alerted"
    payload = posts[0].payload
    shown = assert_inert(payload, "&lt;!here&gt; &amp;")
    assert payload["text"].count("&lt;!here&gt;") == 1  # the fallback text too
    for secret in ("hunter2", "jane@", "jürgen", "it\\'s"):
        assert secret not in shown
    assert "pg_sleep(…), '…', '…'" in shown


def test_a_server_reaching_a_table_named_like_markup(make_bot, stage_db):
    """Table names are data too: an impact report over a table called `a<b>&c` stays inert."""
    stage_db.execute(
        'CREATE TABLE "notes<!here>&x" (id text PRIMARY KEY, server_id text REFERENCES mcp_servers(id) '
        "ON DELETE CASCADE); INSERT INTO \"notes<!here>&x\" VALUES ('n1', 'srv_big')"
    )
    bot = make_bot({"dev": stage_db.url})
    reply = bot.command(f"impact {BIG} --stage dev").message(timeout=30)
    assert_inert(reply, "notes&lt;!here&gt;&amp;x")
    file = bot.slack.wait_for_file(lambda f: f.filename.startswith("impact-") and f.channel == CHANNEL)
    assert "notes<!here>&x" in file.text  # a file is not parsed: it shows the name as it is


def test_a_rejection_reason_typed_in_the_form_is_text_everywhere(prod):
    """A modal's value arrives raw (not HTML-escaped like a slash command's text)."""
    request_id = start_delete(prod, stage="production", extra='--reason "cleanup"')
    press(prod, request_id, "Reject", APPROVER)
    view = prod.slack.wait_for_call("views.open")[0].payload["view"]
    reason = "no <!channel> <@U0BOSS> <https://evil.example|see here> PGPASSWORD=hunter2 jürgen@bücher.de"
    value = {"reason": {"reason": {"type": "plain_text_input", "value": reason}}}
    assert prod.sender.view_submission(view, value, user=APPROVER).status == 200
    assert wait_state(prod, request_id, {"rejected"}).state == "rejected"
    shown = assert_inert(wait_update(prod, request_id, ": rejected"), "no &lt;!channel&gt; &lt;@U0BOSS&gt;")
    assert "hunter2" not in shown and "jürgen" not in shown and "PGPASSWORD=***" in shown
    posts = prod.slack.wait_for(
        lambda calls: [c for c in calls if c.payload.get("channel") == AUDIT_CHANNEL and "reject" in str(c.payload)]
    )
    for post in posts:
        assert_inert(post.payload)
        assert "hunter2" not in str(post.payload) and "jürgen" not in str(post.payload)
    rows = [r for r in prod.audit_rows() if r.outcome == "rejected"]
    assert rows and "hunter2" not in str(rows) and "jürgen" not in str(rows)
