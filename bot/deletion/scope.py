"""Which rows a delete of one server reaches, table by table, as SQL built from the catalog.

A table's *scope* is the set of its rows the delete removes. The root's scope is the server
row (`mcp_servers` by slug). Every other table's scope is "rows whose foreign-key columns
match an in-scope parent row", over each CASCADE edge from an in-scope parent: a table
reached by several paths gets the union (an OR of the edges), a self-referencing cascade
gets a fixed point (a recursive CTE). Orphaned users are a second root: the users every
one of whose sessions is in the server's scope (computed from the sessions reached from
the server alone, before anything is deleted); their dependents come from the same walk.

The same scope definition is rendered two ways, so the impact report and the delete can
never disagree: over CTEs (subqueries, for the read-only impact report) and over temporary
tables of primary keys (for the write transaction). Only CASCADE edges extend a scope;
SET NULL/SET DEFAULT edges change rows outside it, and NO ACTION/RESTRICT edges from rows
outside it are blockers (see `plan`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import (
    ColumnElement,
    Select,
    TableClause,
    and_,
    bindparam,
    column,
    except_,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    table,
    true,
    tuple_,
    union,
)
from sqlalchemy.sql.selectable import CTE
from sqlalchemy.types import NullType

from bot.deletion.catalog import Catalog, ForeignKey, TableRef

# The only platform names the engine knows: the root and the orphaned-user rule.
ROOT_TABLE = "mcp_servers"
ROOT_SLUG = "slug"  # the column people name a server by (a request binds its primary key)
USER_TABLE = "mcp_server_user"
SESSION_TABLE = "mcp_server_session"


# Rows a scope starts from, as a predicate over an alias of the root table (see `build_rooted_plan`).
RootFilter = Callable[[Any], ColumnElement[bool]]


class ScopeError(Exception):
    """The graph cannot be turned into a scope (a cascade cycle, a table without a key)."""


@dataclass(frozen=True)
class OrphanRule:
    users: TableRef
    sessions: TableRef
    edges: tuple[ForeignKey, ...]  # sessions -> users


@dataclass
class ScopeGraph:
    """The tables a delete of one server reaches and the edges that put rows in their scope."""

    catalog: Catalog
    root: TableRef
    orphans: OrphanRule | None
    order: list[TableRef]  # in-scope tables, parents before children along scope edges
    scope_edges: dict[TableRef, list[ForeignKey]]
    self_edges: dict[TableRef, list[ForeignKey]]
    phase_a: dict[TableRef, list[ForeignKey]]  # scope edges of the walk from the root alone
    phase_a_self: dict[TableRef, list[ForeignKey]]
    cycles: list[list[TableRef]] = field(default_factory=list)

    @property
    def tables(self) -> set[TableRef]:
        return set(self.order)

    def key(self, ref: TableRef) -> tuple[str, ...]:
        return self.catalog.table(ref).key

    def needed_columns(self, ref: TableRef) -> tuple[str, ...]:
        """Key columns plus every column a foreign key into `ref` points at."""
        cols = list(self.key(ref))
        for fk in self.catalog.referencing(ref):
            for col in fk.parent_columns:
                if col not in cols:
                    cols.append(col)
        return tuple(cols)


def _reach(catalog: Catalog, roots: set[TableRef]) -> set[TableRef]:
    seen = set(roots)
    queue = list(roots)
    while queue:
        parent = queue.pop(0)
        for fk in catalog.referencing(parent):
            if fk.cascades and fk.child not in seen:
                seen.add(fk.child)
                queue.append(fk.child)
    return seen


def _edges_within(
    catalog: Catalog, tables: set[TableRef]
) -> tuple[dict[TableRef, list[ForeignKey]], dict[TableRef, list[ForeignKey]]]:
    scope: dict[TableRef, list[ForeignKey]] = {t: [] for t in tables}
    selfs: dict[TableRef, list[ForeignKey]] = {t: [] for t in tables}
    for fk in catalog.foreign_keys:
        if fk.cascades and fk.child in tables and fk.parent in tables:
            (selfs if fk.self_reference else scope)[fk.child].append(fk)
    return scope, selfs


def topological(
    nodes: Sequence[TableRef], edges: Sequence[tuple[TableRef, TableRef]]
) -> tuple[list[TableRef], list[list[TableRef]]]:
    """Parents before children (Kahn); tables left over sit on cycles, returned grouped."""
    incoming: dict[TableRef, set[TableRef]] = {n: set() for n in nodes}
    children: dict[TableRef, set[TableRef]] = {n: set() for n in nodes}
    for parent, child in edges:
        if parent != child and parent in incoming and child in incoming:
            incoming[child].add(parent)
            children[parent].add(child)
    ready = sorted(n for n in nodes if not incoming[n])
    order: list[TableRef] = []
    while ready:
        node = ready.pop(0)
        order.append(node)
        for child in sorted(children[node]):
            incoming[child].discard(node)
            if not incoming[child]:
                ready.append(child)
        ready.sort()
    left = [n for n in nodes if n not in order]
    return order, _strongly_connected(left, edges) if left else []


def _strongly_connected(nodes: list[TableRef], edges: Sequence[tuple[TableRef, TableRef]]) -> list[list[TableRef]]:
    """Group the leftover tables into their cycles (simple reachability; the sets are tiny)."""
    node_set = set(nodes)
    succ: dict[TableRef, set[TableRef]] = {n: set() for n in nodes}
    for parent, child in edges:
        if parent in node_set and child in node_set and parent != child:
            succ[parent].add(child)

    def reach(start: TableRef) -> set[TableRef]:
        seen, stack = {start}, [start]
        while stack:
            for nxt in succ[stack.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen

    reaches = {n: reach(n) for n in nodes}
    groups: list[list[TableRef]] = []
    done: set[TableRef] = set()
    for n in sorted(nodes):
        if n in done:
            continue
        group = sorted(m for m in nodes if m in reaches[n] and n in reaches[m])
        done.update(group)
        if len(group) > 1:
            groups.append(group)
    return groups


def build_graph(
    catalog: Catalog,
    root: TableRef,
    users: TableRef | None,
    sessions: TableRef | None,
    *,
    extra_roots: Collection[TableRef] = (),
) -> ScopeGraph:
    """The tables reached from `root` (and `extra_roots`, other tables whose given rows are roots too)."""
    phase_a_tables = _reach(catalog, {root, *extra_roots})
    orphans: OrphanRule | None = None
    roots = {root, *extra_roots}
    if users and sessions and sessions in phase_a_tables and users in catalog.tables:
        edges = tuple(fk for fk in catalog.edges_between(sessions, users))
        if edges:
            orphans = OrphanRule(users=users, sessions=sessions, edges=edges)
            roots.add(users)
    tables = _reach(catalog, roots)
    scope_edges, self_edges = _edges_within(catalog, tables)
    phase_a, phase_a_self = _edges_within(catalog, phase_a_tables)
    pairs = [(fk.parent, fk.child) for fks in scope_edges.values() for fk in fks]
    order, cycles = topological(sorted(tables), pairs)
    graph = ScopeGraph(
        catalog=catalog,
        root=root,
        orphans=orphans,
        order=order,
        scope_edges=scope_edges,
        self_edges=self_edges,
        phase_a=phase_a,
        phase_a_self=phase_a_self,
        cycles=cycles,
    )
    missing = [t for t in tables if not catalog.table(t).key]
    if missing:
        names = ", ".join(str(t) for t in sorted(missing))
        raise ScopeError(
            f"table {names} has no primary key (nor a NOT NULL unique key), so its rows can't be addressed"
        )
    return graph


# -- SQL ---------------------------------------------------------------------------------


def sa_table(graph_or_catalog: ScopeGraph | Catalog, ref: TableRef) -> TableClause:
    """A lightweight table: SQLAlchemy quotes every identifier that came from the catalog."""
    catalog = graph_or_catalog.catalog if isinstance(graph_or_catalog, ScopeGraph) else graph_or_catalog
    info = catalog.table(ref)
    return table(ref.name, *(column(c) for c in info.columns), schema=ref.schema)


def match(alias: Any, columns: Sequence[str], keys: Select[Any]) -> ColumnElement[bool]:
    """`alias.columns IN (keys)`, composite keys as a row comparison."""
    if len(columns) == 1:
        return alias.c[columns[0]].in_(keys)
    return tuple_(*(alias.c[c] for c in columns)).in_(keys)


def equal(left: Any, right: Any, left_cols: Sequence[str], right_cols: Sequence[str]) -> ColumnElement[bool]:
    return and_(*(left.c[a] == right.c[b] for a, b in zip(left_cols, right_cols, strict=True)))


class KeySource(Protocol):
    def keys(self, ref: TableRef, columns: Sequence[str]) -> Select[Any]:
        """A SELECT of `columns` over the in-scope rows of `ref` (one row per in-scope row)."""
        ...


class ScopeSql:
    """Builds each table's scope predicate; where parent keys come from is the KeySource's business."""

    def __init__(
        self,
        graph: ScopeGraph,
        root_row: dict[str, Any],
        *,
        source_factory: Callable[[ScopeSql], KeySource],
        phase_a: bool = False,
        prefix: str = "scope",
        root_filters: Mapping[TableRef, RootFilter] | None = None,
    ) -> None:
        self.graph = graph
        self.root_row = root_row  # the server row's primary key and every column a foreign key points at
        # Rooted scopes (forget-user): which rows of each root table start the scope, instead of the server row.
        self.root_filters = root_filters
        self.phase_a = phase_a
        self.prefix = prefix
        self.source = source_factory(self)
        self._phase_a_sql: ScopeSql | None = None
        self._names = 0

    def name(self, kind: str) -> str:
        self._names += 1
        return f"{self.prefix}_{kind}_{self._names}"

    def edges(self, ref: TableRef) -> list[ForeignKey]:
        return (self.graph.phase_a if self.phase_a else self.graph.scope_edges).get(ref, [])

    def self_edges(self, ref: TableRef) -> list[ForeignKey]:
        return (self.graph.phase_a_self if self.phase_a else self.graph.self_edges).get(ref, [])

    def in_scope(self, ref: TableRef) -> bool:
        return ref in (self.graph.phase_a if self.phase_a else self.graph.scope_edges)

    def root_match(self, alias: Any) -> ColumnElement[bool]:
        """The server row itself, by its primary key (resolved once, in the same transaction)."""
        return and_(
            *(
                alias.c[k] == bindparam(f"root_{i}", self.root_row[k], type_=NullType())
                for i, k in enumerate(self.graph.key(self.graph.root))
            )
        )

    def base_predicate(self, ref: TableRef, alias: Any) -> ColumnElement[bool]:
        """The scope without self-references: root, orphans, and the union over incoming edges."""
        parts: list[ColumnElement[bool]] = []
        if self.root_filters is not None:
            if ref in self.root_filters:
                parts.append(self.root_filters[ref](alias))
        elif ref == self.graph.root:
            parts.append(self.root_match(alias))
        orphans = self.graph.orphans
        if orphans is not None and not self.phase_a and ref == orphans.users:
            parts.append(self.orphan_predicate(alias))
        for fk in self.edges(ref):
            parts.append(self.edge_match(alias, fk))
        if not parts:
            return false()
        return parts[0] if len(parts) == 1 else or_(*parts)

    def edge_match(self, alias: Any, fk: ForeignKey) -> ColumnElement[bool]:
        """Rows of fk.child (as `alias`) that reference an in-scope row of fk.parent.

        The root is one known row, so edges from it compare with its values: the planner
        then sees constants and its statistics (one server can own most of a table).
        """
        if fk.parent == self.graph.root and self.root_row:
            return and_(
                *(
                    alias.c[c] == literal(self.root_row[p], type_=NullType())
                    for c, p in zip(fk.child_columns, fk.parent_columns, strict=True)
                )
            )
        return match(alias, fk.child_columns, self.source.keys(fk.parent, fk.parent_columns))

    def predicate(self, ref: TableRef, alias: Any) -> ColumnElement[bool]:
        """Whether a row of `ref` (as `alias`) is in scope; self-references closed by a recursive CTE."""
        selfs = self.self_edges(ref)
        if not selfs:
            return self.base_predicate(ref, alias)
        return match(alias, self.graph.key(ref), self.closure(ref, selfs))

    def closure(self, ref: TableRef, selfs: list[ForeignKey]) -> Select[Any]:
        key = self.graph.key(ref)
        base_t = sa_table(self.graph, ref).alias()
        base = select(*(base_t.c[k] for k in key)).where(self.base_predicate(ref, base_t))
        rec = base.cte(self.name("closure"), recursive=True)
        branches = []
        for fk in selfs:
            child = sa_table(self.graph, ref).alias()
            parent = sa_table(self.graph, ref).alias()
            branches.append(
                select(*(child.c[k] for k in key))
                .select_from(child)
                .join(parent, equal(child, parent, fk.child_columns, fk.parent_columns))
                .join(rec, equal(parent, rec, key, key))
            )
        rec = rec.union(*branches)
        return select(*(rec.c[k] for k in key))

    def phase_a_sql(self) -> ScopeSql:
        if self._phase_a_sql is None:
            self._phase_a_sql = ScopeSql(
                self.graph,
                self.root_row,
                source_factory=CteSource,
                phase_a=True,
                prefix=f"{self.prefix}_a",
                root_filters=self.root_filters,
            )
        return self._phase_a_sql

    def orphan_predicate(self, users: Any) -> ColumnElement[bool]:
        """Users with a session in the server's scope and no session outside it.

        As set difference: (users of sessions in scope) EXCEPT (users of sessions outside it),
        two scans and a hash, which the planner cannot mis-plan as per-user index probes.
        """
        rule = self.graph.orphans
        assert rule is not None
        a = self.phase_a_sql()
        parent_columns = {fk.parent_columns for fk in rule.edges}
        if len(parent_columns) == 1:
            (pcols,) = parent_columns

            def users_of(inside: bool) -> Select[Any]:
                branches = []
                for fk in rule.edges:
                    s = sa_table(self.graph, rule.sessions).alias()
                    in_a = a.predicate(rule.sessions, s)
                    wanted = in_a if inside else not_(func.coalesce(in_a, false()))
                    present = and_(*(s.c[c].is_not(None) for c in fk.child_columns))
                    branches.append(select(*(s.c[c] for c in fk.child_columns)).where(present, wanted))
                return branches[0] if len(branches) == 1 else union(*branches)

            orphaned = except_(users_of(True), users_of(False)).subquery()
            return match(users, pcols, select(*orphaned.c))
        return self._orphan_predicate_by_probes(users, a)

    def _orphan_predicate_by_probes(self, users: Any, a: ScopeSql) -> ColumnElement[bool]:
        """The same rule when sessions point at users through keys of different shapes."""
        rule = self.graph.orphans
        assert rule is not None
        inside = sa_table(self.graph, rule.sessions).alias()
        outside = sa_table(self.graph, rule.sessions).alias()
        has_inside = or_(
            *(
                match(
                    users,
                    fk.parent_columns,
                    select(*(inside.c[c] for c in fk.child_columns)).where(a.predicate(rule.sessions, inside)),
                )
                for fk in rule.edges
            )
        )
        has_outside = exists(
            select(literal(1))
            .select_from(outside)
            .where(
                or_(*(equal(outside, users, fk.child_columns, fk.parent_columns) for fk in rule.edges)),
                not_(func.coalesce(a.predicate(rule.sessions, outside), false())),
            )
        )
        return and_(has_inside, not_(has_outside))

    def scope_select(self, ref: TableRef, columns: Sequence[str]) -> Select[Any]:
        t = sa_table(self.graph, ref).alias()
        return select(*(t.c[c] for c in columns)).where(self.predicate(ref, t))

    def outside_predicate(self, ref: TableRef, alias: Any) -> ColumnElement[bool]:
        """NOT in scope, NULL-safe (a NULL foreign key makes `IN` NULL, and NOT NULL is not true)."""
        if not self.in_scope(ref):
            return true()
        return not_(func.coalesce(self.predicate(ref, alias), false()))


class CteSource:
    """Read path: each parent's scope is a CTE (computed once per statement, shared by its children)."""

    def __init__(self, sql: ScopeSql) -> None:
        self.sql = sql
        self.ctes: dict[TableRef, CTE] = {}

    def cte(self, ref: TableRef) -> CTE:
        if ref not in self.ctes:
            cols = self.sql.graph.needed_columns(ref)
            self.ctes[ref] = self.sql.scope_select(ref, cols).cte(self.sql.name("cte"))
        return self.ctes[ref]

    def keys(self, ref: TableRef, columns: Sequence[str]) -> Select[Any]:
        cte = self.cte(ref)
        return select(*(cte.c[c] for c in columns))


@dataclass
class TempSource:
    """Write path: each scope is a temporary table of primary keys, created in plan order."""

    sql: ScopeSql
    names: dict[TableRef, str] = field(default_factory=dict)

    def temp(self, ref: TableRef) -> TableClause:
        return table(self.names[ref], *(column(k) for k in self.sql.graph.key(ref)))

    def keys(self, ref: TableRef, columns: Sequence[str]) -> Select[Any]:
        key = self.sql.graph.key(ref)
        tmp = self.temp(ref)
        if set(columns) <= set(key):
            return select(*(tmp.c[c] for c in columns))
        t = sa_table(self.sql.graph, ref).alias()
        return select(*(t.c[c] for c in columns)).select_from(t.join(tmp, equal(t, tmp, key, key)))
