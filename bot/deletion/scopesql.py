"""Each table's scope as SQL, built from the scope graph (`scope`), rendered two ways.

The same scope definition is rendered over CTEs (subqueries, for the read-only impact report)
and over temporary tables of primary keys (for the write transaction), so the impact report and
the delete can never disagree; those two key sources, and the table and key helpers, are in
`scopekeys` (re-exported here). A component of tables whose scopes depend on each other is one
recursive query over tagged rows `(tag, v)`: `v` holds a row's key and referenced columns as
text, cast back to each column's own type where they are compared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Text,
    and_,
    any_,
    cast,
    except_,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
    union,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY, array
from sqlalchemy.sql.selectable import CTE

from bot.deletion.catalog import ForeignKey, TableRef
from bot.deletion.scope import ScopeGraph, Walk
from bot.deletion.scopekeys import TAGGED, TEMP, CteSource, KeySource, TempSource, equal, match, sa_table
from bot.deletion.sqlext import CatalogType, as_type

__all__ = [
    "TAGGED",
    "TEMP",
    "CteSource",
    "KeySource",
    "RootFilter",
    "ScopeSql",
    "TempSource",
    "equal",
    "match",
    "sa_table",
]

# Rows a scope starts from, as a predicate over an alias of the root table (see `build_rooted_plan`).
RootFilter = Callable[[Any], ColumnElement[bool]]


class ScopeSql:
    """Builds each table's scope predicate; where parent keys come from is the KeySource's business."""

    def __init__(
        self,
        graph: ScopeGraph,
        root_row: Mapping[str, Any],
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
        # Parents (write path) whose scope is a handful of rows: edges from them compare with an array of
        # their keys, `= ANY(CAST((SELECT array_agg(..)) AS type[]))`, which an index on the column serves (in an
        # OR, a hashed IN-subquery makes the planner read the whole table). See steps.ARRAY_PARENT_ROWS.
        self.array_parents: set[TableRef] = set()

    @property
    def walk(self) -> Walk:
        return self.graph.phase_a if self.phase_a else self.graph.walk

    def name(self, kind: str) -> str:
        self._names += 1
        return f"{self.prefix}_{kind}_{self._names}"

    def in_scope(self, ref: TableRef) -> bool:
        return ref in self.walk.nodes

    def root_is_one_row(self) -> bool:
        """The root's scope is exactly the server row: edges from it can compare with its values."""
        root = self.graph.root
        return bool(
            self.root_filters is None and self.root_row and not self.walk.edges.get(root) and not self._orphan(root)
        )

    def _orphan(self, ref: TableRef) -> bool:
        orphans = self.graph.orphans
        return orphans is not None and not self.phase_a and ref == orphans.users

    def root_match(self, alias: Any) -> ColumnElement[bool]:
        """The server row itself, by its primary key (resolved once, in the same transaction)."""
        info = self.graph.catalog.table(self.graph.root)
        return and_(
            *(
                alias.c[k] == as_type(self.root_row[k], info.type_of(k), f"root_{i}")
                for i, k in enumerate(self.graph.key(self.graph.root))
            )
        )

    def base_predicate(self, ref: TableRef, alias: Any) -> ColumnElement[bool]:
        """The scope without edges inside its own component: root, orphans, and the union over incoming edges."""
        parts: list[ColumnElement[bool]] = []
        if self.root_filters is not None:
            if ref in self.root_filters:
                parts.append(self.root_filters[ref](alias))
        elif ref == self.graph.root:
            parts.append(self.root_match(alias))
        if self._orphan(ref):
            parts.append(self.orphan_predicate(alias))
        walk = self.walk
        for fk in walk.edges.get(ref, []):
            if walk.is_recursive(ref) and walk.component(self.graph.node(fk.parent)) == walk.component(ref):
                continue
            parts.append(self.edge_match(alias, fk))
        if not parts:
            return false()
        return parts[0] if len(parts) == 1 else or_(*parts)

    def edge_match(self, alias: Any, fk: ForeignKey, *, over_child: bool = False) -> ColumnElement[bool]:
        """Rows of `alias` that reference an in-scope row of fk.parent through `fk`.

        `alias` is over fk.child's node (a partition's partitioned table), or over fk.child itself
        with `over_child`. The root is one known row, so edges from it compare with its values: the
        planner then sees constants and its statistics (one server can own most of a table).
        """
        graph = self.graph
        node = graph.node(fk.child)
        if fk.child != node and not over_child:
            part = sa_table(graph, fk.child).alias()
            key = graph.key(node)
            rows = select(*(part.c[k] for k in key)).where(self.edge_match(part, fk, over_child=True))
            return match(alias, key, rows)
        if fk.parent == graph.root and self.root_is_one_row():
            root = graph.catalog.table(graph.root)
            return and_(
                *(
                    alias.c[c] == as_type(self.root_row[p], root.type_of(p))
                    for c, p in zip(fk.child_columns, fk.parent_columns, strict=True)
                )
            )
        keys = self.parent_keys(fk)
        single = len(fk.parent_columns) == 1
        parent = graph.catalog.table(fk.parent).column(fk.parent_columns[0])
        if graph.node(fk.parent) in self.array_parents and single and not parent.array:  # no array of arrays
            listed = keys.subquery()
            of = CatalogType(parent.type)
            agg = cast(select(func.array_agg(listed.c[0])).scalar_subquery(), ARRAY(of))  # one array, not rows
            return alias.c[fk.child_columns[0]] == any_(agg)
        return match(alias, fk.child_columns, keys)

    def parent_keys(self, fk: ForeignKey) -> Select[Any]:
        """fk.parent_columns of the in-scope rows of fk.parent (of that partition only, for a partition)."""
        graph = self.graph
        node = graph.node(fk.parent)
        if fk.parent == node:
            return self.source.keys(node, fk.parent_columns)
        part = sa_table(graph, fk.parent).alias()
        key = graph.key(node)
        return select(*(part.c[c] for c in fk.parent_columns)).where(match(part, key, self.source.keys(node, key)))

    def predicate(self, ref: TableRef, alias: Any) -> ColumnElement[bool]:
        """Whether a row of node `ref` (as `alias`) is in scope."""
        if not self.walk.is_recursive(ref):
            return self.base_predicate(ref, alias)
        return match(alias, self.graph.key(ref), self.member_keys(ref))

    # -- components: one fixed point over tagged rows ---------------------------------------

    def member_keys(self, ref: TableRef) -> Select[Any]:
        walk = self.walk
        index = walk.component(ref)
        rows = self.source.component(index)
        tag = walk.components[index].index(ref)
        needed = self.graph.needed_columns(ref)
        info = self.graph.catalog.table(ref)
        return select(
            *(cast(rows.c.v[needed.index(k) + 1], CatalogType(info.type_of(k))).label(k) for k in self.graph.key(ref))
        ).where(rows.c.tag == tag)

    def _tagged(self, ref: TableRef, alias: Any, tag: int) -> Select[Any]:
        values = [cast(alias.c[c], Text) for c in self.graph.needed_columns(ref)]
        return select(literal(tag).label("tag"), array(values, type_=Text).label("v"))

    def component_select(self, index: int) -> CTE:
        """The recursive query whose rows are every in-scope row of the component's tables."""
        graph, walk = self.graph, self.walk
        members = walk.components[index]
        base = []
        for tag, ref in enumerate(members):
            t = sa_table(graph, ref).alias()
            base.append(self._tagged(ref, t, tag).where(self.base_predicate(ref, t)))
        if len(base) > 1:
            both = union_all(*base).subquery(self.name("base"))
            base = [select(both.c.tag, both.c.v)]
        rec = base[0].cte(self.name("component"), recursive=True)
        s = rec.alias(self.name("s"))
        branches = []
        for tag, ref in enumerate(members):
            for fk in walk.edges.get(ref, []):
                parent = graph.node(fk.parent)
                if parent not in members:
                    continue
                c = sa_table(graph, fk.child).alias()
                pinfo = graph.catalog.table(parent)
                pneeded = graph.needed_columns(parent)
                joined = [
                    c.c[cc] == cast(s.c.v[pneeded.index(pc) + 1], CatalogType(pinfo.type_of(pc)))
                    for cc, pc in zip(fk.child_columns, fk.parent_columns, strict=True)
                ]
                branches.append(self._tagged(ref, c, tag).where(s.c.tag == members.index(parent), *joined))
        found = (branches[0] if len(branches) == 1 else union_all(*branches)).lateral(self.name("e"))
        return rec.union(select(found.c.tag, found.c.v).select_from(s.join(found, true())))

    # -- orphaned users ------------------------------------------------------------------------

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
        """Rows of `alias` (over node `ref` or one of its partitions) NOT in scope, NULL-safe."""
        if not self.in_scope(ref):
            return true()
        return not_(func.coalesce(self.predicate(ref, alias), false()))
