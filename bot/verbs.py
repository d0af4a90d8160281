"""The `/mcp` verbs: each one's arguments, flags, stage use and summary in one table, and the usage built from it.

Kept apart from the parser (bot/commands.py) so that adding or changing a verb touches this table only;
bot/commands.py re-exports these names, so `from bot.commands import VERBS, Verb, register` still works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

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


def overview() -> str:
    return "\n".join(f"`{verb.usage()}`: {verb.summary}" for verb in VERBS.values())


def usage_hint() -> str:
    """The slash command's one-line hint in Slack's composer; manifest.yml must carry exactly this."""
    words = []
    for verb in VERBS.values():
        required = " ".join(f"<{pos.name}>" for pos in verb.positionals if pos.required)
        words.append(f"{verb.name} {required}".strip())
    return " | ".join(words) + " [--stage <stage>]"
