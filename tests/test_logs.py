"""Log lines are JSON with a request id, and never carry a token, password, credentialed URL or email."""

from __future__ import annotations

import io
import json
import logging
import re
from urllib.parse import urlencode

import pytest

from bot.logs import configure_logging
from tests.conftest import BOT_TOKEN, SIGNING_SECRET, TEST_SPEC, dead_database_url, eventually

CREDENTIAL_URL = re.compile(r"[a-z][a-z0-9+.\-]*://[^\s/@*]+:[^\s/@*]+@", re.IGNORECASE)
EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")  # a masked one (j***@x.com) never matches


@pytest.fixture
def captured_logs():
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    configure_logging("DEBUG", stream)
    yield stream
    root.handlers[:], level = saved
    root.setLevel(level)


def test_log_lines_are_json_with_request_ids_and_no_secrets(make_bot, stage_db, captured_logs):
    broken = dead_database_url()  # postgresql://postgres:hunter2@127.0.0.1:<closed port>/gone
    bot = make_bot({"dev": stage_db.url, "broken": broken})
    bot.command(f"find {TEST_SPEC.big_slug} --stage dev").text()
    bot.command(f"users {TEST_SPEC.big_slug} --stage dev --limit 5").text()
    assert "unreachable" in bot.command(f"find {TEST_SPEC.big_slug} --stage broken").text()
    bot.command("find jane.doe@example.com --stage dev").text()
    bot.command("stats x --stage dev --days nope password=hunter2").text()
    bot.slack.fail("chat.postMessage", status=500, times=2)
    bot.command("help").text()
    # A forged request: refused before its body is parsed, logged without it.
    forged = urlencode(
        {"text": "jane.doe@example.com", "token": BOT_TOKEN, "response_url": "https://hooks.slack.com/commands/T1/2/s3"}
    )
    assert bot.sender.post(forged.encode(), signature="v0=forged").status == 401
    assert bot.sender.post(b"payload=%7Bnot-json", timestamp=None).status == 400
    eventually(lambda: len(bot.audit_rows()) >= 6)
    eventually(lambda: "slack delivery postponed" in captured_logs.getvalue())  # the outbox works after the ack

    lines = captured_logs.getvalue().splitlines()
    assert len(lines) > 10
    entries = [json.loads(line) for line in lines]
    for line, entry in zip(lines, entries, strict=True):
        assert {"ts", "level", "logger", "request_id", "msg"} <= entry.keys()
        for secret in ("hunter2", BOT_TOKEN, SIGNING_SECRET, "xoxb-", "hooks.slack.com/commands", "jane"):
            assert secret not in line, line
        assert not CREDENTIAL_URL.search(line), line
        assert not EMAIL.search(line), line
    # Lines written while handling a request carry its id; several requests, several ids.
    ids = {e["request_id"] for e in entries if e["request_id"] != "-"}
    assert len(ids) >= 6
    request_lines = [e for e in entries if e["logger"].startswith(("handlers", "bot.service", "slack_bolt"))]
    assert request_lines and all(e["request_id"] != "-" for e in request_lines)
    # The failures were logged, scrubbed.
    assert any(e["msg"] == "malformed Slack request" for e in entries)
    assert any(e["msg"] == "slack delivery postponed" for e in entries)
    assert any(e["msg"] == "request refused" and e.get("status") == 401 for e in entries)
    # The audit rows carry the request id of the command they record.
    audited = {r.request_id for r in bot.audit_rows()}
    assert audited <= ids | {"-"} and len(audited - {"-"}) >= 6
