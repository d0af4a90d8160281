"""The erasure ledger in the bot database: one row per erasure, which is also its receipt.

A row holds the stage, the sha256 of the normalised identifier (never the identifier), the digests
that find the person again (`target`), the rows per table, who asked and approved, when, and what
happened since (re-applications after restores, purged backups). It is written as `running` before
the stage's transaction opens and settled `done` or `failed` after: a restore honours every erasure
that may have committed (`running` or `done`) and started after the backup it restores was taken,
so a bot that died mid-erasure errs on the side of forgetting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Index,
    Table,
    Text,
    desc,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import SQLAlchemyError

from bot.botdb import metadata, reading
from bot.erasure.identity import Person
from bot.erasure.plan import ErasureTarget
from bot.errors import UserFacingError
from bot.pii import scrub

STATES = ("running", "done", "failed")
BINDING = ("running", "done")  # erasures a restore must honour

erasures = Table(
    "erasures",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("stage", Text, nullable=False),
    Column("identifier_sha256", Text, nullable=False),
    Column("target", JSONB, nullable=False),
    Column("state", Text, nullable=False),
    Column("counts", JSONB, nullable=False, server_default="{}"),
    Column("requested_by", Text, nullable=False),
    Column("approved_by", JSONB, nullable=False, server_default="[]"),
    Column("reason", Text),
    Column("request_id", BigInteger),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True)),
    Column("verified", Text),
    Column("backups", JSONB, nullable=False, server_default="[]"),
    Column("events", JSONB, nullable=False, server_default="[]"),
    Index("erasures_stage_started_idx", "stage", "started_at"),
)


@dataclass(frozen=True)
class Erasure:
    id: int
    stage: str
    identifier_sha256: str
    target: ErasureTarget
    state: str
    counts: dict[str, int]
    requested_by: str
    approved_by: list[str]
    reason: str | None
    request_id: int | None
    started_at: datetime
    finished_at: datetime | None
    verified: str | None
    backups: list[dict[str, Any]]
    events: list[dict[str, Any]]

    @property
    def label(self) -> str:
        return self.target.person.label


def _erasure(row: Any) -> Erasure:
    values = dict(row._mapping)
    values["target"] = ErasureTarget.from_json(values["target"])
    return Erasure(**values)


class LedgerUnavailable(UserFacingError):
    outcome = "unavailable"


class ErasureLedger:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def start(
        self,
        *,
        stage: str,
        target: ErasureTarget,
        requested_by: str,
        approved_by: Sequence[str] = (),
        reason: str | None = None,
        request_id: int | None = None,
    ) -> Erasure:
        """Recorded before the stage's transaction opens (see the module docstring); no ledger, no erasure."""
        try:
            with self.engine.begin() as conn:
                row = conn.execute(
                    erasures.insert()
                    .values(
                        stage=stage,
                        identifier_sha256=target.person.normalised,
                        target=target.to_json(),
                        state="running",
                        requested_by=requested_by,
                        approved_by=list(approved_by),
                        reason=scrub(reason) if reason else None,  # free text: an email in it is masked
                        request_id=request_id,
                    )
                    .returning(*erasures.columns)
                ).one()
        except SQLAlchemyError as exc:
            raise LedgerUnavailable("the erasure ledger (bot database) is unavailable, so nothing was erased") from exc
        return _erasure(row)

    def finish(self, erasure_id: int, *, state: str, counts: dict[str, int], verified: str | None) -> Erasure:
        with self.engine.begin() as conn:
            row = conn.execute(
                update(erasures)
                .where(erasures.c.id == erasure_id)
                .values(state=state, counts=counts, verified=verified, finished_at=func.now())
                .returning(*erasures.columns)
            ).one()
        return _erasure(row)

    def set_backups(self, erasure_id: int, backups: list[dict[str, Any]]) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(erasures).where(erasures.c.id == erasure_id).values(backups=backups))

    def add_event(self, erasure_id: int, event: dict[str, Any], conn: Any = None) -> None:
        """Append to the row's history (a re-application, a purge); with `conn`, in the caller's transaction."""
        stmt = (
            update(erasures)
            .where(erasures.c.id == erasure_id)
            .values(events=erasures.c.events.op("||")(func.jsonb_build_array(literal(event, type_=JSONB))))
        )
        if conn is not None:
            conn.execute(stmt)
            return
        with self.engine.begin() as own:
            own.execute(stmt)

    def get(self, erasure_id: int) -> Erasure | None:
        with reading(self.engine) as conn:
            row = conn.execute(select(erasures).where(erasures.c.id == erasure_id)).first()
        return None if row is None else _erasure(row)

    def for_request(self, request_id: int) -> Erasure | None:
        """The newest erasure a request ran (a request left running by a dead process is settled from it)."""
        query = select(erasures).where(erasures.c.request_id == request_id).order_by(desc(erasures.c.id)).limit(1)
        with reading(self.engine) as conn:
            row = conn.execute(query).first()
        return None if row is None else _erasure(row)

    def binding_since(self, stage: str, since: datetime) -> list[Erasure]:
        """Erasures on `stage` that may have committed and started after `since` (oldest first)."""
        query = (
            select(erasures)
            .where(erasures.c.stage == stage, erasures.c.state.in_(BINDING), erasures.c.started_at > since)
            .order_by(erasures.c.id)
        )
        with reading(self.engine) as conn:
            return [_erasure(r) for r in conn.execute(query)]

    def erased(self, stage: str, person: Person) -> Erasure | None:
        """The newest committed erasure on `stage` of the person an identifier names, by any digest that
        found them: the identifier it was asked with, one of their emails, their user row's key."""
        query = (
            select(erasures).where(erasures.c.stage == stage, erasures.c.state == "done").order_by(desc(erasures.c.id))
        )
        with reading(self.engine) as conn:
            for row in conn.execute(query):
                target = ErasureTarget.from_json(row.target)
                if person.normalised in (target.person.normalised, *target.emails) or person.exact in (
                    target.person.exact,
                    *target.user_keys,
                ):
                    return _erasure(row)
        return None

    def latest(self, *, stage: str | None = None, limit: int = 20) -> list[Erasure]:
        query = select(erasures).order_by(desc(erasures.c.id)).limit(limit)
        if stage:
            query = query.where(erasures.c.stage == stage)
        with reading(self.engine) as conn:
            return [_erasure(r) for r in conn.execute(query)]
