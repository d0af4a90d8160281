"""Samples of stage numbers kept in the bot database, for checks that compare with the past.

Growth compares database and table sizes with a week ago, the sequence check measures how fast
values are used, the unused-index check needs to know how long it has watched an index. A check
hands back `Sample`s with its report; the monitor stores them in the transaction that records
the run's alerts, at most one per (stage, kind, object) every MIN_GAP, and drops those older than
KEEP. Checks read them through `History`, bound to one stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    PrimaryKeyConstraint,
    Table,
    Text,
    and_,
    delete,
    func,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import insert

from bot.botdb import metadata, reading

MIN_GAP = timedelta(minutes=30)
KEEP = timedelta(days=100)

health_samples = Table(
    "health_samples",
    metadata,
    Column("stage", Text, nullable=False),
    Column("kind", Text, nullable=False),  # database_size, table_size, sequence, index_seen, stats_epoch
    Column("object", Text, nullable=False),
    Column("taken_at", DateTime(timezone=True), nullable=False),
    Column("value", BigInteger, nullable=False),
    PrimaryKeyConstraint("stage", "kind", "object", "taken_at"),
)


@dataclass(frozen=True)
class Sample:
    kind: str
    object: str
    value: int


@dataclass(frozen=True)
class Point:
    taken_at: datetime
    value: int


class History:
    """One stage's samples, read from the bot database (never from the stage)."""

    def __init__(self, engine: Engine | None, stage: str) -> None:
        self.engine = engine
        self.stage = stage

    def oldest(
        self, kind: str, objects: list[str] | None = None, *, within: timedelta | None = None
    ) -> dict[str, Point]:
        """The oldest sample of each object (of `objects`, or all), not older than `within` if given."""
        if self.engine is None or objects == []:
            return {}
        first = (
            select(
                health_samples.c.object,
                func.min(health_samples.c.taken_at).label("taken_at"),
            )
            .where(health_samples.c.stage == self.stage, health_samples.c.kind == kind)
            .group_by(health_samples.c.object)
        )
        if objects is not None:
            first = first.where(health_samples.c.object.in_(objects))
        if within is not None:
            first = first.where(health_samples.c.taken_at >= func.now() - within)
        firsts = first.subquery()
        query = (
            select(health_samples.c.object, health_samples.c.taken_at, health_samples.c.value)
            .join(
                firsts,
                and_(
                    health_samples.c.object == firsts.c.object,
                    health_samples.c.taken_at == firsts.c.taken_at,
                ),
            )
            .where(health_samples.c.stage == self.stage, health_samples.c.kind == kind)
        )
        with reading(self.engine) as conn:
            return {r.object: Point(r.taken_at, int(r.value)) for r in conn.execute(query)}


def store(conn: Connection, stage: str, samples: list[Sample]) -> int:
    """Keep `samples` (taken now), skipping objects sampled within MIN_GAP; drop this stage's old ones."""
    if not samples:
        return 0
    now: datetime = conn.execute(select(func.now())).scalar_one()
    keys = {(s.kind, s.object) for s in samples}
    recent = set(
        (r.kind, r.object)
        for r in conn.execute(
            select(health_samples.c.kind, health_samples.c.object).where(
                health_samples.c.stage == stage,
                health_samples.c.taken_at > now - MIN_GAP,
                tuple_(health_samples.c.kind, health_samples.c.object).in_(sorted(keys)),
            )
        ).all()
    )
    rows = {
        (s.kind, s.object): {
            "stage": stage,
            "kind": s.kind,
            "object": s.object[:500],
            "taken_at": now,
            "value": s.value,
        }
        for s in samples
        if (s.kind, s.object) not in recent
    }
    if rows:
        conn.execute(insert(health_samples).values(list(rows.values())).on_conflict_do_nothing())
    conn.execute(delete(health_samples).where(health_samples.c.stage == stage, health_samples.c.taken_at < now - KEEP))
    return len(rows)
