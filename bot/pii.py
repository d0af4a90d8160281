"""Masking of personal data and scrubbing of secrets, in one place for every output.

`scrub` is what every text bound for Slack, the logs or the audit table goes through
(bot/slacktext applies it to every text object it builds): secrets out, emails masked,
whichever column or message they came from.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# An email anywhere in a text, internationalised ones included (`jürgen@bücher.de`): `\w` is Unicode.
# The domain needs a dot and a final label starting with a letter (`.de`, `.xn--p1ai`). Every repeat is
# bounded (64-character local part, 63-character labels) and a match starts only where a local part
# can start, so a long run of word characters costs linear time, not quadratic. The `@` may be
# percent-encoded, as in a URL's query string (`?email=jane%40example.com`).
_LOCAL = r"[\w.%+\-]"
EMAIL_RE = re.compile(
    rf"(?<!{_LOCAL})({_LOCAL}){_LOCAL}{{0,63}}(@|%40)((?:\w[\w\-]{{0,62}}\.){{1,8}}[^\W\d_][\w\-]{{1,62}})"
)

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
    local, sep, domain = value.strip().partition("@")
    if not sep or not local or not domain:
        return "***"
    return f"{local[0]}***@{mask_emails_in(domain)}"  # a second address in the same value is masked too


def mask_emails_in(text: str) -> str:
    """Every email-looking part of `text` masked, whatever the text is (a name, an id, a query)."""
    return EMAIL_RE.sub(lambda m: f"{m.group(1)}***{m.group(2)}{m.group(3)}", text)


def scrub_secrets(text: str) -> str:
    for pattern, replacement in SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def scrub(text: str) -> str:
    """Remove secrets and emails from free text bound for logs, Slack or the audit table."""
    return mask_emails_in(scrub_secrets(text))
