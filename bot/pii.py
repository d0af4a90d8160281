"""Masking of personal data and scrubbing of secrets, in one place for every output.

`scrub` is what every text bound for Slack, the logs or the audit table goes through
(bot/slacktext applies it to every text object it builds): secrets out, emails masked,
whichever column or message they came from.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

# An email anywhere in a text, internationalised ones included (`jürgen@bücher.de`, `用户@例子.广告`):
# `\w` is Unicode. The domain is one of
# - dotted names whose last label starts with a letter (`.de`, `.xn--p1ai`; `163.com` too), but not a
#   version with a pre-release tag (`pkg@1.0.0-alpha.beta`);
# - an address literal (`jane@[10.0.0.1]`, `jane@[IPv6:2001:db8::1]`) or a bare IPv4 (`root@10.0.0.1`);
# - a dotless host name starting with a letter (`jane@localhost`, `ops@mailhost`), except the package tags
#   and digest names written after an `@` that are no host (`react@latest`, `image@sha256:…`).
# `pkg@1.2.3` (an npm-style spec) is not an email; neither is `@here` (no local part; it is escaped on its
# way to Slack), `<@U123>`, `user@` or SQL's `a @> b`. Every repeat is bounded (64-character local part,
# 63-character labels) and a match starts only where a local part can start, so a long run of word
# characters costs linear time, not quadratic. The `@` may be percent-encoded, as in a URL's query string
# (`?email=jane%40example.com`). Compatibility forms (an address typed in full-width letters, U+FF20 or
# U+FE6B for the `@`) and decomposed accents are found on the text's NFKC form (see `mask_emails_in`).
# The erasure's pattern (bot/erasure/identity.EMAIL_PATTERN) is deliberately narrower: it finds the emails
# a person's digest is compared with, in PostgreSQL as well; this one hides anything that looks like one.
_LOCAL = r"[\w.%+\-]"
_IPV4 = r"\d{1,3}(?:\.\d{1,3}){3}"
_DOTTED = r"(?!\d{1,20}\.\d{1,20}\.\d{1,20}[\-+])(?:\w[\w\-]{0,62}\.){1,8}[^\W\d_][\w\-]{1,62}"
_LITERAL = rf"\[(?:{_IPV4}|IPv6:[0-9A-Fa-f:.]{{2,45}})\]"
_NO_HOST = r"(?i:latest|next|beta|alpha|canary|nightly|rc|stable|lts|experimental|sha\d+|md5)(?![\w\-])"
_DOTLESS = rf"(?!{_NO_HOST})[^\W\d_][\w\-]{{0,62}}"
_ENDS = r"(?![\w\-]|\.\w)"  # not part of a longer name or version (`host.123`, `1.2.3.4.5`)
EMAIL_RE = re.compile(
    rf"(?<!{_LOCAL})({_LOCAL}){_LOCAL}{{0,63}}(@|%40)({_DOTTED}|{_LITERAL}|(?:{_IPV4}|{_DOTLESS}){_ENDS})"
)
# Characters whose NFKC form holds an `@` or a `%` (checked against all of Unicode in the tests).
AT_OR_PERCENT = frozenset("@%\ufe6a\ufe6b\uff05\uff20")
_AT_SIGNS = frozenset("@\ufe6b\uff20")

# Names of settings and fields that hold a secret: any identifier ending in one of these words,
# so `PGPASSWORD=`, `DB_PASSWORD=`, `SECRET_KEY=`, `aws_secret_access_key =` and `"api_key": "..."` all
# match (and `mcp_oauth_tokens: 5`, a table and its count, does not); `pass` only as the last part of a
# name (`db_pass`, `smtp.pass`), so `bypass=` is left alone.
_SECRET_WORDS = (
    r"(?:password|passwd|pwd|secret|token|api[_\-]?key|access[_\-]?key|private[_\-]?key|secret[_\-]?key"  # noqa: S105 - names, not a secret
    r"|signing[_\-]?key|encryption[_\-]?key|credentials?)"
)
_SECRET_NAME = rf"(?<![\w\-.])(?:[\w\-.]{{0,60}}?{_SECRET_WORDS}|[\w\-.]{{0,60}}[_\-.]pass)(?![\w\-])"
# A secret's value: quoted (to its closing quote, backslash escapes and all, or to the end of the text
# when it is never closed) or bare (up to a space or a separator; `&` ends it only before another
# `name=`, as in a URL's query string).
_QUOTED_VALUE = r"\"(?:[^\"\\]|\\.)*\"?|'(?:[^'\\]|\\.)*'?|`[^`]*`?"
_BARE_VALUE = r"(?:[^\s,;'\"`&<>|]|&(?![\w\-.]{1,60}=))+"


def _blank_value(match: re.Match[str]) -> str:
    value = match.group(3)
    quote = value[0] if value[0] in "\"'`" else ""
    closed = quote if len(value) > 1 and value.endswith(quote) else ""
    return f"{match.group(1)}{match.group(2)}{quote}***{closed}"


SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    # Slack tokens (bot, user, app, refresh, config) and webhook / response_url capability links.
    (re.compile(r"xox[a-z](?:\.xox[a-z])?-[A-Za-z0-9\-.]+"), "xox*-***"),
    (re.compile(r"xapp-[A-Za-z0-9\-]+"), "xapp-***"),
    (re.compile(r"https://hooks\.slack\.com/[^\s'\"<>|]+"), "https://hooks.slack.com/***"),
    # Database URLs lose everything after the scheme; any other URL loses its user:password@.
    (re.compile(r"\b(postgres(?:ql)?(?:\+\w+)?)://[^\s'\"<>|]+", re.IGNORECASE), r"\1://***"),
    (re.compile(r"\b([a-z][a-z0-9+.\-]{0,30})://[^\s/@'\"<>|]{1,256}@", re.IGNORECASE), r"\1://***@"),
    # `NAME=value`, `name: value`, `"name": "value"`, `name => 'value'`, for any secret-looking name.
    (
        re.compile(rf"(?i)({_SECRET_NAME})([\"']?\s*(?:=>?|:)\s*)({_QUOTED_VALUE}|{_BARE_VALUE})"),
        _blank_value,
    ),
    # SQL: `PASSWORD 'x'` (CREATE/ALTER ROLE, in an error message or a statement), `IDENTIFIED BY 'x'`.
    (re.compile(r"(?i)\b(password|identified\s+by)(\s+)('(?:[^']|'')*'?)"), _blank_value),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]+=*"), "Bearer ***"),
    (re.compile(r"(?i)\b(authorization\s*[:=]\s*(?:basic|digest|negotiate)\s+)[^\s,;'\"]+"), r"\1***"),
    # AWS access key ids, GitHub tokens, Google API keys, JSON web tokens, PEM private keys.
    (re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA)[0-9A-Z]{16}\b"), "AKIA***"),
    (re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})"), "gh*_***"),
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{35}"), "AIza***"),
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"), "***jwt***"),
    (
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.DOTALL),
        "***private key***",
    ),
)


def mask_email(value: str | None) -> str:
    """`jane@example.com` -> `j***@example.com`; anything that is not an email -> `***`."""
    if not value:
        return "-"
    value = value.strip()
    at = next((i for i, char in enumerate(value) if char in _AT_SIGNS), -1)  # a full-width `@` counts too
    local, domain = value[:at], value[at + 1 :]
    if at < 0 or not local or not domain:
        return "***"
    return f"{local[0]}***{value[at]}{mask_emails_in(domain)}"  # a second address in the same value is masked too


def _masked(match: re.Match[str]) -> str:
    return f"{match.group(1)}***{match.group(2)}{match.group(3)}"


def _folded(text: str) -> tuple[str, list[tuple[int, int]]]:
    """`text` in NFKC with its marks dropped, and for each character the span of `text` it came from.

    A base character and the marks after it are normalised together (so `u` + U+0308 is `ü`); marks that
    compose with nothing are dropped, so an address in a script with vowel signs (`हिन्दी@…`) is one run
    of word characters. A masked address keeps its original characters.
    """
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    start = 0
    for end in range(1, len(text) + 1):
        if end < len(text) and unicodedata.category(text[end]).startswith("M"):
            continue
        for char in unicodedata.normalize("NFKC", text[start:end]):
            if not unicodedata.category(char).startswith("M"):
                out.append(char)
                spans.append((start, end))
        start = end
    return "".join(out), spans


def mask_emails_in(text: str) -> str:
    """Every email-looking part of `text` masked, whatever the text is (a name, an id, a query)."""
    if text.isascii():
        return EMAIL_RE.sub(_masked, text)
    if AT_OR_PERCENT.isdisjoint(text):
        return text
    folded, spans = _folded(text)
    parts: list[str] = []
    done = 0
    for match in EMAIL_RE.finditer(folded):
        first, at, domain = (text[spans[match.start(g)][0] : spans[match.end(g) - 1][1]] for g in (1, 2, 3))
        begin = max(done, spans[match.start()][0])
        parts += [text[done:begin], first, "***", at, domain]
        done = spans[match.end() - 1][1]
    return "".join(parts) + text[done:]


def scrub_secrets(text: str) -> str:
    for pattern, replacement in SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def scrub(text: str) -> str:
    """Remove secrets and emails from free text bound for logs, Slack or the audit table."""
    return mask_emails_in(scrub_secrets(text))
