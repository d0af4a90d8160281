"""What the database's own per-row foreign-key lookups will cost: measured, multiplied, summed.

A set-based DELETE still makes the database look, once per deleted parent row and foreign key,
for referencing rows; on a column without an index each look is a scan of the child table. The
report measures that cost (a few probes of the very lookup the trigger runs, timed with EXPLAIN
ANALYZE) rather than guessing it, and proposes the missing index.

The cost model, calibrated once with bench/bench_delete.py on PostgreSQL 15:
- a set-based DELETE plus its materialised scope costs about DELETE_ROW_MS per row;
- an indexed lookup inside a trigger (cached plan, no EXPLAIN instrumentation) costs about
  INDEXED_LOOKUP_FACTOR of its probe, trigger overhead included (probes of 0.02-0.05 ms against
  12-15 us per firing measured in the delete);
- a scan without an index is dominated by the rows it reads, so its probe is the per-row cost,
  except that rows the delete removed earlier in the same transaction fail the visibility check
  before the key comparison: DEAD_TUPLE_FACTOR of the probe per such row (measured 0.37-0.66 on
  a shared 2-core machine, mostly near the low end; the probe itself reads a little high).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Select, Text, cast, column, func, literal, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import NullType

from bot.deletion.catalog import Catalog, ForeignKey, TableRef
from bot.deletion.plan import set_local
from bot.deletion.scopesql import CteSource, ScopeSql, sa_table
from bot.deletion.sqlext import ExplainAnalyze, as_type
from bot.indexes.naming import index_name

if TYPE_CHECKING:
    from bot.deletion.plan import DeletePlan

DELETE_ROW_MS = 0.004
INDEXED_LOOKUP_FACTOR = 0.35
DEAD_TUPLE_FACTOR = 0.4
PROBE_SAMPLES = 3
SCAN_SAMPLE_PAGES = 2000  # a big table's scan is measured on its first blocks (16 MB), then scaled
PROBE_BUDGET_MS = 100.0  # stop sampling one lookup once its probes took this long (one scan of a big table)
# Identifiers in text shown to people: quoted as PostgreSQL reads them (no paramstyle escaping of `%`).
_QUOTE = postgresql.dialect(paramstyle="named").identifier_preparer.quote


@dataclass
class SlowKey:
    """A foreign-key column without an index that the delete scans once per deleted parent row."""

    table: str
    columns: list[str]
    parent: str
    parent_rows: int
    per_row_ms: float
    estimated_s: float
    create_index: str
    rule: str
    schema: str = ""  # the table's schema and name apart (for the Create index button)
    name: str = ""


def _execution_ms(conn: Connection, query: Select[Any]) -> float:
    plan = conn.execute(ExplainAnalyze(query)).scalar_one()
    if isinstance(plan, str):
        plan = json.loads(plan)
    return float(plan[0]["Execution Time"])


def _lookup(catalog: Catalog, fk: ForeignKey, values: tuple[Any, ...], pages: int | None = None) -> Select[Any]:
    """The lookup an RI trigger runs for one deleted parent row (without FOR KEY SHARE: read-only).

    With `pages`, only the table's first `pages` blocks are read (a TID range scan, sequential
    like the full scan it stands for).
    """
    child = sa_table(catalog, fk.child)
    parent = catalog.table(fk.parent)
    conditions = [
        child.c[c] == as_type(v, parent.type_of(p), f"v{i}")
        for i, (c, p, v) in enumerate(zip(fk.child_columns, fk.parent_columns, values, strict=True))
    ]
    if pages is not None:
        conditions.append(column("ctid", _selectable=child) < literal(f"({pages},0)", type_=NullType()))
    return select(literal(1)).select_from(child).where(*conditions)


def _probe(conn: Connection, catalog: Catalog, fk: ForeignKey, samples: list[tuple[Any, ...]]) -> float:
    """Milliseconds one lookup takes: the median of a few keys, within PROBE_BUDGET_MS."""
    timings: list[float] = []
    spent = 0.0
    for values in samples[:PROBE_SAMPLES]:
        took = _execution_ms(conn, _lookup(catalog, fk, values))
        timings.append(took)
        spent += took
        if spent > PROBE_BUDGET_MS:
            break
    return statistics.median(timings) if timings else 0.0


def _scan_probe(conn: Connection, catalog: Catalog, fk: ForeignKey, samples: list[tuple[Any, ...]]) -> float:
    """Milliseconds a lookup without an index takes: a scan of the whole child table.

    A big table is measured on a sequential slice of its blocks and scaled by its size, so the
    report does not pay a full scan per unindexed table.
    """
    pages = catalog.table(fk.child).pages
    if pages <= SCAN_SAMPLE_PAGES * 2:
        return _probe(conn, catalog, fk, samples)
    # Three times, keeping the fastest: the first read may have to bring the blocks into cache, and a busy
    # machine slows some runs (the scaled-up figure multiplies any slowness).
    values = samples[0]
    timings = [_execution_ms(conn, _lookup(catalog, fk, values, SCAN_SAMPLE_PAGES)) for _ in range(3)]
    return min(timings) * pages / SCAN_SAMPLE_PAGES


def key_sample(plan: DeletePlan, sql: ScopeSql, ref: TableRef) -> Any:
    """Up to PROBE_SAMPLES rows of the scope's referenced columns, as a JSON array of arrays.

    Values come back as text, as PostgreSQL prints them, and are bound cast to the referenced column's
    own type in the probe (an integer[] key as JSON would come back a smallint[], a composite an object).
    """
    source = sql.source
    assert isinstance(source, CteSource)
    cte = source.cte(ref)
    cols = plan.graph.needed_columns(ref)
    few = select(*(cte.c[c] for c in cols)).limit(PROBE_SAMPLES).subquery()
    return select(func.json_agg(func.json_build_array(*(cast(few.c[c], Text) for c in cols)))).scalar_subquery()


def estimate_cascades(
    conn: Connection, plan: DeletePlan, counts: dict[str, int], key_samples: dict[TableRef, list[tuple[Any, ...]]]
) -> tuple[list[SlowKey], float]:
    """Per deleted parent row and foreign key, one lookup: measured, multiplied, summed."""
    set_local(conn, "max_parallel_workers_per_gather", "0")  # RI lookups never run in parallel
    catalog = plan.catalog
    seq_scan_ms: dict[TableRef, float] = {}
    slow: list[SlowKey] = []
    total_s = 0.0
    deleted = {s.table: counts.get(s.snapshot_key, 0) for s in plan.delete_steps}
    for step in plan.delete_steps:
        parent_rows = counts.get(step.snapshot_key, 0)
        fks = catalog.referencing(step.table)
        if not parent_rows or not fks:
            continue
        needed = plan.graph.needed_columns(step.table)
        samples = key_samples.get(step.table, [])
        if not samples:
            continue
        for fk in fks:
            picked = [tuple(s[needed.index(c)] for c in fk.parent_columns) for s in samples]
            if fk.indexed:
                per_row = _probe(conn, catalog, fk, picked) * INDEXED_LOOKUP_FACTOR
            else:
                # Without an index the lookup is a scan of the whole child table, whatever the key.
                if fk.child not in seq_scan_ms:
                    seq_scan_ms[fk.child] = _scan_probe(conn, catalog, fk, picked)
                gone = min(deleted.get(fk.child, 0) / max(catalog.table(fk.child).estimated_rows, 1.0), 1.0)
                per_row = seq_scan_ms[fk.child] * ((1 - gone) + gone * DEAD_TUPLE_FACTOR)
            cost_s = parent_rows * per_row / 1000
            total_s += cost_s
            if not fk.indexed:
                slow.append(
                    SlowKey(
                        table=str(fk.child),
                        columns=list(fk.child_columns),
                        parent=str(fk.parent),
                        parent_rows=parent_rows,
                        per_row_ms=round(per_row, 4),
                        estimated_s=round(cost_s, 3),
                        create_index=create_index_statement(fk),
                        rule=fk.on_delete,
                        schema=fk.child.schema,
                        name=fk.child.name,
                    )
                )
    slow.sort(key=lambda s: s.estimated_s, reverse=True)
    return slow, total_s


def create_index_statement(fk: ForeignKey) -> str:
    """The index that turns each per-row scan into an index lookup; run it outside the delete."""
    quote = _QUOTE
    name = index_name(fk.child.name, fk.child_columns)  # the name the bot's Create index gives it
    columns = ", ".join(quote(c) for c in fk.child_columns)
    return (
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {quote(name)} "
        f"ON {quote(fk.child.schema)}.{quote(fk.child.name)} ({columns});"
    )
