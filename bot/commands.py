"""The `/mcp` command language: every verb, its arguments, flags and usage, in one place.

`parse` turns the text Slack sends into a ParsedCommand or raises CommandError with a
message and the verb's usage; it never raises anything else, whatever the input.
"""

from __future__ import annotations

import difflib
import html
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bot.erasure.identity import identifier_label
from bot.errors import CommandError

MAX_TEXT_CHARS = 4000
MAX_TOKEN_CHARS = 256
SLUG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}\Z")
STAGE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}\Z")
FLAG_RE = re.compile(r"^--([a-z][a-z0-9-]{0,30})(?:=(.*))?\Z", re.DOTALL)
SMART_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})

# "person": an email, distinct id or user id (forget-user); shown everywhere as its digest label only.
ArgKind = Literal["slug", "id", "text", "verb", "stage", "person"]
FlagKind = Literal["int", "text", "bool", "id", "slug"]


@dataclass(frozen=True)
class Positional:
    name: str
    kind: ArgKind = "slug"
    required: bool = True


@dataclass(frozen=True)
class Flag:
    name: str
    kind: FlagKind
    help: str
    default: Any = None
    minimum: int | None = None
    maximum: int | None = None

    @property
    def metavar(self) -> str:
        return {"int": "N", "text": '"text"', "id": "id", "slug": "slug", "bool": ""}[self.kind]

    def usage(self) -> str:
        return f"--{self.name}" + (f" {self.metavar}" if self.kind != "bool" else "")


# Stage handling of a verb: it must name one, may name one (a filter), or takes none.
StageUse = Literal["required", "optional", "none"]


@dataclass(frozen=True)
class Verb:
    name: str
    summary: str
    positionals: tuple[Positional, ...] = ()
    flags: tuple[Flag, ...] = ()
    stage: StageUse = "required"
    mutating: bool = False
    aliases: tuple[str, ...] = ()
    heavy: bool = False  # a read that can take long on a big stage: capped per person and per stage

    def usage(self) -> str:
        parts = [f"/mcp {self.name}"]
        for pos in self.positionals:
            parts.append(f"<{pos.name}>" if pos.required else f"[<{pos.name}>]")
        for flag in self.flags:
            parts.append(f"[{flag.usage()}]")
        if self.stage == "required":
            parts.append("--stage <stage>")
        elif self.stage == "optional":
            parts.append("[--stage <stage>]")
        return " ".join(parts)

    def flag(self, name: str) -> Flag | None:
        for flag in self.flags:
            if flag.name == name:
                return flag
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


LIMIT = Flag("limit", "int", "rows to show", default=20, minimum=1, maximum=100)

VERBS: dict[str, Verb] = {}


def register(verb: Verb) -> Verb:
    VERBS[verb.name] = verb
    return verb


register(
    Verb("help", "show the commands, or one command's usage", (Positional("command", "verb", False),), stage="none")
)
register(Verb("find", "show a server by slug", (Positional("slug"),)))
register(Verb("list", "list servers, newest first", flags=(Flag("org", "id", "only this organization id"), LIMIT)))
register(
    Verb(
        "stats",
        "tool calls, sessions, users and top tools of a server",
        (Positional("slug"),),
        (Flag("days", "int", "window in days", default=30, minimum=1, maximum=3650),),
        heavy=True,
    )
)
register(Verb("users", "users of a server (emails masked)", (Positional("slug"),), (LIMIT,)))
register(Verb("audit", "latest audit entries (operators and approvers)", flags=(LIMIT,), stage="optional"))
register(Verb("health", "run every health check on a stage now and summarise", heavy=True))
register(
    Verb(
        "slow-queries",
        "the busiest queries of the last snapshot interval, slow ones marked",
        flags=(Flag("limit", "int", "queries to show", default=10, minimum=1, maximum=50),),
        heavy=True,
    )
)
register(Verb("alerts", "open health and slow-query alerts", stage="optional"))
register(
    Verb(
        "explain",
        "the generic plan of a query that /mcp slow-queries shows (planned, never run), with the plan as a file",
        (Positional("queryid", "text"),),
    )
)
register(Verb("backup", "full pg_dump of a stage's database to the backup destination (operators)", mutating=True))
register(
    Verb(
        "backups",
        "backups (scoped and full) with size, row counts and age (operators and approvers)",
        flags=(Flag("slug", "slug", "only this server's scoped backups"), LIMIT),
        stage="optional",
    )
)
register(
    Verb(
        "restore",
        "put back the rows a delete removed, from its scoped backup (operators; approved on protected stages)",
        (Positional("request-id", "id"),),
        (
            Flag("dry-run", "bool", "check the backup and look for conflicts, write nothing"),
            Flag("reason", "text", "why (required on protected stages, where a restore needs approval)"),
        ),
        mutating=True,
    )
)
register(
    Verb(
        "impact",
        "what deleting a server would touch, table by table, and what could go wrong",
        (Positional("slug"),),
        heavy=True,
    )
)
register(
    Verb(
        "delete",
        "delete a server and everything that depends on it (asks for confirmation)",
        (Positional("slug"),),
        (
            Flag("dry-run", "bool", "run the whole delete in a transaction and roll it back", default=False),
            Flag("reason", "text", "why (required on protected stages; kept with the request and in the audit log)"),
            Flag("backup", "bool", "keep the deleted rows in a scoped backup first (always done on protected stages)"),
        ),
        mutating=True,
    )
)
register(Verb("pending", "open requests of every kind, with links (operators and approvers)", stage="optional"))
register(
    Verb(
        "migrations",
        "which Drizzle migrations each stage has applied, and which are pending, skipped, edited or unknown",
        stage="optional",
    )
)
register(
    Verb(
        "drift",
        "how two stages' schemas differ (tables, columns, keys, indexes, triggers, enums, ...), by table",
        (Positional("stage-a", "stage"), Positional("stage-b", "stage")),
        stage="none",
    )
)
register(
    Verb(
        "sessions",
        "what the session checks see (long-running, idle in transaction, blocked), with Cancel/Terminate buttons",
        flags=(
            Flag("blocked", "bool", "only queries waiting on a lock (the buttons act on their blocker)"),
            Flag("idle", "bool", "only sessions idle in a transaction"),
            Flag("long", "bool", "only long-running queries"),
        ),
    )
)
register(
    Verb(
        "indexes",
        "foreign keys without an index, invalid and duplicate indexes, with Create index / Drop index buttons",
    )
)


register(
    Verb(
        "forget-user",
        "erase one end user (email, distinct id or user id) and everything hanging off them, with a receipt",
        (Positional("email|distinct-id|user-id", "person"),),
        (
            Flag("dry-run", "bool", "run the whole erasure in a transaction and roll it back", default=False),
            Flag("reason", "text", "why (required on protected stages; kept with the request and the receipt)"),
            Flag("all-stages", "bool", "dry-run it on every stage and post one combined impact", default=False),
            Flag("purge-backups", "bool", "also rewrite (or delete) scoped backups holding the person", default=False),
        ),
        stage="optional",
        mutating=True,
    )
)


def _clean_shown(value: str, limit: int = 40) -> str:
    shown = value.replace("`", "'").replace("\n", " ")
    return shown[:limit] + ("…" if len(shown) > limit else "")


def overview() -> str:
    return "\n".join(f"`{verb.usage()}`: {verb.summary}" for verb in VERBS.values())


def usage_hint() -> str:
    """The slash command's one-line hint in Slack's composer; manifest.yml must carry exactly this."""
    words = []
    for verb in VERBS.values():
        required = " ".join(f"<{pos.name}>" for pos in verb.positionals if pos.required)
        words.append(f"{verb.name} {required}".strip())
    return " | ".join(words) + " [--stage <stage>]"


def _unknown_verb(word: str) -> CommandError:
    close = difflib.get_close_matches(word, list(VERBS), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(f'`{c}`' for c in close)}?" if close else ""
    return CommandError(f"unknown command `{_clean_shown(word)}`.{hint}", usage=overview())


def _tokenize(text: str) -> list[str]:
    if len(text) > MAX_TEXT_CHARS:
        raise CommandError(
            f"the command is too long ({len(text)} characters, at most {MAX_TEXT_CHARS})", usage=overview()
        )
    text = html.unescape(text).translate(SMART_QUOTES)
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
    return tokens


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
    if pos.kind == "person" and (not value.strip() or any(ord(c) < 32 for c in value)):
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
    verb = VERBS.get(word) or next((v for v in VERBS.values() if word in v.aliases), None)
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
        name, inline = match.group(1), match.group(2)
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
