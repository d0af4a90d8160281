"""mrkdwn the bot writes, and data it shows: the difference is a type.

Slack parses `&`, `<` and `>` in mrkdwn: `<!channel>` pings a channel, `<https://x|label>` is a
disguised link, `<@U123>` a mention. Text the bot authors as markup is a `Mrkdwn`; any other
`str` is data (a slug, a reason someone typed, a server name, an application_name any database
client chooses) and is cleaned on its way in: secrets scrubbed, emails masked, `&`, `<`, `>`
escaped and backticks made harmless. `md()` formats a template authored by the bot with data
arguments; the block builders (bot/slacktext/blocks.py) escape any plain `str` they are given,
so a surface that forgets to escape shows a little too much escaping, never a live mention.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from typing import Any

from bot.pii import scrub

SLACK_USER_RE = re.compile(r"[UWB][A-Z0-9]{2,31}")
SAFE_URL_RE = re.compile(r"https://[^\s<>|`]{1,2000}")


class Mrkdwn(str):
    """mrkdwn the bot authored, its data already escaped: emitted as it is.

    Adding or joining keeps the type and escapes the plain strings it meets, so
    `Mrkdwn("*x*") + name` escapes `name`.
    """

    __slots__ = ()

    def __add__(self, other: str) -> Mrkdwn:  # type: ignore[override]
        return Mrkdwn(str.__add__(self, escape(other)))

    def __radd__(self, other: str) -> Mrkdwn:
        return Mrkdwn(str.__add__(escape(other), self))

    def join(self, parts: Iterable[str]) -> Mrkdwn:  # type: ignore[override]
        return Mrkdwn(str.join(self, (escape(p) for p in parts)))


def escape(value: object) -> Mrkdwn:
    """Data for mrkdwn: secrets scrubbed, emails masked, `&`, `<`, `>` escaped, backticks made `'`.

    A `Mrkdwn` is returned unchanged (it is escaped already).
    """
    if isinstance(value, Mrkdwn):
        return value
    text = scrub(str(value))
    return Mrkdwn(text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("`", "'"))


MENTION_RE = re.compile(r"&lt;@([UW][A-Z0-9]{2,31})&gt;")


def prose(text: object, *, keep_mentions: bool = False) -> Mrkdwn:
    """A sentence a bot/ module wrote (an error, a check's finding): its backticks and `*` are formatting;
    every `&`, `<`, `>` is escaped, secrets and emails are cleaned. With `keep_mentions`, user mentions
    (`<@U123>`) stay live: only for sentences whose mentions come from the bot's own records (who
    asked for a request), never for text that carries stage data."""
    if isinstance(text, Mrkdwn):
        return text
    escaped = scrub(str(text)).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return Mrkdwn(MENTION_RE.sub(r"<@\1>", escaped) if keep_mentions else escaped)


def plain(value: object) -> str:
    """Data for a plain_text object, which Slack shows as is: secrets scrubbed, emails masked."""
    return scrub(str(value))


class _DataFormatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, Mrkdwn):
            return value
        return escape(format(value, format_spec))


_FORMATTER = _DataFormatter()


def md(template: str, /, *args: Any, **kwargs: Any) -> Mrkdwn:
    """Format a template the bot authored (its `*`, `_`, `` ` `` are markup); every argument that is
    not `Mrkdwn` is data and is escaped. `md("*{}* rows of {}", f"{n:,}", code(table))`."""
    return Mrkdwn(_FORMATTER.vformat(template, args, kwargs))


def code(value: object) -> Mrkdwn:
    """Data as an inline code span: one line, no backtick inside to end it early."""
    text = escape(str(value).replace("\n", " ").replace("\r", " ")).strip()
    return Mrkdwn(f"`{text}`") if text else Mrkdwn("_(empty)_")


def code_block(value: object) -> Mrkdwn:
    """Data as a code block (several lines kept)."""
    text = escape(value)
    return Mrkdwn(f"```{text}```") if text.strip() else Mrkdwn("_(empty)_")


def bold(value: object) -> Mrkdwn:
    text = escape(value).strip()
    return Mrkdwn(f"*{text}*") if text else Mrkdwn("")


def italic(value: object) -> Mrkdwn:
    text = escape(value).replace("_", " ").strip()
    return Mrkdwn(f"_{text}_") if text else Mrkdwn("")


def mention(user_id: object) -> Mrkdwn:
    """`<@U123>` for a Slack user id; anything else (the bot's own actors such as `system`) in bold."""
    value = str(user_id)
    if SLACK_USER_RE.fullmatch(value):
        return Mrkdwn(f"<@{value}>")
    return bold(value)


def mentions(user_ids: Iterable[object], sep: str = ", ") -> Mrkdwn:
    return Mrkdwn(sep).join(mention(u) for u in user_ids)


def link(url: str, label: object) -> Mrkdwn:
    """A link the bot makes (a Slack permalink, a file): only https URLs; otherwise just the label."""
    shown = escape(label).replace("|", "¦")
    if not SAFE_URL_RE.fullmatch(url):
        return Mrkdwn(shown)
    return Mrkdwn(f"<{url}|{shown}>")


def lines(items: Iterable[object]) -> Mrkdwn:
    return Mrkdwn("\n").join(escape(i) for i in items)
