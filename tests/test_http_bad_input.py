"""The Slack endpoint under arbitrary and hostile input: never a 500, never a traceback."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import shlex
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from bot.commands import ID_RE, SLUG_RE, VERBS, Flag
from bot.console.client import sign
from bot.metrics import outbox_backlog
from bot.outbox import outbox
from bot.platform.demo_data import server_slug
from tests.conftest import APPROVER, CHANNEL, OPERATOR, SIGNING_SECRET, TEST_SPEC, VIEWER, eventually

HTTP_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
COMMAND_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
# What must never reach a person, in a reply or anywhere else the bot posts: a Python traceback,
# a stack frame, or the InternalError reply (bot/service.py), which means a command hit a bug.
REPLY_LEAKS = ("Traceback", 'File "', "something went wrong")
# Everything the bot says to people goes through one of these (bot/console/localslack.py records them).
REPLY_METHODS = ("response_url", "chat.postEphemeral", "chat.postMessage", "chat.update")
ALLOWED = {200, 400, 401, 404, 405, 411, 413, 415}
# No ':' anywhere in generated JSON strings, so no generated value can be a URL the bot would call.
SAFE_TEXT = st.text(alphabet=st.characters(blacklist_characters=":", blacklist_categories=("Cs",)), max_size=40)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | SAFE_TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(SAFE_TEXT, children, max_size=4),
    max_leaves=12,
)


def no_leak_words(value: str) -> bool:
    """Generated text must not contain the words the replies are scanned for (replies may echo it)."""
    return not any(leak.lower() in value.lower() for leak in REPLY_LEAKS)


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
            "text": draw(st.text(max_size=200).filter(no_leak_words)),
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
        payload_text = draw(st.text(max_size=80).filter(no_leak_words))
        return urlencode({"payload": payload_text}).encode(), "application/x-www-form-urlencoded"
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
    # Whatever the requests started in the background finished without a bug showing.
    assert_no_error_replies(bot)
    # The bot is still healthy afterwards and answers a normal command.
    assert "mcp-ops commands" in bot.command("help").text()


# -- well-formed, correctly signed slash commands with arbitrary text -------------------------

WORD = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=24
).filter(no_leak_words)
REAL_SLUGS = [TEST_SPEC.big_slug, server_slug(1, TEST_SPEC), server_slug(2, TEST_SPEC), "no-such-server"]
SLUG = (
    st.sampled_from([*REAL_SLUGS, "x" * 300])
    | st.sampled_from(["'; DROP TABLE mcp_servers; --", "acme%", "ünïcødé-mcp", "..", "a\\b"])
    | WORD
)
NUMBER = st.integers(min_value=-5, max_value=5000).map(str) | st.sampled_from(["0", "1e3", "-0", "9" * 30])
FLAG = st.one_of(
    st.sampled_from(["--stage dev", "--stage dev", "--stage production", "--stage nope", "--stage", "--stage=dev"]),
    st.sampled_from(["--dry-run", "--backup", "--dry-run=yes", "--help", "--", "-x"]),
    st.tuples(st.sampled_from(["--limit", "--days", "--org", "--limit="]), NUMBER).map(lambda t: " ".join(t)),
    st.tuples(st.sampled_from(["--slug", "--org"]), SLUG).map(lambda t: " ".join(t)),
    WORD.map(lambda w: f'--reason "{w}"'),
    st.sampled_from(['--reason "tidy up"', "--reason", '--reason "unterminated', "--reason ''"]),
    WORD,
)
# Real servers two times in three, so operations run past "not found" (impact, delete plans, stats).
SLUG_VALUE = (
    st.sampled_from(REAL_SLUGS[:3])
    | st.sampled_from(REAL_SLUGS)
    | st.from_regex(SLUG_RE, fullmatch=True).filter(no_leak_words)
)
REASON = st.text(min_size=1, max_size=80).filter(lambda t: t.strip() and no_leak_words(t))


def value_for(kind: str, draw: st.DrawFn, flag: Flag | None = None) -> str:
    """A value the parser accepts for a positional or flag of this kind (arbitrary within that)."""
    if kind == "slug":
        return draw(SLUG_VALUE)
    if kind == "id":
        return draw(
            st.integers(min_value=1, max_value=40).map(str) | st.from_regex(ID_RE, fullmatch=True).filter(no_leak_words)
        )
    if kind == "verb":
        return draw(st.sampled_from(sorted(VERBS)))
    if kind == "int":
        assert flag is not None
        return str(draw(st.integers(min_value=flag.minimum or 0, max_value=flag.maximum or 10_000)))
    return shlex.quote(draw(REASON))  # text: --reason "...", anything at all inside the quotes


@st.composite
def well_formed_command(draw: st.DrawFn) -> str:
    """A command the parser accepts, so the real operation runs: a verb with its positionals,
    some of its flags and, where it takes one, a stage; values are arbitrary within their kind."""
    verb = VERBS[draw(st.sampled_from(sorted(VERBS)))]
    parts = [draw(st.sampled_from([verb.name, verb.name, verb.name.upper()]))]
    for positional in verb.positionals:
        if positional.required or draw(st.booleans()):
            parts.append(value_for(positional.kind, draw))
    for flag in verb.flags:
        if draw(st.booleans()):
            parts.append(
                f"--{flag.name}" if flag.kind == "bool" else f"--{flag.name} {value_for(flag.kind, draw, flag)}"
            )
    if verb.stage == "required" or (verb.stage == "optional" and draw(st.booleans())):
        parts.append("--stage " + draw(st.sampled_from(["dev", "dev", "production"])))
    return " ".join([parts[0], *draw(st.permutations(parts[1:]))])  # options in any order


@st.composite
def command_texts(draw: st.DrawFn) -> str:
    """Mostly well-formed commands; else real or made-up verbs with odd arguments, or any text at all."""
    kind = draw(st.sampled_from(["well-formed"] * 6 + ["odd"] * 3 + ["anything"]))
    if kind == "well-formed":
        return draw(well_formed_command())
    if kind == "anything":
        return draw(st.text(max_size=300).filter(no_leak_words))
    verb = draw(st.sampled_from(sorted(VERBS)) | st.sampled_from(["HELP", "Find", "", "delete-all"]) | WORD)
    parts = [verb]
    if draw(st.booleans()):
        parts.append(draw(SLUG | NUMBER))  # <slug>, <request-id>, help's <command>
    parts.extend(draw(st.lists(FLAG, max_size=4)))
    return " ".join(parts)


def test_signed_commands_with_arbitrary_text_never_reply_with_a_bug(bot):
    """Correctly signed `/mcp` commands reach the real parser, access checks, rate limit and
    operations (every verb, on the dev and the protected production stage); whatever the
    text, the ack is clean, the later replies carry no traceback and no InternalError, and
    no audit row says `error`."""

    @COMMAND_SETTINGS
    @given(text=command_texts(), user=st.sampled_from([OPERATOR, OPERATOR, APPROVER, VIEWER]))
    def check(text: str, user: str) -> None:
        body = bot.sender.slash_body(text, user=user, channel=CHANNEL, response_url=bot.sender.new_response_url())
        status, answer = send(bot.server.events_url, body, signed_headers(body))
        assert status == 200, (text, status, answer[:200])
        assert_clean(status, answer)

    check()
    assert_no_error_replies(bot)
    outcomes = {(row.command, row.outcome) for row in bot.audit_rows()}
    # The commands went past the parser: several verbs ran for real, not only refusals.
    assert len({command for command, outcome in outcomes if outcome == "ok"}) >= 3, outcomes
    assert any(outcome == "bad_input" for _, outcome in outcomes), outcomes


def strings_in(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from strings_in(value)
    elif isinstance(node, list | tuple):
        for item in node:
            yield from strings_in(item)


def settle(bot, timeout: float = 120) -> None:
    """Wait for the background work the requests started, then (briefly) for the outbox."""
    # Runtime counts requests in flight plus jobs queued or running (what drain() waits for).
    assert eventually(lambda: bot.runtime._busy == 0, timeout), "background work did not finish"

    def backlog() -> int:
        with bot.runtime.bot_engine.connect() as conn:
            return outbox_backlog(conn)

    bot.runtime.outbox_worker.notify()
    eventually(lambda: backlog() == 0, 10)  # posts to a channel Slack refuses may stay queued: scanned below


def assert_no_error_replies(bot) -> None:
    """No reply, post or edit (delivered, or still queued in the outbox) shows a bug, and no audit row says error."""
    settle(bot)
    said: list[tuple[str, Any]] = [(c.method, c.payload) for c in list(bot.slack.calls) if c.method in REPLY_METHODS]
    with bot.runtime.bot_engine.connect() as conn:
        said += [(row.method, row.payload) for row in conn.execute(select(outbox.c.method, outbox.c.payload))]
    assert any(method == "response_url" for method, _ in said), "no asynchronous reply was checked"
    for method, payload in said:
        for piece in strings_in(payload):
            for leak in REPLY_LEAKS:
                assert leak.lower() not in piece.lower(), (method, leak, piece[:300])
    errors = [(row.command, row.args, row.detail) for row in bot.audit_rows() if row.outcome == "error"]
    assert errors == []


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
