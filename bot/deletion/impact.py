"""The impact report: every table's count in one statement, blockers with their rows, triggers, costs.

The counts are the plan's scopes evaluated as subqueries over shared CTEs in one read-only
statement (one snapshot). Nothing is left out silently: a table the delete reaches is listed
even with 0 rows, and anything that would make the database refuse (rows outside the scope that
RESTRICT protects, a SET NULL into a NOT NULL column or domain, a SET DEFAULT whose default has no
parent row, a missing privilege) is a blocker, shown before anyone approves.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Connection, Select, func, select
from sqlalchemy.dialects.postgresql import array
from sqlalchemy.exc import DBAPIError

from bot.deletion import dberrors
from bot.deletion.blockers import Blocker, blocking_rows, edge_rows, set_blockers
from bot.deletion.catalog import ForeignKey, TableRef
from bot.deletion.cost import DELETE_ROW_MS, SlowKey, estimate_cascades, key_sample
from bot.deletion.plan import WORK_MEM, DeletePlan, PlanProblem, Step, build_plan, set_local
from bot.deletion.scope import Rules
from bot.deletion.scopesql import CteSource, ScopeSql, sa_table
from bot.slacktext.words import plural

__all__ = [
    "Blocker",
    "ElsewhereRows",
    "ImpactReport",
    "SlowKey",
    "TableCount",
    "TriggerNote",
    "compare_snapshots",
    "measure_impact",
    "plan_and_measure",
    "snapshot_hash",
]


@dataclass
class TableCount:
    table: str
    key: str
    action: str
    rows: int
    via: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ElsewhereRows:
    table: str
    edge: str  # the foreign key to the server row these rows do not match
    rows: int


@dataclass(frozen=True)
class TriggerNote:
    """A user trigger on a table the delete changes: its effects are neither counted nor backed up."""

    table: str
    trigger: str
    definition: str
    on_delete: bool  # fires while the delete runs
    on_restore: str  # "" does not fire on restore, "disabled" a restore turns it off, "fires" it will fire


@dataclass
class ImpactReport:
    slug: str
    server_key: dict[str, str]
    tables: list[TableCount]
    orphaned_users: int
    total_rows: int
    blockers: list[Blocker]
    slow_keys: list[SlowKey]
    estimated_s: float
    snapshot: dict[str, int]
    snapshot_hash: str
    took_ms: int
    checked_tables: int = 0
    limit_s: float = 0.0  # the most a delete may take on this stage (DELETE_TIMEOUT_SECONDS); 0 if unknown
    # Rows in scope that point at another server: they go because an orphaned user of this one goes.
    elsewhere: list[ElsewhereRows] = field(default_factory=list)
    triggers: list[TriggerNote] = field(default_factory=list)
    # How the tables in scope differ from MIGRATION_REFERENCE_STAGE, in plain lines (bot/schema/impact.py).
    schema_warnings: list[str] = field(default_factory=list)

    @property
    def deletable(self) -> bool:
        return not self.blockers

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImpactReport:
        values = dict(data)
        values["tables"] = [TableCount(**t) for t in data.get("tables", [])]
        values["blockers"] = [Blocker(**b) for b in data.get("blockers", [])]
        values["slow_keys"] = [SlowKey(**s) for s in data.get("slow_keys", [])]
        values["elsewhere"] = [ElsewhereRows(**e) for e in data.get("elsewhere", [])]
        values["triggers"] = [TriggerNote(**t) for t in data.get("triggers", [])]
        return cls(**values)


def snapshot_hash(snapshot: dict[str, int]) -> str:
    canonical = json.dumps(sorted(snapshot.items()), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def compare_snapshots(approved: dict[str, int], fresh: dict[str, int], drift_percent: float = 0.0) -> list[str]:
    """What changed, in words; empty when `fresh` is within `drift_percent` of `approved` everywhere."""
    changes: list[str] = []
    for key in sorted(set(approved) | set(fresh)):
        before, after = approved.get(key), fresh.get(key, 0)
        if before is None:
            # A table (or edge) the confirmed plan did not have: the catalog changed, even if it is empty now.
            changes.append(f"{key}: new in the plan ({plural(after, 'row')})")
            continue
        if after == before:
            continue
        allowed = before * drift_percent / 100.0
        if abs(after - before) > allowed:
            changes.append(f"{key}: {before:,} → {after:,}")
    return changes


def _root_edges(plan: DeletePlan, ref: TableRef) -> list[ForeignKey]:
    graph = plan.graph
    return [fk for fk in plan.catalog.foreign_keys if graph.node(fk.child) == ref and fk.parent == graph.root]


def _count_queries(plan: DeletePlan, sql: ScopeSql) -> list[tuple[list[str], Select[Any]]]:
    """The counts of every step and blocking edge, over shared CTEs (the read path of the scope).

    Each query yields one value: a count, or an array of counts for the keys listed with it.
    """
    graph = plan.graph
    source = sql.source
    assert isinstance(source, CteSource)
    queries: list[tuple[list[str], Select[Any]]] = []
    referenced = {fk.parent for fk in plan.catalog.foreign_keys if fk.parent in graph.tables}
    folded: set[str] = set()
    # Parents first: each scope's CTE is then compiled before the scopes that read it, so a chain of
    # hundreds of tables does not nest one compilation inside the next (past Python's stack).
    for step in [*reversed(plan.delete_steps), *plan.set_steps]:
        if step.action != "delete":
            assert step.edge is not None
            queries.append(([step.snapshot_key], edge_rows(plan, sql, step.edge, count=True)))
            continue
        if step.table in referenced:
            queries.append(([step.snapshot_key], select(func.count()).select_from(source.cte(step.table))))
            continue
        t = sa_table(graph, step.table).alias()
        # Edges from this table to the server row are counted in the same scan: rows in scope that
        # point at the server. For a blocking edge the rows pointing at it, minus those, would block the
        # delete; for any edge, rows in scope that do not point at it belong elsewhere (another server's
        # rows reached through an orphaned user).
        to_root = _root_edges(plan, step.table) if sql.root_is_one_row() else []
        if not to_root:
            queries.append(
                ([step.snapshot_key], select(func.count()).select_from(t).where(sql.predicate(step.table, t)))
            )
            continue
        counts = [func.count()] + [func.count().filter(sql.edge_match(t, fk)) for fk in to_root]
        keys = [step.snapshot_key] + [f"in scope {fk.name}" for fk in to_root]
        queries.append((keys, select(array(counts)).select_from(t).where(sql.predicate(step.table, t))))
        for fk in to_root:
            if fk not in plan.blocking:
                continue
            r = sa_table(graph, step.table).alias()
            queries.append(([f"refs {fk.name}"], select(func.count()).select_from(r).where(sql.edge_match(r, fk))))
            folded.add(fk.name)
    for fk in plan.blocking:
        if fk.name not in folded:
            queries.append(([f"blocker {fk.name}"], edge_rows(plan, sql, fk, count=True)))
    return queries


def _unpack_counts(
    plan: DeletePlan, queries: list[tuple[list[str], Select[Any]]], row: Any
) -> tuple[dict[str, int], list[ElsewhereRows]]:
    """The snapshot counts, and rows in scope that point at another server than the one deleted."""
    counts: dict[str, int] = {}
    for i, (keys, _) in enumerate(queries):
        values = row[i] if len(keys) > 1 else [row[i]]
        counts.update({key: int(value) for key, value in zip(keys, values, strict=True)})
    elsewhere: list[ElsewhereRows] = []
    for step in plan.delete_steps:
        for fk in _root_edges(plan, step.table):
            in_scope = counts.get(f"in scope {fk.name}")
            if in_scope is None:
                continue
            other = counts[step.snapshot_key] - in_scope
            if other > 0:
                elsewhere.append(ElsewhereRows(table=str(step.table), edge=fk.describe(), rows=other))
    for fk in plan.blocking:
        if f"refs {fk.name}" in counts:
            counts[f"blocker {fk.name}"] = counts.pop(f"refs {fk.name}") - counts[f"in scope {fk.name}"]
    for key in [k for k in counts if k.startswith("in scope ")]:
        del counts[key]
    return counts, elsewhere


def trigger_notes(plan: DeletePlan) -> list[TriggerNote]:
    """User triggers on what the delete changes: what fires during the delete, and what a restore of its
    rows would fire (unless it may turn them off: the role owns the table)."""
    catalog = plan.catalog
    notes: dict[tuple[TableRef, str], TriggerNote] = {}
    for step in plan.steps:
        deleting = ("DELETE",) if step.action == "delete" else ("UPDATE",)
        restoring = ("INSERT",) if step.action == "delete" else ("UPDATE",)
        for trigger in catalog.firing(step.table, deleting + restoring):
            if (trigger.table, trigger.name) in notes:
                continue
            restores = bool(set(trigger.events) & set(restoring))
            notes[(trigger.table, trigger.name)] = TriggerNote(
                table=str(trigger.table),
                trigger=trigger.name,
                definition=trigger.summary,
                on_delete=bool(set(trigger.events) & set(deleting)),
                on_restore="" if not restores else "disabled" if catalog.table(trigger.table).owned else "fires",
            )
    return list(notes.values())


def measure_impact(conn: Connection, plan: DeletePlan, *, probe: bool = True) -> ImpactReport:
    """Counts (one statement, one snapshot), blockers with their rows, triggers, slow keys and the estimate."""
    started = time.perf_counter()
    set_local(conn, "work_mem", WORK_MEM)
    set_local(conn, "row_security", "off")  # rows hidden from the role: an error, never a short count
    sql = plan.scope_sql()
    queries = _count_queries(plan, sql)
    # A few keys of every scope other tables point at, for the cost probes: taken from the same
    # CTEs in the same statement, so probing costs no second evaluation of any scope.
    parents = [s.table for s in plan.delete_steps if probe and plan.catalog.referencing(s.table)]
    sample_columns = [key_sample(plan, sql, ref).label(f"k{i}") for i, ref in enumerate(parents)]
    columns = [q.scalar_subquery().label(f"c{i}") for i, (_, q) in enumerate(queries)]
    row = conn.execute(select(*columns, *sample_columns)).one()
    counts, elsewhere = _unpack_counts(plan, queries, row)
    key_samples = {ref: [tuple(values) for values in (row[len(queries) + i] or [])] for i, ref in enumerate(parents)}

    blockers = [Blocker(table="", edge="", rows=0, reason=problem) for problem in plan.problems]
    blockers += blocking_rows(conn, plan, counts)
    blockers += set_blockers(conn, plan, counts)
    tables = [
        TableCount(
            table=str(step.table),
            key=step.snapshot_key,
            action=step.action,
            rows=counts[step.snapshot_key],
            via=plan.via(step.table) if step.action == "delete" else [step.edge.describe()] if step.edge else [],
            columns=list(step.columns),
        )
        for step in report_order(plan)
    ]
    orphans = plan.graph.orphans
    orphaned = counts.get(orphans.users.qualified, 0) if orphans else 0
    total = sum(counts[s.snapshot_key] for s in plan.delete_steps)
    slow_keys: list[SlowKey] = []
    estimated_s = total * DELETE_ROW_MS / 1000
    if probe:
        slow_keys, cascade_s = estimate_cascades(conn, plan, counts, key_samples)
        estimated_s += cascade_s
    return ImpactReport(
        slug=plan.slug,
        server_key=plan.server_key,
        tables=tables,
        orphaned_users=orphaned,
        total_rows=total,
        blockers=blockers,
        slow_keys=slow_keys,
        estimated_s=estimated_s,
        snapshot=counts,
        snapshot_hash=snapshot_hash(counts),
        took_ms=int((time.perf_counter() - started) * 1000),
        checked_tables=len(plan.catalog.tables),
        elsewhere=elsewhere,
        triggers=trigger_notes(plan),
    )


def report_order(plan: DeletePlan) -> list[Step]:
    """Parents first reads best: the server, then what hangs off it; SET NULL rows last."""
    position = {ref: i for i, ref in enumerate(plan.graph.order)}
    deletes = sorted(plan.delete_steps, key=lambda s: position.get(s.table, len(position)))
    return deletes + plan.set_steps


def plan_and_measure(
    conn: Connection,
    slug: str | None = None,
    *,
    server_key: Mapping[str, Any] | None = None,
    probe: bool = True,
    rules: Rules | None = None,
) -> tuple[DeletePlan, ImpactReport]:
    """`build_plan` (by slug, primary key or both) and its impact report, in the caller's transaction.

    A database error on the way (a privilege missed by the checks, a statement timeout) is a
    PlanProblem in words, never a bare SQLSTATE.
    """
    try:
        plan = build_plan(conn, slug, server_key=server_key, rules=rules)
        return plan, measure_impact(conn, plan, probe=probe)
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) in ("57014", "55P03", "40001", "40P01") or exc.connection_invalidated:
            raise  # the stage words these (timeout, lock, unreachable)
        raise PlanProblem("the impact could not be counted: " + dberrors.describe(exc)) from exc
