"""The Slack endpoint under arbitrary and hostile input: never a 500, never a traceback."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import time
from urllib.parse import urlencode, urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.console.client import sign
from tests.conftest import CHANNEL, OPERATOR, SIGNING_SECRET, eventually

HTTP_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
ALLOWED = {200, 400, 401, 404, 405, 411, 413, 415}
# No ':' anywhere in generated JSON strings, so no generated value can be a URL the bot would call.
SAFE_TEXT = st.text(alphabet=st.characters(blacklist_characters=":", blacklist_categories=("Cs",)), max_size=40)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | SAFE_TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(SAFE_TEXT, children, max_size=4),
    max_leaves=12,
)
HEADER_NAME = st.from_regex(r"\AX-[A-Za-z0-9-]{1,20}\Z")
HEADER_VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)


def send(url: str, body: bytes, headers: dict[str, str], *, chunked: bool = False) -> tuple[int, str]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("POST", parts.path, body=body, headers=headers, encode_chunked=chunked)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


def assert_clean(status: int, text: str) -> None:
    assert status in ALLOWED, (status, text[:200])
    for leak in ("Traceback", 'File "', "psycopg", "sqlalchemy", "Exception"):
        assert leak not in text


@st.composite
def bodies(draw: st.DrawFn, response_url: str) -> tuple[bytes, str]:
    kind = draw(st.sampled_from(["bytes", "form", "slash", "payload-json", "payload-text", "json"]))
    if kind == "bytes":
        return draw(st.binary(max_size=600)), draw(st.sampled_from(["application/x-www-form-urlencoded", "text/plain"]))
    if kind == "form":
        fields = draw(st.dictionaries(SAFE_TEXT, SAFE_TEXT, max_size=6))
        fields["response_url"] = response_url
        return urlencode(fields).encode(), "application/x-www-form-urlencoded"
    if kind == "slash":
        fields = {
            "command": draw(st.sampled_from(["/mcp", "/other", ""])),
            "text": draw(st.text(max_size=200)),
            "user_id": draw(st.sampled_from([OPERATOR, "", "UVIEWER001", "x" * 40])),
            "channel_id": draw(st.sampled_from([CHANNEL, "", "C0"])),
            "team_id": "T0LOCAL",
            "response_url": response_url,
        }
        return urlencode(fields).encode(), "application/x-www-form-urlencoded"
    if kind == "payload-json":
        payload = draw(JSON)
        if isinstance(payload, dict):
            payload["response_url"] = response_url
            if draw(st.booleans()):
                payload["type"] = draw(st.sampled_from(["block_actions", "view_submission", "shortcut", "x"]))
                payload["actions"] = [{"action_id": "page_more", "value": draw(SAFE_TEXT)}]
        return urlencode({"payload": json.dumps(payload)}).encode(), "application/x-www-form-urlencoded"
    if kind == "payload-text":
        return urlencode({"payload": draw(st.text(max_size=80))}).encode(), "application/x-www-form-urlencoded"
    return json.dumps(draw(JSON)).encode(), "application/json"


@st.composite
def requests(draw: st.DrawFn, response_url: str) -> tuple[bytes, dict[str, str]]:
    body, content_type = draw(bodies(response_url))
    now = int(time.time())
    timestamp = draw(st.sampled_from(["now", "now", "now", "old", "future", "junk", "missing"]))
    ts_value = {"now": str(now), "old": str(now - 400), "future": str(now + 400), "junk": draw(HEADER_VALUE)}
    headers = {"Content-Type": draw(st.sampled_from([content_type, content_type, "application/json", ""]))}
    if timestamp != "missing":
        headers["X-Slack-Request-Timestamp"] = ts_value[timestamp]
    signature = draw(st.sampled_from(["valid", "valid", "forged", "missing"]))
    if signature == "valid" and timestamp != "missing":
        base = b"v0:" + ts_value[timestamp].encode() + b":" + body
        headers["X-Slack-Signature"] = "v0=" + hmac.new(SIGNING_SECRET.encode(), base, hashlib.sha256).hexdigest()
    elif signature == "forged":
        headers["X-Slack-Signature"] = draw(st.sampled_from(["v0=" + "ab" * 32, "", draw(HEADER_VALUE)]))
    headers.update(draw(st.dictionaries(HEADER_NAME, HEADER_VALUE, max_size=3)))
    return body, headers


def test_arbitrary_requests_never_get_a_500_or_a_traceback(bot):
    response_url = bot.sender.new_response_url()

    @HTTP_SETTINGS
    @given(requests(response_url))
    def check(request: tuple[bytes, dict[str, str]]) -> None:
        body, headers = request
        assert_clean(*send(bot.server.events_url, body, headers))

    check()
    # The bot is still healthy afterwards and answers a normal command.
    assert "mcp-ops commands" in bot.command("help").text()


def signed_headers(body: bytes, timestamp: int | None = None, content_type: str = "application/x-www-form-urlencoded"):
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": str(ts),
        "X-Slack-Signature": sign(SIGNING_SECRET, body, ts),
    }


def test_replayed_stale_or_future_requests_are_refused(bot):
    body = bot.sender.slash_body("help", user=OPERATOR, channel=CHANNEL)
    for age in (301, 3600, -301):
        status, text = send(bot.server.events_url, body, signed_headers(body, int(time.time()) - age))
        assert status == 401, age
        assert_clean(status, text)
    assert bot.audit_rows() == []
    # Inside the five minutes, the same request is fine.
    assert send(bot.server.events_url, body, signed_headers(body, int(time.time()) - 240))[0] == 200


def test_bodies_over_one_megabyte_are_refused(bot):
    body = bot.sender.slash_body("help " + "a" * (1024 * 1024), user=OPERATOR, channel=CHANNEL)
    for chunked in (False, True):  # with a Content-Length, and streamed without one
        status, text = send(bot.server.events_url, body, signed_headers(body), chunked=chunked)
        assert status == 413, chunked
        assert_clean(status, text)
    assert bot.audit_rows() == []


def test_forged_or_missing_signatures_are_refused(bot):
    body = bot.sender.slash_body("help", user=OPERATOR, channel=CHANNEL)
    for signature in ("v0=" + "0" * 64, "v1=abc", "", sign("another-secret", body, int(time.time()))):
        assert send(bot.server.events_url, body, signed_headers(body) | {"X-Slack-Signature": signature})[0] == 401
    for drop in ("X-Slack-Signature", "X-Slack-Request-Timestamp"):
        headers = {k: v for k, v in signed_headers(body).items() if k != drop}
        assert send(bot.server.events_url, body, headers)[0] == 401
    assert bot.audit_rows() == []


def test_a_signed_interaction_with_a_malformed_payload_is_a_4xx(bot):
    for payload in ("{not json", "", "[1, 2", '"just a string"', "[]", "null", "{}"):
        body = urlencode({"payload": payload}).encode()
        status, text = send(bot.server.events_url, body, signed_headers(body))
        assert 400 <= status < 500, (payload, status)
        assert_clean(status, text)


def test_a_button_with_a_garbled_value_gets_a_clear_reply(bot):
    reply_url = bot.sender.new_response_url()
    element = {"action_id": "page_more", "value": "{garbled"}
    status = bot.sender.block_actions(element, user=OPERATOR, channel=CHANNEL, response_url=reply_url).status
    assert status == 200
    path = urlsplit(reply_url).path
    answer = bot.slack.wait_for_call("response_url", lambda c: c.path == path)[0].payload
    assert "that button's data is not readable" in answer["text"]
    assert eventually(lambda: [r.outcome for r in bot.audit_rows()] == ["bad_input"])
