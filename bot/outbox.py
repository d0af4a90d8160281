"""Durable delivery of Slack API calls.

A message that must reach Slack is first a row in the bot database, written in the same
transaction as the fact it reports. A worker posts due rows one at a time under
`FOR UPDATE SKIP LOCKED`, so several workers (or replicas) never post the same row, and a
429 or a 5xx streak only postpones delivery. Rows go out by priority (request messages and
alerts, then App Home tabs, then audit lines), oldest first within one. A 429 holds back only
its method on its channel, for its Retry-After, in every replica (`outbox_holds`): a rate
limit on the audit channel delays no alert and no request's message. A call that replaces what an earlier one showed
(`chat.update` of one message, `views.publish` of one person's App Home) carries a
`supersede_key`: a newer call with the same key retires the older one, which is then never
sent, even when it is retried after the newer was delivered, so nothing goes back to an
older state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    Index,
    Integer,
    SmallInteger,
    Table,
    Text,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.exc import SQLAlchemyError

from bot.botdb import metadata, reading
from bot.pii import scrub
from bot.slack_files import upload_files
from bot.slacktext.files import split_files

log = logging.getLogger(__name__)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("method", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("delivered_at", DateTime(timezone=True)),
    Column("dead_at", DateTime(timezone=True)),
    Column("last_error", Text),
    Column("result", JSONB),
    Column("supersede_key", Text),  # calls with the same key replace each other; only the newest is sent
    Column("priority", SmallInteger, nullable=False, server_default="0"),  # URGENT, NORMAL, AUDIT
    Column("channel", Text, nullable=False, server_default=""),  # what a 429 holds back, with the method
    Index("outbox_supersede_idx", "supersede_key", postgresql_where=text("supersede_key IS NOT NULL")),
    Index("outbox_due_idx", "priority", "id", postgresql_where=text("delivered_at IS NULL AND dead_at IS NULL")),
)

# A method rate limited on one channel ("" for calls without one), until Retry-After has passed.
outbox_holds = Table(
    "outbox_holds",
    metadata,
    Column("method", Text, primary_key=True),
    Column("channel", Text, primary_key=True),
    Column("until", DateTime(timezone=True), nullable=False),
)

URGENT, NORMAL, AUDIT = 0, 1, 2

MAX_BACKOFF = timedelta(minutes=5)  # a long Slack outage still ends with delivery minutes after it
PERMANENT_ATTEMPTS = 20  # a payload Slack keeps refusing (not a 429/5xx) is given up after this


def supersede_key(method: str, payload: dict[str, Any]) -> str | None:
    """What a call replaces: one message's content, or one person's App Home; None for a new post."""
    if method == "chat.update" and payload.get("channel") and payload.get("ts"):
        return f"message:{payload['channel']}:{payload['ts']}"
    if method == "views.publish" and payload.get("user_id"):
        return f"home:{payload['user_id']}"
    return None


def enqueue(
    conn: Connection,
    method: str,
    payload: dict[str, Any],
    *,
    not_before: datetime | None = None,
    priority: int | None = None,
) -> int:
    """Queue a Slack Web API call inside the caller's transaction (sent from `not_before`, default now).

    By default messages (requests, alerts) are URGENT and App Home tabs NORMAL; audit lines pass AUDIT.
    """
    if priority is None:
        priority = NORMAL if method == "views.publish" else URGENT
    values: dict[str, Any] = {
        "method": method,
        "payload": payload,
        "supersede_key": supersede_key(method, payload),
        "priority": priority,
        "channel": str(payload.get("channel") or "")[:100],
    }
    if not_before is not None:
        values["next_attempt_at"] = not_before
    return int(conn.execute(outbox.insert().values(**values).returning(outbox.c.id)).scalar_one())


@dataclass
class DrainResult:
    delivered: int = 0
    postponed: bool = False


def _status_of(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status is None and isinstance(response, dict):
        status = response.get("status")
    return int(status) if status is not None else None


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None and isinstance(response, dict):
        headers = response.get("headers")
    if not headers:
        return None
    for key, value in dict(headers).items():
        if key.lower() == "retry-after":
            value = value[0] if isinstance(value, list) else value
            try:
                return max(float(value), 0.0)
            except (TypeError, ValueError):
                return None
    return None


class Outbox:
    def __init__(self, engine: Engine, client: WebClient) -> None:
        self.engine = engine
        self.client = client

    def backlog(self) -> int:
        with reading(self.engine) as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(outbox)
                    .where(outbox.c.delivered_at.is_(None), outbox.c.dead_at.is_(None))
                ).scalar_one()
            )

    def drain(self, limit: int = 200) -> DrainResult:
        """Deliver due rows until none is due, a 5xx or a failed call says stop, or `limit` is reached.

        A 429 only holds back its method on its channel: the drain goes on with the others.
        """
        result = DrainResult()
        with self.engine.begin() as conn:
            conn.execute(outbox_holds.delete().where(outbox_holds.c.until < func.now()))
        for _ in range(limit):
            outcome = self._deliver_one()
            if outcome == "empty":
                break
            if outcome == "delivered":
                result.delivered += 1
            elif outcome in ("postponed", "held"):
                result.postponed = True
                if outcome == "postponed":
                    break
        return result

    def _deliver_one(self) -> str:
        held = (
            select(outbox_holds.c.method)
            .where(
                outbox_holds.c.method == outbox.c.method,
                outbox_holds.c.channel == outbox.c.channel,
                outbox_holds.c.until > func.now(),
            )
            .exists()
        )
        with self.engine.begin() as conn:
            row = conn.execute(
                select(outbox)
                .where(
                    outbox.c.delivered_at.is_(None),
                    outbox.c.dead_at.is_(None),
                    outbox.c.next_attempt_at <= func.now(),
                    ~held,
                )
                .order_by(outbox.c.priority, outbox.c.id)
                .limit(1)
                .with_for_update(of=outbox, skip_locked=True)
            ).first()
            if row is None:
                return "empty"
            if row.supersede_key and self._superseded(conn, row):
                conn.execute(
                    update(outbox)
                    .where(outbox.c.id == row.id)
                    .values(delivered_at=func.now(), result={"superseded": True}, last_error=None)
                )
                return "delivered"
            payload, files = split_files(row.payload)  # a message's files go beside it, in its thread
            try:
                response = self.client.api_call(row.method, json=payload)
            except Exception as exc:  # any failure postpones; the row stays queued
                return self._postpone(conn, row, exc)
            data = response.data if isinstance(response.data, dict) else {}
            if files:
                channel, ts = data.get("channel") or payload.get("channel"), data.get("ts") or payload.get("ts")
                upload_files(self.client, channel=str(channel), files=files, thread_ts=ts)
            conn.execute(
                update(outbox)
                .where(outbox.c.id == row.id)
                .values(
                    delivered_at=func.now(),
                    attempts=row.attempts + 1,
                    result={"channel": data.get("channel"), "ts": data.get("ts")},
                    last_error=None,
                )
            )
            return "delivered"

    @staticmethod
    def _superseded(conn: Connection, row: Any) -> bool:
        """Was a newer call with the same supersede key queued (delivered or not)?"""
        newer = conn.execute(
            select(outbox.c.id).where(outbox.c.supersede_key == row.supersede_key, outbox.c.id > row.id).limit(1)
        ).first()
        return newer is not None

    def _postpone(self, conn: Connection, row: Any, exc: Exception) -> str:
        status = _status_of(exc)
        attempts = row.attempts + 1
        transient = status is None or status == 429 or status >= 500
        wait = _retry_after(exc) if status == 429 else None
        if wait is None:
            wait = min(2 ** min(attempts, 11), MAX_BACKOFF.total_seconds())
        error = exc.response.get("error") if isinstance(exc, SlackApiError) and hasattr(exc.response, "get") else None
        description = f"HTTP {status}" if status else type(exc).__name__
        if error:
            description += f" {error}"
        until = datetime.now(UTC) + timedelta(seconds=wait)
        values: dict[str, Any] = {
            "attempts": attempts,
            "last_error": scrub(description)[:300],
            "next_attempt_at": until,
        }
        if not transient and attempts >= PERMANENT_ATTEMPTS:
            values["dead_at"] = func.now()
        conn.execute(update(outbox).where(outbox.c.id == row.id).values(**values))
        if status == 429:
            # Slack limits a method per channel (chat.postMessage) or per app: every queued call of
            # this method to this channel waits (in every replica, since the hold is a row) instead
            # of each spending an attempt on a 429; other channels and methods go on.
            hold = insert(outbox_holds).values(method=row.method, channel=row.channel, until=until)
            conn.execute(
                hold.on_conflict_do_update(
                    index_elements=[outbox_holds.c.method, outbox_holds.c.channel],
                    set_={"until": func.greatest(outbox_holds.c.until, hold.excluded.until)},
                )
            )
        log.warning("slack delivery postponed", extra={"outbox_id": row.id, "error": description, "wait_s": wait})
        if status == 429:
            return "held"
        return "postponed" if transient else "failed"


class OutboxWorker:
    """A daemon thread that drains the outbox when nudged and every `interval` seconds."""

    def __init__(self, outbox_: Outbox, interval: float) -> None:
        self.outbox = outbox_
        self.interval = interval
        self.on_delivered: Callable[[], None] = lambda: None  # e.g. refresh the backlog gauge
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
            self._thread.start()

    def notify(self) -> None:
        self._wake.set()

    def stop(self, *, flush: bool = True) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if flush:
            self._safe_drain()

    def _safe_drain(self) -> None:
        try:
            if self.outbox.drain().delivered:
                self.on_delivered()
        except SQLAlchemyError as exc:
            log.warning("outbox drain failed: bot database unavailable", extra={"error": type(exc).__name__})

    def _run(self) -> None:
        while not self._stop.is_set():
            self._safe_drain()
            self._wake.wait(self.interval)
            self._wake.clear()
