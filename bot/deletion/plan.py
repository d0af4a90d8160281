"""The delete plan and the impact report: what will go, in which order, what blocks it, how long.

Order: SET NULL/SET DEFAULT updates first, then one set-based DELETE per table, children
before parents along every foreign key among the tables in scope, so the database's
per-row cascade triggers find nothing left to do. Those triggers still *look*, once per
deleted parent row and foreign key; on a column without an index each look is a scan of
the child table. The report measures that cost (a few probes of the very lookup the
trigger runs, timed with EXPLAIN ANALYZE) rather than guessing it.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Connection, Select, and_, bindparam, column, func, literal, select, table, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import array
from sqlalchemy.types import NullType

from bot.deletion.catalog import Catalog, ForeignKey, TableRef, load_catalog, resolve_table
from bot.deletion.scope import (
    ROOT_SLUG,
    ROOT_TABLE,
    SESSION_TABLE,
    USER_TABLE,
    CteSource,
    RootFilter,
    ScopeError,
    ScopeGraph,
    ScopeSql,
    build_graph,
    sa_table,
    topological,
)
from bot.deletion.sqlext import ExplainAnalyze
from bot.errors import NotFound, UserFacingError

# The cost model. Measured per report: each foreign key's lookup (the query an RI trigger runs for
# one deleted parent row), timed with EXPLAIN ANALYZE on a few real keys of the scope.
# Calibrated once with bench/bench_delete.py on PostgreSQL 15:
# - a set-based DELETE plus its materialised scope costs about DELETE_ROW_MS per row;
# - an indexed lookup inside a trigger (cached plan, no EXPLAIN instrumentation) costs about
#   INDEXED_LOOKUP_FACTOR of its probe, trigger overhead included (probes of 0.02-0.05 ms against
#   12-15 us per firing measured in the delete);
# - a scan without an index is dominated by the rows it reads, so its probe is the per-row cost,
#   except that rows the delete removed earlier in the same transaction fail the visibility check
#   before the key comparison: DEAD_TUPLE_FACTOR of the probe per such row (measured 0.37-0.66 on
#   a shared 2-core machine, mostly near the low end; the probe itself reads a little high).
DELETE_ROW_MS = 0.004
INDEXED_LOOKUP_FACTOR = 0.35
DEAD_TUPLE_FACTOR = 0.4
PROBE_SAMPLES = 3
SCAN_SAMPLE_PAGES = 2000  # a big table's scan is measured on its first blocks (16 MB), then scaled
PROBE_BUDGET_MS = 100.0  # stop sampling one lookup once its probes took this long (one scan of a big table)
BLOCKER_SAMPLE_ROWS = 5
WORK_MEM = "64MB"  # scope hashes of 100k+ keys must stay hashed (see execute.py)
_PG = postgresql.dialect()


class PlanProblem(UserFacingError):
    """The delete cannot be planned (no such table, a cycle, a table without a key)."""

    outcome = "blocked"


@dataclass(frozen=True)
class Step:
    table: TableRef
    key: tuple[str, ...]
    action: str  # "delete", "set null" or "set default"
    columns: tuple[str, ...] = ()
    edge: ForeignKey | None = None

    @property
    def snapshot_key(self) -> str:
        if self.edge is None:
            return self.table.qualified
        return f"{self.table.qualified} {self.action} ({', '.join(self.columns)}) via {self.edge.name}"


@dataclass
class DeletePlan:
    slug: str
    graph: ScopeGraph
    steps: list[Step]  # set steps, then deletes children before parents
    blocking: list[ForeignKey]  # NO ACTION/RESTRICT edges into tables in scope
    problems: list[str] = field(default_factory=list)
    root_row: dict[str, Any] = field(default_factory=dict)  # the server's key and referenced columns
    # A rooted plan (build_rooted_plan): the rows each root table starts from, instead of the slug.
    root_filters: Mapping[TableRef, RootFilter] | None = None

    @property
    def catalog(self) -> Catalog:
        return self.graph.catalog

    @property
    def delete_steps(self) -> list[Step]:
        return [s for s in self.steps if s.action == "delete"]

    @property
    def set_steps(self) -> list[Step]:
        return [s for s in self.steps if s.action != "delete"]

    @property
    def server_key(self) -> dict[str, str]:
        """The server's primary key, column -> value as text: what a request binds (see `build_plan`)."""
        return {k: str(self.root_row[k]) for k in self.graph.key(self.graph.root) if k in self.root_row}

    def scope_sql(self, source_factory: Any = CteSource, prefix: str = "scope") -> ScopeSql:
        return ScopeSql(
            self.graph,
            self.root_row,
            source_factory=source_factory,
            prefix=prefix,
            root_filters=self.root_filters,
        )

    def via(self, ref: TableRef) -> list[str]:
        """Why rows of `ref` are in scope, in words."""
        reasons: list[str] = []
        if self.root_filters is not None:
            if ref in self.root_filters:
                reasons.append(f"the rows {self.slug} starts from")
        elif ref == self.graph.root:
            reasons.append(f"the server (`{ROOT_SLUG}`)")
        if self.graph.orphans is not None and ref == self.graph.orphans.users:
            reasons.append(f"orphaned: every session in {self.graph.orphans.sessions} belongs to the server")
        for fk in self.graph.scope_edges.get(ref, []):
            reasons.append(f"cascade from {fk.parent} ({', '.join(fk.child_columns)})")
        for fk in self.graph.self_edges.get(ref, []):
            reasons.append(f"cascade from itself ({', '.join(fk.child_columns)})")
        return reasons


class ServerGone(NotFound):
    """The server a request was bound to (by primary key) no longer exists."""

    outcome = "stale"


class ServerChanged(UserFacingError):
    """The server a request was bound to exists, but is no longer named by the slug people approved."""

    outcome = "stale"


def _describe_key(key: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in key.items())


def find_server(
    conn: Connection,
    root: TableRef,
    catalog: Catalog,
    columns: Sequence[str],
    *,
    slug: str | None,
    server_key: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The root row's `columns`, found by primary key (a bound request) or by slug (a command).

    With both, the row found by key must still carry that slug: a slug reused by another server never
    redirects a request, and a renamed server is not silently the one approved.
    """
    t = sa_table(catalog, root)
    pk = catalog.table(root).key
    query = select(*(t.c[c] for c in columns))
    if server_key is not None:
        if set(server_key) != set(pk):
            raise PlanProblem(
                f"the request names the server by ({', '.join(sorted(server_key))}), but the primary key of "
                f"{root} is ({', '.join(pk)})"
            )
        query = query.where(*(t.c[k] == _param(f"key_{i}", server_key[k]) for i, k in enumerate(pk)))
    elif slug is not None:
        query = query.where(t.c[ROOT_SLUG] == _param("slug", slug))
    else:
        raise ValueError("a plan needs a slug or a server key")
    found = conn.execute(query).first()
    if found is None:
        if server_key is not None:
            raise ServerGone(f"the server ({_describe_key(server_key)}) no longer exists")
        raise NotFound(f"no server with slug `{slug}`")
    row = dict(zip(columns, found, strict=True))
    if server_key is not None and slug is not None and str(row[ROOT_SLUG]) != slug:
        raise ServerChanged(f"the server ({_describe_key(server_key)}) is now called `{row[ROOT_SLUG]}`, not `{slug}`")
    return row


def build_plan(conn: Connection, slug: str | None = None, *, server_key: Mapping[str, Any] | None = None) -> DeletePlan:
    """Read the catalog and decide the steps for one server.

    Name the server by `slug` (a command), by `server_key` (its primary key columns -> values, as
    `ImpactReport.server_key` and `DeletePlan.server_key` give them: what a request binds), or by both
    (the key decides; the slug must still match). Raises NotFound for an unknown slug, ServerGone for a
    key that no longer exists, ServerChanged when the keyed row no longer carries the slug.
    """
    catalog = load_catalog(conn)
    root = resolve_table(conn, ROOT_TABLE)
    if root is None or root not in catalog.tables:
        raise PlanProblem(f"this database has no `{ROOT_TABLE}` table")
    users = resolve_table(conn, USER_TABLE)
    sessions = resolve_table(conn, SESSION_TABLE)
    try:
        graph = build_graph(catalog, root, users, sessions)
    except ScopeError as exc:
        raise PlanProblem(str(exc)) from None
    needed = list(graph.needed_columns(root))
    if ROOT_SLUG not in needed:
        needed.append(ROOT_SLUG)
    root_row = find_server(conn, root, catalog, needed, slug=slug, server_key=server_key)
    steps, blocking, problems = _plan_steps(catalog, graph)
    return DeletePlan(
        slug=str(root_row[ROOT_SLUG]), graph=graph, steps=steps, blocking=blocking, problems=problems, root_row=root_row
    )


def build_rooted_plan(
    conn: Connection,
    roots: Mapping[TableRef, RootFilter],
    *,
    label: str,
    catalog: Catalog | None = None,
    root_row: dict[str, Any] | None = None,
) -> DeletePlan:
    """A plan whose scope starts at given rows of any tables (forget-user: a person's user rows), not a server.

    The first of `roots` is the graph's root; every root table's scope is the rows its filter picks
    plus whatever cascades into it. No orphan rule. A filter of the first root must not read temp
    tables: after a commit whose outcome is unknown, it is how the rows are looked for again.
    `root_row`: the first root's referenced columns when it is one known row (constants for the planner).
    """
    catalog = catalog or load_catalog(conn)
    tables = list(roots)
    missing = [t for t in tables if t not in catalog.tables]
    if not tables or missing:
        raise PlanProblem(f"this database has no table {', '.join(str(t) for t in missing) or '(none given)'}")
    try:
        graph = build_graph(catalog, tables[0], None, None, extra_roots=tables[1:])
    except ScopeError as exc:
        raise PlanProblem(str(exc)) from None
    steps, blocking, problems = _plan_steps(catalog, graph)
    return DeletePlan(
        slug=label,
        graph=graph,
        steps=steps,
        blocking=blocking,
        problems=problems,
        root_row=dict(root_row or {}),
        root_filters=dict(roots),
    )


def _plan_steps(catalog: Catalog, graph: ScopeGraph) -> tuple[list[Step], list[ForeignKey], list[str]]:
    """SET NULL/SET DEFAULT steps, then deletes children before parents; blocking edges; problems."""
    problems = [
        "a cascade cycle between " + ", ".join(str(t) for t in cycle) + " (the engine does not delete through cycles)"
        for cycle in graph.cycles
    ]
    in_scope = graph.tables
    pairs = [(fk.parent, fk.child) for fk in catalog.foreign_keys if fk.parent in in_scope and fk.child in in_scope]
    parents_first, cycles = topological(sorted(in_scope), pairs)
    for cycle in cycles:
        problems.append(
            "a foreign-key cycle between " + ", ".join(str(t) for t in cycle) + " (no order deletes children first)"
        )
    order = list(reversed(parents_first)) + [t for c in cycles for t in c]
    steps: list[Step] = []
    blocking: list[ForeignKey] = []
    for fk in catalog.foreign_keys:
        if fk.parent not in in_scope:
            continue
        if fk.sets:
            steps.append(
                Step(
                    table=fk.child,
                    key=graph.key(fk.child) if fk.child in catalog.tables else (),
                    action=fk.on_delete,
                    columns=fk.set_columns,
                    edge=fk,
                )
            )
        elif fk.blocking:
            blocking.append(fk)
    for step in steps:
        if not step.key:
            problems.append(f"table {step.table} has no primary key, so its SET NULL rows can't be addressed")
    steps += [Step(table=ref, key=graph.key(ref), action="delete") for ref in order]
    return steps, blocking, problems


def server_exists(conn: Connection, slug: str | None = None, *, server_key: Mapping[str, Any] | None = None) -> bool:
    """Is the server there (by primary key if given, else by slug)? False when there is no root table either."""
    root = resolve_table(conn, ROOT_TABLE)
    if root is None:
        return False
    if server_key is not None:
        t = table(root.name, *(column(k) for k in server_key), schema=root.schema)
        where = [t.c[k] == _param(f"key_{i}", v) for i, (k, v) in enumerate(server_key.items())]
    else:
        t = table(root.name, column(ROOT_SLUG), schema=root.schema)
        where = [t.c[ROOT_SLUG] == _param("slug", slug)]
    return conn.execute(select(literal(1)).select_from(t).where(*where)).first() is not None


def _param(name: str, value: Any) -> Any:
    """Untyped, so the server infers the column's type (and can use its index)."""
    return bindparam(name, value, type_=NullType())


# -- the impact report -------------------------------------------------------------------


@dataclass
class TableCount:
    table: str
    key: str
    action: str
    rows: int
    via: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)


@dataclass
class Blocker:
    table: str
    edge: str
    rows: int
    reason: str
    sample: list[dict[str, str]] = field(default_factory=list)


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


@dataclass(frozen=True)
class ElsewhereRows:
    table: str
    edge: str  # the foreign key to the server row these rows do not match
    rows: int


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
            changes.append(f"{key}: new in the plan ({after:,} rows)")
            continue
        if after == before:
            continue
        allowed = before * drift_percent / 100.0
        if abs(after - before) > allowed:
            changes.append(f"{key}: {before:,} → {after:,}")
    return changes


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
    for step in plan.steps:
        if step.action == "delete":
            if step.table in referenced:
                queries.append(([step.snapshot_key], select(func.count()).select_from(source.cte(step.table))))
                continue
            t = sa_table(graph, step.table).alias()
            # Edges from this table to the server row are counted in the same scan: rows in scope that
            # point at the server. For a NO ACTION/RESTRICT edge (tool calls -> servers) the rows pointing
            # at it, minus those, would block the delete; for any edge, rows in scope that do not point at
            # it belong elsewhere (another server's rows reached through an orphaned user).
            to_root = _root_edges(plan, step.table)
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
        else:
            assert step.edge is not None
            queries.append(([step.snapshot_key], _edge_rows(plan, sql, step.edge, count=True)))
    for fk in plan.blocking:
        if fk.name not in folded:
            queries.append(([f"blocker {fk.name}"], _edge_rows(plan, sql, fk, count=True)))
    return queries


def _root_edges(plan: DeletePlan, ref: TableRef) -> list[ForeignKey]:
    root = plan.graph.root
    return [fk for fk in plan.catalog.foreign_keys if fk.child == ref and fk.parent == root]


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


def _edge_rows(plan: DeletePlan, sql: ScopeSql, fk: ForeignKey, *, count: bool) -> Select[Any]:
    """Rows of fk.child outside the scope that reference an in-scope row of fk.parent."""
    x = sa_table(plan.graph, fk.child).alias()
    where = and_(sql.edge_match(x, fk), sql.outside_predicate(fk.child, x))
    if count:
        return select(func.count()).select_from(x).where(where)
    info = plan.catalog.table(fk.child)
    shown = list(info.key) + [c for c in fk.child_columns if c not in info.key]
    return select(*(x.c[c] for c in shown)).where(where).limit(BLOCKER_SAMPLE_ROWS)


def set_local(conn: Connection, name: str, value: str) -> None:
    conn.execute(text("SELECT set_config(:name, :value, true)"), {"name": name, "value": value})


def measure_impact(conn: Connection, plan: DeletePlan, *, probe: bool = True) -> ImpactReport:
    """Counts (one statement, one snapshot), blockers with their rows, slow keys and the estimate."""
    started = time.perf_counter()
    set_local(conn, "work_mem", WORK_MEM)
    sql = plan.scope_sql()
    queries = _count_queries(plan, sql)
    # A few keys of every scope other tables point at, for the cost probes: taken from the same
    # CTEs in the same statement, so probing costs no second evaluation of any scope.
    parents = [s.table for s in plan.delete_steps if probe and plan.catalog.referencing(s.table)]
    sample_columns = [_key_sample(plan, sql, ref).label(f"k{i}") for i, ref in enumerate(parents)]
    columns = [q.scalar_subquery().label(f"c{i}") for i, (_, q) in enumerate(queries)]
    row = conn.execute(select(*columns, *sample_columns)).one()
    counts, elsewhere = _unpack_counts(plan, queries, row)
    key_samples = {ref: [tuple(values) for values in (row[len(queries) + i] or [])] for i, ref in enumerate(parents)}

    blockers: list[Blocker] = []
    for problem in plan.problems:
        blockers.append(Blocker(table="", edge="", rows=0, reason=problem))
    for fk in plan.blocking:
        rows = counts.pop(f"blocker {fk.name}")
        if rows:
            sample_sql = plan.scope_sql(prefix="sample")
            sample = [
                {k: str(v) for k, v in r._mapping.items()}
                for r in conn.execute(_edge_rows(plan, sample_sql, fk, count=False))
            ]
            blockers.append(
                Blocker(
                    table=str(fk.child),
                    edge=fk.describe(),
                    rows=rows,
                    reason=(
                        f"{rows:,} row(s) of {fk.child} outside the delete reference rows of {fk.parent} "
                        f"that would be deleted ({fk.on_delete.upper()}): the database would refuse"
                    ),
                    sample=sample,
                )
            )
    for step in plan.set_steps:
        info = plan.catalog.table(step.table)
        if step.action == "set null" and counts[step.snapshot_key] and set(step.columns) & info.not_null:
            blockers.append(
                Blocker(
                    table=str(step.table),
                    edge=step.edge.describe() if step.edge else "",
                    rows=counts[step.snapshot_key],
                    reason=f"{step.table}({', '.join(step.columns)}) is NOT NULL, so ON DELETE SET NULL would fail",
                )
            )

    tables = [
        TableCount(
            table=str(step.table),
            key=step.snapshot_key,
            action=step.action,
            rows=counts[step.snapshot_key],
            via=plan.via(step.table) if step.action == "delete" else [step.edge.describe()] if step.edge else [],
            columns=list(step.columns),
        )
        for step in _report_order(plan)
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
    )


def _report_order(plan: DeletePlan) -> list[Step]:
    """Parents first reads best: the server, then what hangs off it; SET NULL rows last."""
    position = {ref: i for i, ref in enumerate(plan.graph.order)}
    deletes = sorted(plan.delete_steps, key=lambda s: position.get(s.table, len(position)))
    return deletes + plan.set_steps


# -- the cost of the database's own per-row lookups ---------------------------------------


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
    conditions = [
        child.c[c] == _param(f"v{i}", v) for i, (c, v) in enumerate(zip(fk.child_columns, values, strict=True))
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
    # Twice, keeping the faster: the first read of those blocks may have to bring them into cache.
    values = samples[0]
    timings = [_execution_ms(conn, _lookup(catalog, fk, values, SCAN_SAMPLE_PAGES)) for _ in range(2)]
    return min(timings) * pages / SCAN_SAMPLE_PAGES


def _key_sample(plan: DeletePlan, sql: ScopeSql, ref: TableRef) -> Any:
    """Up to PROBE_SAMPLES rows of the scope's referenced columns, as a JSON array of arrays.

    Values come back as JSON scalars and are bound untyped, so PostgreSQL reads them as the
    column's own type (uuid, date, ...) in the probe.
    """
    source = sql.source
    assert isinstance(source, CteSource)
    cte = source.cte(ref)
    cols = plan.graph.needed_columns(ref)
    few = select(*(cte.c[c] for c in cols)).limit(PROBE_SAMPLES).subquery()
    return select(func.json_agg(func.json_build_array(*(few.c[c] for c in cols)))).scalar_subquery()


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
                    )
                )
    slow.sort(key=lambda s: s.estimated_s, reverse=True)
    return slow, total_s


def create_index_statement(fk: ForeignKey) -> str:
    """The index that turns each per-row scan into an index lookup; run it outside the delete."""
    quote = _PG.identifier_preparer.quote
    name = f"{fk.child.name}_{'_'.join(fk.child_columns)}_idx"
    if len(name) > 63:
        name = name[:54] + "_" + hashlib.sha1(name.encode()).hexdigest()[:8]  # noqa: S324 - a name, not security
    columns = ", ".join(quote(c) for c in fk.child_columns)
    return (
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {quote(name)} "
        f"ON {quote(fk.child.schema)}.{quote(fk.child.name)} ({columns});"
    )


def plan_and_measure(
    conn: Connection, slug: str | None = None, *, server_key: Mapping[str, Any] | None = None, probe: bool = True
) -> tuple[DeletePlan, ImpactReport]:
    """`build_plan` (by slug, primary key or both) and its impact report, in the caller's transaction."""
    plan = build_plan(conn, slug, server_key=server_key)
    return plan, measure_impact(conn, plan, probe=probe)
