"""The bot database side of the slow-query check: each stage's latest pg_stat_statements snapshot.

`statement_snapshots` keeps, per stage, the counters of the last snapshot (the next run's baseline),
the interval that ended with it (its busiest KEEP_QUERIES queries, what /mcp slow-queries shows) and
the text of the queries that alerted. Every stored interval is also added to statement_history.
Snapshots are taken and compared in bot/health/statements.py.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Connection, DateTime, Table, Text, func, select
from sqlalchemy.dialects.postgresql import JSONB, insert

from bot.botdb import metadata
from bot.health import statement_history
from bot.health.statements import KEEP_QUERIES, Interval, QueryInterval, Snapshot, Stored

statement_snapshots = Table(
    "statement_snapshots",
    metadata,
    Column("stage", Text, primary_key=True),
    Column("taken_at", DateTime(timezone=True), nullable=False),
    Column("stats_reset", DateTime(timezone=True)),
    Column("counters", JSONB, nullable=False),  # {"userid:queryid": [calls, total_ms]}
    # The interval that ended with this snapshot: its start and its busiest queries.
    Column("interval_start", DateTime(timezone=True)),
    Column("interval_queries", JSONB),
    # Text of the queries that alerted, so a query that stays slow is not looked up again: reading
    # text means reading the extension's whole text file.
    Column("texts", JSONB),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


def _interval_json(interval: Interval) -> list[dict[str, Any]]:
    return [{"q": q.queryid, "c": q.calls, "t": round(q.total_ms, 3)} for q in interval.queries[:KEEP_QUERIES]]


def load(conn: Connection, stage: str) -> Stored | None:
    row = conn.execute(select(statement_snapshots).where(statement_snapshots.c.stage == stage)).first()
    if row is None:
        return None
    snapshot = Snapshot(
        taken_at=row.taken_at,
        stats_reset=row.stats_reset,
        counters={k: (int(v[0]), float(v[1])) for k, v in row.counters.items()},
    )
    interval = None
    if row.interval_start is not None and row.interval_queries is not None:
        interval = Interval(
            start=row.interval_start,
            end=row.taken_at,
            reset=False,
            queries=[QueryInterval(int(q["q"]), int(q["c"]), float(q["t"])) for q in row.interval_queries],
        )
    return Stored(snapshot, interval, {int(k): str(v) for k, v in (row.texts or {}).items()})


def store(conn: Connection, stage: str, snapshot: Snapshot, interval: Interval | None, texts: dict[int, str]) -> None:
    values = {
        "texts": {str(k): v for k, v in texts.items()},
        "taken_at": snapshot.taken_at,
        "stats_reset": snapshot.stats_reset,
        "counters": {k: [c, round(t, 3)] for k, (c, t) in snapshot.counters.items()},
        "interval_start": interval.start if interval else None,
        "interval_queries": _interval_json(interval) if interval else None,
        "updated_at": func.now(),
    }
    conn.execute(
        insert(statement_snapshots)
        .values(stage=stage, **values)
        .on_conflict_do_update(index_elements=[statement_snapshots.c.stage], set_=values)
    )
    if interval is not None:
        statement_history.record(conn, stage, interval, KEEP_QUERIES)
