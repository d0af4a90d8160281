"""The audit trail: one durable row per command, refusal and state change.

The row and its Slack post (through the outbox) are written in one transaction, so the
audit channel can lag behind the table but never disagree with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    Index,
    Integer,
    Table,
    Text,
    desc,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import SQLAlchemyError

from bot import audit_coalesce as coalesce
from bot import outbox
from bot.botdb import metadata, reading
from bot.errors import UserFacingError
from bot.logs import request_id_var
from bot.pii import scrub
from bot.slacktext import Mrkdwn, code, md, mention, truncate
from bot.slacktext.limits import TEXT_RECOMMENDED

log = logging.getLogger(__name__)

MAX_ARGS_CHARS = 500
LINE_CHARS = TEXT_RECOMMENDED

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("actor", Text, nullable=False),
    Column("stage", Text),
    Column("command", Text, nullable=False),
    Column("args", Text, nullable=False, server_default=""),
    Column("outcome", Text, nullable=False),
    Column("duration_ms", Integer),
    Column("detail", JSONB, nullable=False, server_default="{}"),
    Column("request_id", Text),
    Index("audit_log_at_idx", "at"),
    Index("audit_log_stage_at_idx", "stage", "at"),
)


class AuditUnavailable(UserFacingError):
    outcome = "unavailable"


OUTCOME_ICONS = {
    "ok": ":white_check_mark:",
    "denied": ":no_entry:",
    "rate_limited": ":snail:",
    "bad_input": ":grey_question:",
    "not_found": ":mag:",
    "unavailable": ":electric_plug:",
    "timeout": ":hourglass:",
    "error": ":x:",
    "firing": ":rotating_light:",
    "resolved": ":large_green_circle:",
}


@dataclass(frozen=True)
class AuditEntry:
    actor: str
    command: str
    outcome: str
    stage: str | None = None
    args: str = ""
    duration_ms: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: datetime
    actor: str
    stage: str | None
    command: str
    args: str
    outcome: str
    duration_ms: int | None


def _storable(text: str) -> str:
    """PostgreSQL text and jsonb hold no NUL: a refusal of a command that carried one is still recorded."""
    return text.replace("\x00", "\ufffd")


def _clean_detail(value: Any) -> Any:
    if isinstance(value, str):
        return _storable(scrub(value)[:1000])
    if isinstance(value, dict):
        return {_storable(str(k)): _clean_detail(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_detail(v) for v in value]
    return value


def audit_line(entry: AuditEntry) -> Mrkdwn:
    """The audit channel's line: the command as typed is data (a `--reason` can hold anything), shown as code."""
    icon = Mrkdwn(OUTCOME_ICONS.get(entry.outcome, ":information_source:"))
    where = md(" on *{}*", entry.stage) if entry.stage else Mrkdwn("")
    took = md(" ({:,} ms)", entry.duration_ms) if entry.duration_ms is not None else Mrkdwn("")
    command = code(f"{entry.command} {entry.args}".strip())
    # Scheduled work (alerts) acts as the bot itself, which is no Slack user to mention: `mention` shows it in bold.
    return truncate(md("{} {} {}{}: {}{}", icon, mention(entry.actor), command, where, entry.outcome, took), LINE_CHARS)


def held_line(held: coalesce.Held, window_s: int) -> str:
    """The summary of refusals held back in one coalescing window: who, which command, how many."""
    entry = AuditEntry(actor=held.actor, command=held.command, outcome=held.outcome, stage=held.stage)
    times = "time" if held.count == 1 else "times"
    return f"{audit_line(entry)}, {held.count} more {times} within {window_s} s of the first"


class AuditLog:
    def __init__(
        self,
        engine: Engine,
        channel: str,
        on_enqueue: Callable[[], None] | None = None,
        *,
        coalesce_s: int = 0,
    ) -> None:
        self.engine = engine
        self.channel = channel
        self._on_enqueue = on_enqueue or (lambda: None)
        self.coalesce_s = coalesce_s  # repeated refusals within this many seconds: one post (0: every one)

    def record(self, entry: AuditEntry, *, required: bool = False, conn: Connection | None = None) -> int | None:
        """Write the row and queue its Slack post.

        A bot database outage is logged and swallowed for read-only commands; a mutation
        passes `required=True` so that it cannot run unaudited. With `conn`, both are written
        in the caller's transaction (so the fact and its audit commit together) and errors
        propagate; the caller nudges the outbox after its commit.
        """
        if conn is not None:
            return self._write(conn, entry)
        try:
            with self.engine.begin() as tx:
                audit_id = self._write(tx, entry)
        except SQLAlchemyError as exc:
            log.error(
                "audit write failed",
                extra={"command": entry.command, "outcome": entry.outcome, "error": type(exc).__name__},
            )
            if required:
                raise AuditUnavailable("the audit log is unavailable, so nothing was changed; try again") from exc
            return None
        self._on_enqueue()
        return audit_id

    def _write(self, conn: Connection, entry: AuditEntry) -> int:
        clean = AuditEntry(
            actor=_storable(entry.actor),
            command=_storable(entry.command),
            outcome=entry.outcome,
            stage=entry.stage,
            args=_storable(scrub(entry.args)[:MAX_ARGS_CHARS]),
            duration_ms=entry.duration_ms,
            detail=_clean_detail(entry.detail),
        )
        audit_id = conn.execute(
            audit_log.insert()
            .values(
                actor=clean.actor,
                stage=clean.stage,
                command=clean.command,
                args=clean.args,
                outcome=clean.outcome,
                duration_ms=clean.duration_ms,
                detail=clean.detail,
                request_id=request_id_var.get(),
            )
            .returning(audit_log.c.id)
        ).scalar_one()
        if not self.channel:
            return int(audit_id)
        post = True
        if self.coalesce_s and clean.outcome in coalesce.COALESCED_OUTCOMES:
            post, held = coalesce.admit(conn, clean.actor, clean.command, clean.outcome, clean.stage, self.coalesce_s)
            if held is not None:
                self._post(conn, held_line(held, self.coalesce_s))
        if post:
            self._post(conn, audit_line(clean))
        return int(audit_id)

    def _post(self, conn: Connection, line: str) -> None:
        outbox.enqueue(
            conn,
            "chat.postMessage",
            {"channel": self.channel, "text": line, "unfurl_links": False},
            priority=outbox.AUDIT,
        )

    def post_held_refusals(self) -> int:
        """Post the count of refusals held back in coalescing windows that are over (a scheduled job)."""
        if not self.channel or not self.coalesce_s:
            return 0
        with self.engine.begin() as conn:
            held = coalesce.due(conn, self.coalesce_s)
            for item in held:
                self._post(conn, held_line(item, self.coalesce_s))
        if held:
            self._on_enqueue()
        return len(held)

    def latest(self, *, stage: str | None, limit: int) -> list[AuditRow]:
        query = select(audit_log).order_by(desc(audit_log.c.id)).limit(limit)
        if stage:
            query = query.where(audit_log.c.stage == stage)
        names = [f.name for f in fields(AuditRow)]
        with reading(self.engine) as conn:
            return [AuditRow(**{name: row._mapping[name] for name in names}) for row in conn.execute(query)]
