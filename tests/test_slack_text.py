"""The text boundary on its own: escaping, masking, scrubbing, balanced cuts, SQL literals, validators, wording."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.commands import parse
from bot.errors import CommandError
from bot.health.checks.base import safe_query_text
from bot.pii import scrub
from bot.slacktext import (
    Mrkdwn,
    button,
    code,
    confirm_dialog,
    context,
    fields,
    header,
    lines_sections,
    md,
    mention,
    message,
    plural,
    prose,
    section,
    truncate,
    view,
)
from bot.slacktext.blocks import block_chars
from bot.slacktext.limits import MESSAGE_BLOCKS, MESSAGE_BLOCKS_CHARS, SECTION_TEXT, TEXT_RECOMMENDED
from bot.slacktext.truncate import ATOM_RE, _closed_spans
from bot.sqltext import HIDDEN, blank_literals

ATTACK = "ok <!channel> <https://evil.example|Approve here> & <@U0BOSS> `x`"


def test_data_is_escaped_and_markup_is_not():
    shown = md("*{}* asked: {}", mention("UOPERATOR1"), ATTACK)
    assert shown.startswith("*<@UOPERATOR1>* asked: ")
    assert "<!channel>" not in shown and "<https://" not in shown and "<@U0BOSS>" not in shown
    assert "&lt;!channel&gt;" in shown and "&amp;" in shown and "`" not in shown.split(": ", 1)[1]
    # Every builder escapes a plain str; a Mrkdwn is kept.
    for block in (section(ATTACK), context(ATTACK), fields([("Name", ATTACK)]), *lines_sections([ATTACK])):
        assert "<!channel>" not in str(block) and "&lt;!channel&gt;" in str(block)
    assert section(Mrkdwn("<@U1> *ok*"))["text"]["text"] == "<@U1> *ok*"
    # Joining and adding keep data data.
    assert "&lt;!here&gt;" in Mrkdwn(", ").join(["<!here>", code("a")]) + "<!here>"
    assert mention("system") == "*system*" and mention("U1\n") == "*U1*"


def test_fallback_text_and_plain_text_are_cleaned():
    msg = message(ATTACK + " jürgen@bücher.de", [header("h <b> jane@example.com PGPASSWORD=hunter2")])
    assert "<!channel>" not in msg["text"] and "j***@bücher.de" in msg["text"]
    head = msg["blocks"][0]["text"]
    assert head["type"] == "plain_text" and "<b>" in head["text"]  # plain_text is shown as is, never escaped
    assert "jane@" not in head["text"] and "hunter2" not in head["text"]


def test_confirm_dialogs_are_plain_text():
    dialog = confirm_dialog("Delete for good?", "Delete `acme` on dev: 1 row.", "Delete", danger=True)
    assert {part["type"] for key, part in dialog.items() if key != "style"} == {"plain_text"}
    element = button("Delete", "delete_confirm", {"r": 1}, style="danger", confirm=dialog)
    assert element["confirm"]["text"]["text"] == "Delete `acme` on dev: 1 row."


@pytest.mark.parametrize(
    ("raw", "gone"),
    [
        ("jürgen@bücher.de wrote", "jürgen"),
        ("tracking jane.doe+mcp@example.co.uk", "jane.doe"),
        ("PGPASSWORD=hunter2 psql -h db", "hunter2"),
        ("export DB_PASSWORD=s3cr3t;", "s3cr3t"),
        ("host=db password=abc123 user=x", "abc123"),
        ('{"api_key": "k-123456"}', "k-123456"),
        ("postgresql://app:pw@db:5432/x", "app:pw"),
        ("https://user:pass@example.com/path", "user:pass"),
        ("token xoxb-1234-5678-abcdef", "xoxb-1234"),
        ("refresh xoxe.xoxp-1-abc", "xoxp-1-abc"),
        ("key AKIAIOSFODNN7EXAMPLE", "IOSFODNN7EXAMPLE"),
        ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG", "wJalrXUtnFEMI"),
    ],
)
def test_scrub_masks_emails_and_secrets_anywhere(raw, gone):
    assert gone not in scrub(raw)
    assert gone not in section(raw)["text"]["text"]


def test_scrub_leaves_ordinary_words():
    assert scrub("mcp_oauth_tokens: 5 rows; password is fine") == "mcp_oauth_tokens: 5 rows; password is fine"


def balanced(text: str) -> bool:
    """No split code span, entity, mention or link, and no formatting span opened and never closed."""
    atoms = [m.group(0) for m in ATOM_RE.finditer(text)]
    if any(a == "`" or a == "&" or a == "<" for a in atoms):
        return False
    starts = []
    position = 0
    for atom in atoms:
        starts.append(type("A", (), {"start": position, "text": atom})())
        position += len(atom)
    spans = _closed_spans(text, starts)
    openers = {i for i, a in enumerate(starts) if a.text in "*_~" and i in spans}
    dangling = [
        i
        for i, a in enumerate(starts)
        if a.text in "*_~" and i not in openers and i not in spans.values() and _opens(text, a.start)
    ]
    return not dangling


def _opens(text: str, at: int) -> bool:
    before = text[at - 1] if at else " "
    after = text[at + 1] if at + 1 < len(text) else " "
    return not before.isalnum() and not after.isspace()


PIECES = st.sampled_from(
    ["word ", "*bold words* ", "_italic_ ", "`code span here` ", "&amp; ", "&lt;x&gt; ", "<@U123>", "\n", "~s~ ", "é "]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(PIECES, min_size=1, max_size=60), st.integers(min_value=8, max_value=400))
def test_truncation_keeps_mrkdwn_balanced(pieces, limit):
    text = Mrkdwn("".join(pieces))
    cut = truncate(text, limit)
    assert len(cut) <= limit
    assert isinstance(cut, Mrkdwn)
    assert balanced(cut), cut
    if len(text) <= limit:
        assert cut == text


def test_a_long_code_span_is_cut_inside_and_closed():
    cut = truncate(Mrkdwn("query: `" + "select x from t where y = 1 " * 20 + "`"), 60)
    assert cut.count("`") == 2 and cut.endswith("…`") and len(cut) <= 60


def test_messages_stay_within_slacks_limits_whatever_they_are_given():
    lines = [md("• {} {}", code(f"table_{i}"), "x" * 200) for i in range(400)]
    msg = message("t" * 50_000, [header("x" * 500), *lines_sections(lines), *[section("y") for _ in range(80)]])
    assert len(msg["text"]) <= TEXT_RECOMMENDED
    assert len(msg["blocks"]) <= MESSAGE_BLOCKS and block_chars(msg["blocks"]) <= MESSAGE_BLOCKS_CHARS
    assert all(len(b["text"]["text"]) <= SECTION_TEXT for b in msg["blocks"] if b["type"] == "section")
    assert "did not fit" in str(msg["blocks"][-1])
    assert len(view("home", [section("z")] * 150)["blocks"]) <= 100


@pytest.mark.parametrize(
    ("sql", "kept", "gone"),
    [
        (
            "SELECT * FROM t WHERE a = E'it\\'s' AND b = 'secret-1'",
            "SELECT * FROM t WHERE a = '…' AND b = '…'",
            "secret",
        ),
        ("SELECT $tag$ pw ' $tag$, $$x$$ FROM t", "SELECT '…', '…' FROM t", "pw"),
        ("SELECT 1 -- 'quote in a comment\n, 'secret-2' /* another ' */", "SELECT … , '…'", "secret"),
        (
            "UPDATE users SET email = 'jane@example.com' WHERE id = 42",
            "UPDATE users SET email = '…' WHERE id = …",
            "jane",
        ),
        ("SELECT 'a''b', B'0101', X'ff', U&'d\\0061t', 1.5e3, $1", "SELECT '…', '…', '…', '…', …, $1", "0101"),
        ("INSERT INTO t VALUES ('cut off by track_activity_query_size", "INSERT INTO t VALUES ( '…'", "cut off"),
    ],
)
def test_literals_are_blanked_by_postgresqls_lexer(sql, kept, gone):
    assert blank_literals(sql) == kept
    assert gone not in safe_query_text(sql)


def test_query_text_that_does_not_lex_is_not_shown():
    assert blank_literals("SELECT 123abc, 'password=hunter2'") is None
    assert safe_query_text("SELECT 123abc, 'password=hunter2'") == HIDDEN


@pytest.mark.parametrize(
    "text", ["find acme\n --stage dev", "find acme --stage dev\n", "list --org acme\n --stage dev"]
)
def test_validators_match_the_whole_value(text):
    # shlex splits on the newline, so a value can only end in one when quoted
    quoted = re.sub(r"(\S+)\n", lambda m: f'"{m.group(1)}\n"', text)
    with pytest.raises(CommandError):
        parse(quoted)


def test_plural_and_prose():
    assert (plural(1, "row"), plural(0, "row"), plural(2, "query"), plural(1234, "table")) == (
        "1 row",
        "0 rows",
        "2 queries",
        "1,234 tables",
    )
    assert prose("missing <slug> for `find` & <@U1>") == "missing &lt;slug&gt; for `find` &amp; &lt;@U1&gt;"
    assert prose("only <@UOPERATOR1> can", keep_mentions=True) == "only <@UOPERATOR1> can"
