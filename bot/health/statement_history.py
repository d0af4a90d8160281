"""Each measured interval's busiest statements, kept for a while: the points of a slow query's chart.

`statement_snapshots` keeps only a stage's latest snapshot and interval; every stored interval also
adds its queries here (the same KEEP_QUERIES busiest), so a query's mean time per interval can be
drawn. Rows older than HISTORY_DAYS are deleted as new ones arrive.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Column, Connection, DateTime, Float, Index, Table, Text, delete, select
from sqlalchemy.dialects.postgresql import insert

from bot.botdb import metadata

HISTORY_DAYS = 7
SERIES_POINTS = 48  # the latest intervals shown in a chart

statement_intervals = Table(
    "statement_intervals",
    metadata,
    Column("stage", Text, primary_key=True),
    Column("ended_at", DateTime(timezone=True), primary_key=True),
    Column("queryid", BigInteger, primary_key=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("calls", BigInteger, nullable=False),
    Column("total_ms", Float, nullable=False),
    Index("statement_intervals_query", "stage", "queryid", "ended_at"),
)


def record(conn: Connection, stage: str, interval: Any, keep: int) -> None:
    """Add one interval's `keep` busiest queries (calls > 0) and drop the stage's rows past HISTORY_DAYS."""
    rows = [
        {
            "stage": stage,
            "ended_at": interval.end,
            "queryid": q.queryid,
            "started_at": interval.start,
            "calls": q.calls,
            "total_ms": q.total_ms,
        }
        for q in interval.queries[:keep]
        if q.calls > 0
    ]
    if rows:
        conn.execute(insert(statement_intervals).values(rows).on_conflict_do_nothing())
    conn.execute(
        delete(statement_intervals).where(
            statement_intervals.c.stage == stage,
            statement_intervals.c.ended_at < interval.end - timedelta(days=HISTORY_DAYS),
        )
    )


def mean_series(
    conn: Connection, stage: str, queryid: int, points: int = SERIES_POINTS
) -> list[tuple[datetime, float]]:
    """(end of interval, mean ms) of the latest `points` intervals in which the query ran, oldest first."""
    rows = conn.execute(
        select(statement_intervals.c.ended_at, statement_intervals.c.calls, statement_intervals.c.total_ms)
        .where(statement_intervals.c.stage == stage, statement_intervals.c.queryid == queryid)
        .order_by(statement_intervals.c.ended_at.desc())
        .limit(points)
    ).all()
    return [(r.ended_at, r.total_ms / r.calls) for r in reversed(rows)]
