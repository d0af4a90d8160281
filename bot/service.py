"""Running a command: parse, pick the stage, authorise, execute, audit; no Slack here.

Handlers call `prepare` before acknowledging (pure CPU, so the ack stays fast) and `run`
after it. Every outcome, refusals included, becomes one audit row.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import OperationalError

from bot import metrics
from bot.audit import AuditEntry
from bot.commands import VERBS, ParsedCommand, parse
from bot.errors import BotDatabaseUnreachable, UserFacingError
from bot.lanes import Busy
from bot.logs import request_id_var
from bot.progress import Progress
from bot.runtime import Runtime
from bot.stages import Stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Invocation:
    """Who typed what, where; straight from the Slack payload."""

    user_id: str
    channel_id: str | None
    text: str
    delivery: str | None = None  # Slack's trigger_id: a retried changing command runs once (bot/deliveries.py)


@dataclass(frozen=True)
class CommandRequest:
    invocation: Invocation
    parsed: ParsedCommand
    stage: Stage | None
    cursor: str | None = None
    seen: int = 0  # rows shown on earlier pages, for "N left" on paged replies
    # Long verbs (backup) report through this while they run; the handler supplies it.
    progress: Progress | None = None

    @property
    def actor(self) -> str:
        return self.invocation.user_id

    @property
    def verb(self) -> str:
        return self.parsed.verb.name


@dataclass
class CommandOutcome:
    request: CommandRequest | None
    result: Any = None
    error: UserFacingError | None = None
    duration_ms: int = 0
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "ok" if self.error is None else self.error.outcome


class InternalError(UserFacingError):
    """A bug or an unexpected failure; the person gets a reference, the log gets the details."""

    outcome = "error"


Operation = Callable[[Runtime, CommandRequest], Any]
OPERATIONS: dict[str, Operation] = {}
# Modules whose @operation functions implement the verbs; imported when the service starts.
OPERATION_MODULES = (
    "bot.operations",
    "bot.health.operations",
    "bot.backups.operations",
    "bot.deletion.operations",
    "bot.schema.operations",
    "bot.sessions.operations",
    "bot.indexes.operations",
    "bot.erasure.operations",
)


def operation(verb: str) -> Callable[[Operation], Operation]:
    def register(func: Operation) -> Operation:
        OPERATIONS[verb] = func
        return func

    return register


class CommandService:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        for module in OPERATION_MODULES:
            importlib.import_module(module)

    def prepare(self, invocation: Invocation, *, cursor: str | None = None, seen: int = 0) -> CommandRequest:
        """Parse, resolve the stage and authorise; raises UserFacingError.

        No I/O for read-only verbs, so their ack stays fast; a mutating verb also counts against
        the person's rate limit (one small bot-database transaction).
        """
        parsed = parse(invocation.text)
        self.runtime.policy.check_verb(invocation.user_id, parsed.verb)
        stage: Stage | None = None
        if parsed.verb.stage == "required":
            stage = self.runtime.stages.resolve(parsed.stage, invocation.channel_id)
        elif parsed.verb.stage == "optional" and parsed.stage:
            stage = self.runtime.stages.get(parsed.stage)
        if parsed.verb.mutating:  # last, so a command refused for another reason costs nothing
            self.runtime.rate_limiter.check(invocation.user_id, delivery=invocation.delivery)
        return CommandRequest(invocation=invocation, parsed=parsed, stage=stage, cursor=cursor, seen=max(seen, 0))

    def start(self, request: CommandRequest, work: Callable[[], None]) -> None:
        """Queue the command's work on its lane, or raise Busy (a full lane, a heavy-read cap).

        Changing commands go on the work lane with clicks and approved executions; reads on the
        read lane, where heavy ones (`Verb.heavy`) are also capped per person and per stage.
        """
        verb = request.parsed.verb
        release: Callable[[], None] = lambda: None  # noqa: E731
        if verb.heavy:
            stage = request.stage.name if request.stage else ""
            release = self.runtime.heavy_reads.acquire(request.actor, stage, verb.name)

        def run_then_release() -> None:
            try:
                work()
            finally:
                release()

        try:
            self.runtime.submit(run_then_release, lane="work" if verb.mutating else "read")
        except BaseException:
            release()
            raise

    def refuse_later(self, invocation: Invocation, error: UserFacingError) -> None:
        """Audit a refusal after the ack, on the audit lane; one that cannot be queued under load is logged."""
        try:
            self.runtime.submit(self.refuse, invocation, error, lane="audit")
        except Busy:
            log.warning("refusal not audited: the audit lane is full", extra={"outcome": error.outcome})

    def refuse(self, invocation: Invocation, error: UserFacingError) -> None:
        """Audit a command that never ran (bad input, no permission, unknown stage)."""
        word = _verb_word(invocation.text).lower()
        # Only known verbs become label values: free text must not grow the metric without bound.
        metrics.commands_total.labels(verb=word if word in VERBS else "unknown", outcome=error.outcome).inc()
        args = _after_verb(invocation.text)[:200]
        reason = error.message
        if any(_takes_a_person(w) for w in [word, *invocation.text.lower().split()]):
            args, reason = "(a person's identifier, withheld)", f"refused ({error.outcome})"  # never stored as typed
        self.runtime.audit.record(
            AuditEntry(
                actor=invocation.user_id,
                command=_verb_word(invocation.text),
                args=args,
                outcome=error.outcome,
                detail={"reason": reason},
            )
        )

    def run(self, request: CommandRequest) -> CommandOutcome:
        started = time.perf_counter()
        outcome = CommandOutcome(request=request)
        try:
            self.runtime.policy.check_after_ack(request.actor, request.parsed.verb)
            outcome.result = OPERATIONS[request.verb](self.runtime, request)
        except UserFacingError as exc:
            outcome.error = exc
        except OperationalError as exc:
            # Stage errors arrive translated by Stage.read/write, so a raw one is the bot database.
            log.warning("bot database unavailable", extra={"verb": request.verb, "error": type(exc.orig).__name__})
            outcome.error = BotDatabaseUnreachable("the bot database is unavailable right now; try again shortly")
        except Exception:
            reference = request_id_var.get()
            log.exception("command failed", extra={"verb": request.verb})
            outcome.error = InternalError(
                f"something went wrong on our side (reference `{reference}`); nothing was changed"
            )
        outcome.duration_ms = int((time.perf_counter() - started) * 1000)
        metrics.commands_total.labels(verb=request.verb, outcome=outcome.status).inc()
        metrics.command_duration_seconds.labels(verb=request.verb).observe(outcome.duration_ms / 1000)
        detail = dict(outcome.detail)
        if outcome.error is not None:
            detail["reason"] = outcome.error.message
        if request.cursor:
            detail["page"] = True
        self.runtime.audit.record(
            AuditEntry(
                actor=request.actor,
                stage=request.stage.name if request.stage else None,
                command=request.verb,
                args=request.parsed.shown(include_stage=False).removeprefix(request.verb).strip(),
                outcome=outcome.status,
                duration_ms=outcome.duration_ms,
                detail=detail,
            )
        )
        return outcome


def _verb_word(text: str) -> str:
    word = (text or "").strip().split(maxsplit=1)
    if not word:
        return "help"
    return "".join(ch for ch in word[0][:30] if ch.isalnum() or ch in "-_") or "?"


def _takes_a_person(word: str) -> bool:
    """Does `word` name a verb whose argument is a person's identifier (forget-user)? Its refusal keeps
    that identifier out of the audit, wherever the verb stood (`--stage dev forget-user jane`)."""
    verb = VERBS.get(word) or next((v for v in VERBS.values() if word in v.aliases), None)
    return verb is not None and any(pos.kind == "person" for pos in verb.positionals)


def _after_verb(text: str) -> str:
    parts = (text or "").strip().split(maxsplit=1)
    return parts[1] if len(parts) > 1 else ""
