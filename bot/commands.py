"""Parsing `/mcp` text: `parse` turns what Slack sends into a ParsedCommand, checked against bot/verbs.py.

It raises CommandError with a message and the verb's usage; it never raises anything else, whatever the
input. The verb table lives in bot/verbs.py (one job each); its names are re-exported here for callers.
"""

from __future__ import annotations

import difflib
import html
import re
import shlex
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.erasure.identity import identifier_label
from bot.errors import CommandError
from bot.verbs import (
    LIMIT,
    VERBS,
    ArgKind,
    Flag,
    FlagKind,
    Positional,
    StageUse,
    Verb,
    overview,
    register,
    usage_hint,
)

__all__ = [
    "FLAG_RE",
    "ID_RE",
    "LIMIT",
    "MAX_TEXT_CHARS",
    "MAX_TOKEN_CHARS",
    "SLUG_RE",
    "SMART_QUOTES",
    "STAGE_RE",
    "VERBS",
    "ArgKind",
    "Flag",
    "FlagKind",
    "ParsedCommand",
    "Positional",
    "StageUse",
    "Verb",
    "control_character",
    "overview",
    "parse",
    "register",
    "typed_text",
    "usage_hint",
]

MAX_TEXT_CHARS = 4000
MAX_TOKEN_CHARS = 256
SLUG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}\Z")
STAGE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}\Z")
FLAG_RE = re.compile(r"^--([a-z][a-z0-9-]{0,30})(?:=(.*))?\Z", re.DOTALL | re.IGNORECASE)
SMART_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})
# What a Mac or a phone types for `--` (smart punctuation): `—stage` reads as `--stage`.
SMART_DASH_FLAG = re.compile(r"^[\u2013\u2014](?=[A-Za-z])")
TYPED_WHITESPACE = "\t\n\r"


def typed_text(text: str) -> str:
    """Text as a person meant to type it: invisible format characters (zero-width spaces, joiners,
    direction overrides, byte-order marks: Unicode category Cf) dropped, other spaces (no-break,
    thin, ideographic) made plain spaces. Pasted commands carry them, and an override can make
    text read differently in the audit channel than it is."""
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if category == "Cf":
            continue
        kept.append(" " if category in ("Zs", "Zl", "Zp") else char)
    return "".join(kept)


def control_character(text: str) -> str | None:
    """The first control character (NUL, ESC, ...; not tab or newline) in `text` as `U+0000`, or None."""
    for char in text:
        if unicodedata.category(char) == "Cc" and char not in TYPED_WHITESPACE:
            return f"U+{ord(char):04X}"
    return None


@dataclass(frozen=True)
class ParsedCommand:
    verb: Verb
    args: Mapping[str, str] = field(default_factory=dict)
    flags: Mapping[str, Any] = field(default_factory=dict)
    stage: str | None = None

    def canonical(self, *, include_stage: bool = True) -> str:
        """The command as it parses back to itself: quoted, no secrets by construction (see `shown`)."""
        return self._text(include_stage=include_stage, personal=False)

    def shown(self, *, include_stage: bool = True) -> str:
        """The command as the audit log shows it: `canonical`, with a person's identifier as its digest label."""
        return self._text(include_stage=include_stage, personal=True)

    def _text(self, *, include_stage: bool, personal: bool) -> str:
        parts = [self.verb.name]
        kinds = {pos.name: pos.kind for pos in self.verb.positionals}
        parts += [
            identifier_label(v) if personal and kinds.get(k) == "person" else shlex.quote(v)
            for k, v in self.args.items()
        ]
        for name, value in self.flags.items():
            flag = self.verb.flag(name)
            if flag is None or value == flag.default:
                continue
            if flag.kind == "bool":
                parts.append(f"--{name}")
            elif str(value).startswith("-"):  # `--reason --x` would read --x as the next option
                parts.append(f"--{name}={shlex.quote(str(value))}")
            else:
                parts.append(f"--{name} {shlex.quote(str(value))}")
        if self.stage and include_stage:
            parts.append(f"--stage {self.stage}")
        return " ".join(parts)


def _clean_shown(value: str, limit: int = 40) -> str:
    shown = value.replace("`", "'").replace("\n", " ")
    return shown[:limit] + ("…" if len(shown) > limit else "")


def _unknown_verb(word: str) -> CommandError:
    close = difflib.get_close_matches(word, list(VERBS), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(f'`{c}`' for c in close)}?" if close else ""
    return CommandError(f"unknown command `{_clean_shown(word)}`.{hint}", usage=overview())


def _verb(word: str) -> Verb | None:
    return VERBS.get(word) or next((v for v in VERBS.values() if word in v.aliases), None)


def _options_first(tokens: list[str]) -> CommandError:
    """`--stage dev list`: the command comes first; suggest the same words in that order."""
    at = next((i for i, token in enumerate(tokens) if _verb(token.lower()) and not token.startswith("-")), None)
    if at is None:
        return CommandError("start with a command, then its options, e.g. `/mcp help`", usage=overview())
    verb = _verb(tokens[at].lower())
    assert verb is not None
    if any(pos.kind == "person" for pos in verb.positionals):  # a person's identifier is not echoed (or audited)
        return CommandError(f"start with the command, then its options: `/mcp {verb.name} ...`", usage=verb.usage())
    reordered = " ".join([tokens[at].lower(), *tokens[:at], *tokens[at + 1 :]])
    return CommandError(
        f"start with the command, then its options: `/mcp {_clean_shown(reordered, 80)}`", usage=overview()
    )


def _tokenize(text: str) -> list[str]:
    if len(text) > MAX_TEXT_CHARS:
        raise CommandError(
            f"the command is too long ({len(text)} characters, at most {MAX_TEXT_CHARS})", usage=overview()
        )
    text = typed_text(html.unescape(text).translate(SMART_QUOTES))
    control = control_character(text)
    if control:
        raise CommandError(
            f"the command contains a control character ({control}); type it again without it", usage=overview()
        )
    try:
        lexer = shlex.shlex(text, posix=True)
        lexer.whitespace_split = True
        lexer.commenters = ""
        tokens = list(lexer)
    except ValueError:
        raise CommandError("unbalanced quotes in the command", usage=overview()) from None
    for token in tokens:
        if len(token) > MAX_TOKEN_CHARS:
            raise CommandError(
                f"an argument is too long ({len(token)} characters, at most {MAX_TOKEN_CHARS})", usage=overview()
            )
    return [SMART_DASH_FLAG.sub("--", token) for token in tokens]


def _convert_flag(verb: Verb, flag: Flag, raw: str) -> Any:
    if flag.kind == "int":
        try:
            value = int(raw)
        except ValueError:
            raise CommandError(f"`--{flag.name}` takes a whole number", usage=verb.usage()) from None
        if (flag.minimum is not None and value < flag.minimum) or (flag.maximum is not None and value > flag.maximum):
            raise CommandError(f"`--{flag.name}` must be between {flag.minimum} and {flag.maximum}", usage=verb.usage())
        return value
    if flag.kind == "id" and not ID_RE.match(raw):
        raise CommandError(f"`{_clean_shown(raw)}` is not a valid id for `--{flag.name}`", usage=verb.usage())
    if flag.kind == "slug" and not SLUG_RE.match(raw):
        raise CommandError(f"`{_clean_shown(raw)}` is not a valid slug for `--{flag.name}`", usage=verb.usage())
    if flag.kind == "text" and not raw.strip():
        raise CommandError(f"`--{flag.name}` needs some text", usage=verb.usage())
    return raw


def _check_positional(verb: Verb, pos: Positional, value: str) -> str:
    if pos.kind == "slug" and not SLUG_RE.match(value):
        raise CommandError(
            f"`{_clean_shown(value)}` is not a valid {pos.name}: use letters, digits, `-`, `_` and `.`",
            usage=verb.usage(),
        )
    if pos.kind == "id" and not ID_RE.match(value):
        raise CommandError(f"`{_clean_shown(value)}` is not a valid {pos.name}", usage=verb.usage())
    if pos.kind == "stage":
        if not STAGE_RE.match(value):
            raise CommandError(f"`{_clean_shown(value)}` is not a valid stage name", usage=verb.usage())
        return value.lower()
    if pos.kind == "person" and (not value.strip() or any(ord(c) < 32 for c in value.strip())):
        raise CommandError(f"<{pos.name}> must be an email, a distinct id or a user id", usage=verb.usage())
    if pos.kind == "verb":
        value = value.lower()
        if value not in VERBS:
            raise _unknown_verb(value)
    return value


def parse(text: str) -> ParsedCommand:
    tokens = _tokenize(text or "")
    if not tokens:
        return ParsedCommand(VERBS["help"])
    word = tokens[0].lower()
    verb = _verb(word)
    if verb is None and word.startswith("-"):
        raise _options_first(tokens)
    if verb is None:
        raise _unknown_verb(word)

    flags: dict[str, Any] = {flag.name: flag.default for flag in verb.flags}
    seen: set[str] = set()
    positionals: list[str] = []
    stage: str | None = None
    rest = tokens[1:]
    i = 0
    while i < len(rest):
        token = rest[i]
        i += 1
        match = FLAG_RE.match(token)
        if token.startswith("--") and not match:
            raise CommandError(f"`{_clean_shown(token)}` is not a valid option", usage=verb.usage())
        if not match:
            positionals.append(token)
            continue
        name, inline = match.group(1).lower(), match.group(2)
        if name in seen:
            raise CommandError(f"`--{name}` is given twice", usage=verb.usage())
        seen.add(name)
        flag = verb.flag(name)
        if name == "stage" and verb.stage != "none":
            flag = Flag("stage", "text", "stage")
        elif flag is None:
            raise CommandError(f"unknown option `--{name}` for `{verb.name}`", usage=verb.usage())
        if flag.kind == "bool":
            if inline is not None:
                raise CommandError(f"`--{name}` takes no value", usage=verb.usage())
            flags[name] = True
            continue
        if inline == "" and (flag.kind != "text" or name == "stage"):  # `--stage=`: the value was left out
            raise CommandError(f"`--{name}` needs a value", usage=verb.usage())
        if inline is None:
            if i >= len(rest) or FLAG_RE.match(rest[i]):
                raise CommandError(f"`--{name}` needs a value", usage=verb.usage())
            inline = rest[i]
            i += 1
        if name == "stage":
            if not STAGE_RE.match(inline):
                raise CommandError(f"`{_clean_shown(inline)}` is not a valid stage name", usage=verb.usage())
            stage = inline.lower()
        else:
            flags[name] = _convert_flag(verb, flag, inline)

    args: dict[str, str] = {}
    for index, pos in enumerate(verb.positionals):
        if index < len(positionals):
            args[pos.name] = _check_positional(verb, pos, positionals[index])
        elif pos.required:
            raise CommandError(f"missing <{pos.name}>", usage=verb.usage())
    if len(positionals) > len(verb.positionals):
        extra = positionals[len(verb.positionals)]
        raise CommandError(f"unexpected argument `{_clean_shown(extra)}`", usage=verb.usage())
    return ParsedCommand(verb=verb, args=args, flags=flags, stage=stage)
