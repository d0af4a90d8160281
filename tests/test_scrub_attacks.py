"""Attack strings against the masking, the scrubber and the literal blanker (bot/pii.py, bot/sqltext.py).

Each value passes through the one text boundary (bot/slacktext), so a leak here is a leak on every surface;
the surfaces themselves are attacked on the real endpoint in tests/test_text_injection.py.
"""

from __future__ import annotations

import sys
import unicodedata

import pytest

from bot.erasure.identity import EMAIL_IN_TEXT
from bot.health.checks.base import safe_query_text
from bot.pii import AT_OR_PERCENT, mask_email, scrub
from bot.slacktext import section
from bot.sqltext import HIDDEN, blank_literals


@pytest.mark.parametrize(
    ("raw", "shown", "gone"),
    [
        ("jürgen@bücher.de", "j***@bücher.de", "jürgen"),
        ("a.b+c@sub.example.co.uk", "a***@sub.example.co.uk", "a.b+c"),
        ("JANE.DOE@EXAMPLE.COM", "J***@EXAMPLE.COM", "JANE.DOE"),
        ("\u0391\u0392\u0393@παράδειγμα.ελ", "\u0391***@παράδειγμα.ελ", "\u0392\u0393"),  # Greek capitals
        ("https://x.example/u?email=jane@example.com&x=1", "email=j***@example.com&x=1", "jane"),
        ("https://x.example/u?email=jane.doe%40example.com&x=1", "email=j***%40example.com&x=1", "jane.doe"),
        ("'jane@example.com'", "'j***@example.com'", "jane"),
        ('"jane@example.com"', '"j***@example.com"', "jane"),
        ("<mailto:jane@example.com|jane@example.com>", "<mailto:j***@example.com|j***@example.com>", "jane"),
    ],
)
def test_emails_are_masked_whatever_surrounds_them(raw, shown, gone):
    assert shown in scrub(raw) and gone not in scrub(raw)
    assert gone not in section(raw)["text"]["text"]


@pytest.mark.parametrize(
    ("raw", "shown", "gone"),
    [
        # Dotless domains, address literals and bare IPv4 addresses.
        ("mail jane@localhost now", "mail j***@localhost now", "jane"),
        ("write to jane@localhost.", "write to j***@localhost.", "jane"),
        ("jane@localhost:25", "j***@localhost:25", "jane"),
        ("jane@[10.0.0.1]", "j***@[10.0.0.1]", "jane"),
        ("jane@[IPv6:2001:db8::1]", "j***@[IPv6:2001:db8::1]", "jane"),
        ("root.admin@10.0.0.1", "r***@10.0.0.1", "root.admin"),
        # Unicode compatibility forms, found on the NFKC form, shown in the original characters.
        (
            "\uff4a\uff41\uff4e\uff45\uff20\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45\uff0e\uff43\uff4f\uff4d",
            "\uff4a***\uff20\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45\uff0e\uff43\uff4f\uff4d",
            "\uff41\uff4e\uff45",
        ),
        ("jane\uff20example.com", "j***\uff20example.com", "jane"),
        ("jane\ufe6bexample.com", "j***\ufe6bexample.com", "jane"),
        ("jane.doe\uff05\uff14\uff10example.com", "j***\uff05\uff14\uff10example.com", "jane.doe"),
        ("mailto:\uff2a\uff21\uff2e\uff25@example.com", "mailto:\uff2a***@example.com", "\uff21\uff2e\uff25"),
        # Internationalised addresses, decomposed accents and vowel signs included; punycode.
        ("ju\u0308rgen@bu\u0308cher.de", "j***@bu\u0308cher.de", "rgen"),
        ("用户@例子.广告", "用***@例子.广告", "用户@"),
        ("jürgen@xn--bcher-kva.de", "j***@xn--bcher-kva.de", "jürgen"),
        ("jane@bücher.xn--p1ai", "j***@bücher.xn--p1ai", "jane"),
        ("अमित@उदाहरण.भारत", "अ***@उदाहरण.भारत", "मित"),
        ("li.wei@163.com", "l***@163.com", "li.wei"),
        # Inside URLs, query strings, JSON values, percent-encoded.
        ("https://x.example/u?who=jane%40localhost&x=1", "who=j***%40localhost&x=1", "jane"),
        ('{"user": {"email": "jane@localhost"}, "n": 1}', '{"user": {"email": "j***@localhost"}, "n": 1}', "jane"),
        ("/v1/users/jane%40example.com/sessions", "/v1/users/j***%40example.com/sessions", "jane"),
        ("<mailto:jane@[10.0.0.1]|jane@[10.0.0.1]>", "<mailto:j***@[10.0.0.1]|j***@[10.0.0.1]>", "jane"),
    ],
)
def test_dotless_literal_and_compatibility_form_emails_are_masked(raw, shown, gone):
    assert shown in scrub(raw), scrub(raw)
    assert gone not in scrub(raw)
    assert gone not in section(raw)["text"]["text"]


@pytest.mark.parametrize(
    "text",
    [
        "@here and @channel, <@U123> and <@U123|jane>, <!subteam^S1>",
        "user@ alone, @ alone, a@ b",
        "SELECT a @> b, a<@b, tsv@@q, tsv @@ q, @ -5, @-@ path",
        "pkg@1.2.3, name@1.2.3, @scope/pkg@1.2.3, pkg@^1.2.0, pkg@~1.2, pkg@>=1",
        "pkg@1.0.0-alpha.beta, pkg@1.0.0+build.sha",
        "react@latest, typescript@next, node@lts, pkg@beta, pkg@canary",
        "example.com/mod@v1.2.3, image@sha256:0123abcd, HEAD@{1}, main@{upstream}",
        "postgresql@16-main, \uff50\uff4b\uff47\uff20\uff11\uff0e\uff12\uff0e\uff13",
        "plain ümlaut text with 100% of rows and 40% cpu",
    ],
)
def test_what_only_looks_a_bit_like_an_email_stays(text):
    assert scrub(text) == text


def test_every_address_the_erasure_finds_is_masked_too():
    """The erasure's pattern finds a person's addresses (a narrower job); masking hides a superset."""
    samples = ["jane@example.com", "jürgen@bücher.de", "用户@例子.广告", "a.b+c%d@x-y.co.uk", "Zoë.ÜNAL@Exämple.de"]
    for sample in samples:
        found = EMAIL_IN_TEXT.search(f"x {sample} y")
        assert found and found.group() == sample
        assert sample not in scrub(f"x {sample} y") and "***" in scrub(sample)


def test_the_signs_checked_before_folding_are_all_that_fold_to_at_or_percent():
    folding = {
        char
        for char in map(chr, range(sys.maxunicode + 1))
        if not 0xD800 <= ord(char) < 0xE000 and {"@", "%"} & set(unicodedata.normalize("NFKC", char))
    }
    assert folding == AT_OR_PERCENT


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("PGPASSWORD=hunter2 psql", "PGPASSWORD=*** psql"),
        ("DB_PASSWORD=hunter2", "DB_PASSWORD=***"),
        ("password: hunter2", "password: ***"),
        ('{"password": "hunter2"}', '{"password": "***"}'),
        ("export PGPASSWORD='hunter2 with spaces' && psql", "export PGPASSWORD='***' && psql"),
        ('password="hunter2 \\" still secret" next', 'password="***" next'),
        ("PGPASSWORD='never closed hunter2", "PGPASSWORD='***"),
        ("password=hun&ter2 user=x", "password=*** user=x"),
        ("?password=hunter2&user=x", "?password=***&user=x"),
        ("SECRET_KEY=hunter2", "SECRET_KEY=***"),
        ("db_pass=hunter2 bypass=1", "db_pass=*** bypass=1"),
        ("postgresql://app:hunter2@db:5432/x", "postgresql://***"),
        ("redis://:hunter2@cache:6379", "redis://***@cache:6379"),
        ("DATABASE_URL=postgres://u:hunter2@h/db", "DATABASE_URL=postgres://***"),
        ("ALTER ROLE app PASSWORD 'hunter2'", "ALTER ROLE app PASSWORD '***'"),
        ("CREATE USER app WITH ENCRYPTED PASSWORD 'hun''ter2'", "CREATE USER app WITH ENCRYPTED PASSWORD '***'"),
        ("Authorization: Basic aHVudGVyMjpodW50ZXIy", "Authorization: Basic ***"),
        ("token ghp_hunter2hunter2hunter2hunter2hunter2", "token gh*_***"),
    ],
)
def test_secrets_are_scrubbed_to_their_end(raw, shown):
    assert scrub(raw) == shown
    assert "hunter2" not in section(raw)["text"]["text"] and "ter2" not in scrub(raw)


def test_an_email_column_holding_two_addresses_masks_both():
    assert mask_email("jane@example.com, bob@example.org") == "j***@example.com, b***@example.org"
    assert mask_email(" jane@example.com") == "j***@example.com"
    assert mask_email("not an email") == "***"
    assert mask_email("jane@localhost") == "j***@localhost"
    assert mask_email("\uff4a\uff41\uff4e\uff45\uff20x.example") == "\uff4a***\uff20x.example"


def test_ordinary_words_stay():
    text = "checks pass: 5; bypass=1; basic understanding; mcp_oauth_tokens: 5 rows; password is fine"
    assert scrub(text) == text


def test_scrubbing_stays_linear_on_hostile_input():
    hostile = ["a" * 100_000, "password=" + '"' * 50_000, "x@" * 30_000, "a." * 50_000 + "@", "%40" * 30_000]
    hostile += [
        "a@" + "1" * 100_000,
        "\uff58\uff20" * 30_000,
        "é@" * 30_000,
        "\u0301" * 100_000 + "@",
        "ü." * 50_000 + "@",
    ]
    # Catastrophic backtracking would hang here until pytest-timeout fails the test; no stopwatch needed.
    for text in hostile:
        assert isinstance(scrub(text + " token xoxb-1-2-3"), str)
    assert scrub("a" * 100_000 + " jane@example.com").endswith(" j***@example.com")


@pytest.mark.parametrize(
    ("sql", "kept"),
    [
        ("SELECT * FROM t WHERE a = E'\\'' AND tok = 'hunter2'", "SELECT * FROM t WHERE a = '…' AND tok = '…'"),
        ("SELECT E'\\\\', 'hunter2', e'\\x41hunter2'", "SELECT '…', '…', '…'"),
        ("SELECT $tag$hunter2$tag$, $$hunter2$$, $_$hunter2$_$", "SELECT '…', '…', '…'"),
        ("SELECT $q$ a $b$ hunter2 $b$ $q$", "SELECT '…'"),
        ("SELECT U&'d\\0061t hunter2' UESCAPE '!'", "SELECT '…' UESCAPE '…'"),
        ("SELECT B'1010', X'DEADBEEF', 0x1F, 1_000", "SELECT '…', '…', …, …"),
        ("SELECT 1 -- hunter2 'x\nFROM t /* hunter2 ' */ WHERE x = 'hunter2'", "SELECT … FROM t WHERE x = '…'"),
        ("SELECT /* nested /* c */ hunter2 */ 1", "SELECT …"),
        ("SELECT 'a''hunter2'", "SELECT '…'"),
        ("SELECT 'a'\n'hunter2'", "SELECT '…'"),
        ("SELECT 'cut off hunter2", "SELECT '…'"),
        ("SELECT $a$ cut off hunter2", "SELECT '…'"),
        ("SELECT 1, /* cut off hunter2", "SELECT …, '…'"),
        ("ALTER ROLE app PASSWORD 'hunter2'", "ALTER ROLE app PASSWORD '…'"),
    ],
)
def test_every_literal_and_comment_is_blanked(sql, kept):
    assert blank_literals(sql) == kept
    assert "hunter2" not in safe_query_text(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 0x'hunter2'",  # the scanner refuses it
        "SELECT 123abc, 'hunter2'",
        "SELECT \x00 'hunter2'",
        # With standard_conforming_strings off a backslash escapes the quote: there this is one literal,
        # `' hunter2 `, and the scanner (which reads it as on) would show hunter2 as code.
        "SELECT '\\' hunter2 '",
        "SELECT 'it\\'s hunter2'",
    ],
)
def test_text_the_scanner_cannot_settle_is_not_shown(sql):
    assert blank_literals(sql) is None
    assert safe_query_text(sql) == HIDDEN
