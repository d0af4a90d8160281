"""The bot database's index of backups: what exists where, so `/mcp backups` and `/mcp restore` need no listing.

The store stays the source of truth for the data (every scoped backup carries its own
manifest); this table is how people find a backup by stage, slug or request id.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    Index,
    Table,
    Text,
    desc,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import SQLAlchemyError

from bot import outbox
from bot.botdb import metadata, reading
from bot.errors import UserFacingError

Kind = Literal["scoped", "full"]

backups = Table(
    "backups",
    metadata,
    Column("id", Text, primary_key=True),
    Column("kind", Text, nullable=False),  # scoped | full
    Column("stage", Text, nullable=False),
    Column("server_id", Text),
    Column("slug", Text),
    Column("request_id", Text),
    Column("state", Text, nullable=False),  # running | complete | failed | expired | purged (forget-user)
    Column("destination", Text, nullable=False),
    Column("location", Text),  # the key of the manifest (scoped) or the dump (full) in the store
    Column("size_bytes", BigInteger),
    Column("total_rows", BigInteger),
    Column("row_counts", JSONB, nullable=False, server_default="{}"),
    Column("created_by", Text, nullable=False),
    Column("approved_by", JSONB, nullable=False, server_default="[]"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True)),
    Column("error", Text),
    Column("snapshot", JSONB),
    Column("message_channel", Text),
    Column("message_ts", Text),
    Column("delete_state", Text),  # committed | rolled_back, set by the delete that asked for the backup
    Column("restored_at", DateTime(timezone=True)),
    Column("restored_by", Text),
    Index("backups_stage_created_idx", "stage", "created_at"),
    Index("backups_request_idx", "request_id"),
    Index("backups_slug_idx", "slug"),
)


class BackupIndexUnavailable(UserFacingError):
    outcome = "unavailable"


@dataclass(frozen=True)
class BackupRow:
    id: str
    kind: str
    stage: str
    server_id: str | None
    slug: str | None
    request_id: str | None
    state: str
    destination: str
    location: str | None
    size_bytes: int | None
    total_rows: int | None
    row_counts: Mapping[str, int]
    created_by: str
    approved_by: Sequence[str]
    created_at: datetime
    finished_at: datetime | None
    error: str | None
    snapshot: Mapping[str, Any] | None
    message_channel: str | None
    message_ts: str | None
    delete_state: str | None
    restored_at: datetime | None
    restored_by: str | None


def new_backup_id() -> str:
    return "bk_" + secrets.token_hex(8)


class BackupIndex:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _write(self, statement: Any, conn: Connection | None = None) -> None:
        try:
            if conn is not None:
                conn.execute(statement)
                return
            with self.engine.begin() as own:
                own.execute(statement)
        except SQLAlchemyError as exc:
            raise BackupIndexUnavailable("the bot database is unavailable, so no backup was taken") from exc

    def start(
        self,
        *,
        backup_id: str,
        kind: Kind,
        stage: str,
        destination: str,
        created_by: str,
        server_id: str | None = None,
        slug: str | None = None,
        request_id: str | None = None,
        approved_by: Sequence[str] = (),
        snapshot: Mapping[str, Any] | None = None,
    ) -> str:
        self._write(
            backups.insert().values(
                id=backup_id,
                kind=kind,
                stage=stage,
                server_id=server_id,
                slug=slug,
                request_id=request_id,
                state="running",
                destination=destination,
                created_by=created_by,
                approved_by=list(approved_by),
                snapshot=dict(snapshot) if snapshot else None,
            )
        )
        return backup_id

    def set_message(self, backup_id: str, channel: str, ts: str) -> None:
        self._write(update(backups).where(backups.c.id == backup_id).values(message_channel=channel, message_ts=ts))

    def complete(
        self,
        backup_id: str,
        *,
        location: str,
        size_bytes: int,
        row_counts: Mapping[str, int] | None = None,
        snapshot: Mapping[str, Any] | None = None,
        outbox_call: tuple[str, dict[str, Any]] | None = None,
    ) -> None:
        """Mark it usable; a final Slack edit, if any, is queued in the same transaction."""
        values: dict[str, Any] = {
            "state": "complete",
            "location": location,
            "size_bytes": size_bytes,
            "finished_at": func.now(),
        }
        if row_counts is not None:
            values["row_counts"] = dict(row_counts)
            values["total_rows"] = sum(row_counts.values())
        if snapshot is not None:
            values["snapshot"] = dict(snapshot)
        self._finish(backup_id, values, outbox_call)

    def fail(self, backup_id: str, error: str, *, outbox_call: tuple[str, dict[str, Any]] | None = None) -> None:
        self._finish(backup_id, {"state": "failed", "error": error[:500], "finished_at": func.now()}, outbox_call)

    def _finish(self, backup_id: str, values: dict[str, Any], outbox_call: tuple[str, dict[str, Any]] | None) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(update(backups).where(backups.c.id == backup_id).values(**values))
                if outbox_call is not None:
                    outbox.enqueue(conn, *outbox_call)
        except SQLAlchemyError as exc:
            raise BackupIndexUnavailable("the bot database is unavailable; the backup's state is not recorded") from exc

    def mark_delete(self, backup_id: str, *, committed: bool) -> None:
        """Called by the delete once its transaction ended, so the list says whether the rows are gone."""
        state = "committed" if committed else "rolled_back"
        self._write(update(backups).where(backups.c.id == backup_id).values(delete_state=state))

    def mark_restored(self, backup_id: str, actor: str) -> None:
        self._write(update(backups).where(backups.c.id == backup_id).values(restored_at=func.now(), restored_by=actor))

    def get(self, backup_id: str) -> BackupRow | None:
        with reading(self.engine) as conn:
            row = conn.execute(select(backups).where(backups.c.id == backup_id)).first()
        return None if row is None else BackupRow(**row._mapping)

    def find_for_request(self, stage: str, request_id: str) -> BackupRow | None:
        """The newest complete scoped backup taken for a delete request on a stage."""
        query = (
            select(backups)
            .where(
                backups.c.stage == stage,
                backups.c.request_id == request_id,
                backups.c.kind == "scoped",
                backups.c.state == "complete",
            )
            .order_by(desc(backups.c.created_at))
            .limit(1)
        )
        with reading(self.engine) as conn:
            row = conn.execute(query).first()
        return None if row is None else BackupRow(**row._mapping)

    def complete_before(self, stage: str, before: datetime) -> list[BackupRow]:
        """Every usable backup of a stage taken before `before`, oldest first (forget-user looks through them)."""
        query = (
            select(backups)
            .where(backups.c.stage == stage, backups.c.state == "complete", backups.c.created_at <= before)
            .order_by(backups.c.created_at, backups.c.id)
        )
        with reading(self.engine) as conn:
            return [BackupRow(**row._mapping) for row in conn.execute(query)]

    def record_purge(self, backup_id: str, *, row_counts: Mapping[str, int] | None, size_bytes: int | None) -> None:
        """A backup rewritten without a forgotten person (new counts), or deleted whole (`row_counts` None)."""
        if row_counts is None:
            values: dict[str, Any] = {"state": "purged", "location": None}
        else:
            values = {"row_counts": dict(row_counts), "total_rows": sum(row_counts.values()), "size_bytes": size_bytes}
        self._write(update(backups).where(backups.c.id == backup_id).values(**values))

    def latest(self, *, stage: str | None = None, slug: str | None = None, limit: int = 20) -> list[BackupRow]:
        query = select(backups).order_by(desc(backups.c.created_at), desc(backups.c.id)).limit(limit)
        if stage:
            query = query.where(backups.c.stage == stage)
        if slug:
            query = query.where(backups.c.slug == slug)
        with reading(self.engine) as conn:
            return [BackupRow(**row._mapping) for row in conn.execute(query)]
