"""Where a scope's parent keys come from (the `KeySource`s), and the table and key helpers they share.

Split from `scopesql` (which builds each table's scope predicate) to keep both files small: the
predicate builder asks a KeySource for the keys of a parent's in-scope rows, and this module
answers that twice, as CTEs for the read-only impact report (`CteSource`) and as temporary
tables of primary keys for the write transaction (`TempSource`). `scopesql` re-exports every name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import ColumnElement, Select, TableClause, Text, and_, column, select, table, tuple_
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.selectable import CTE

from bot.deletion.catalog import Catalog, TableRef
from bot.deletion.scope import ScopeGraph
from bot.deletion.sqlext import OnlyTable

if TYPE_CHECKING:
    from bot.deletion.scopesql import ScopeSql


def sa_table(graph_or_catalog: ScopeGraph | Catalog, ref: TableRef) -> TableClause:
    """A lightweight table (ONLY for plain tables); SQLAlchemy quotes every identifier from the catalog."""
    catalog = graph_or_catalog.catalog if isinstance(graph_or_catalog, ScopeGraph) else graph_or_catalog
    info = catalog.table(ref)
    kind = OnlyTable if info.only else table
    return kind(ref.name, *(column(c) for c in info.columns), schema=ref.schema)


def match(alias: Any, columns: Sequence[str], keys: Select[Any]) -> ColumnElement[bool]:
    """`alias.columns IN (keys)`, composite keys as a row comparison (a NULL column never matches)."""
    if len(columns) == 1:
        return alias.c[columns[0]].in_(keys)
    return tuple_(*(alias.c[c] for c in columns)).in_(keys)


def equal(left: Any, right: Any, left_cols: Sequence[str], right_cols: Sequence[str]) -> ColumnElement[bool]:
    return and_(*(left.c[a] == right.c[b] for a, b in zip(left_cols, right_cols, strict=True)))


class KeySource(Protocol):
    def keys(self, ref: TableRef, columns: Sequence[str]) -> Select[Any]:
        """A SELECT of `columns` over the in-scope rows of node `ref` (one row per in-scope row)."""
        ...

    def component(self, index: int) -> Any:
        """The tagged rows `(tag, v)` of a recursive component, as something to select from."""
        ...


TAGGED = (column("tag"), column("v", ARRAY(Text)))
# The delete's temporary tables, named with their schema: a user table of the same name in the same
# statement (an UPDATE of public.mcpops_set_1 FROM the scope mcpops_set_1) is then not ambiguous.
TEMP = "pg_temp"


class CteSource:
    """Read path: each parent's scope is a CTE (computed once per statement, shared by its children)."""

    def __init__(self, sql: ScopeSql) -> None:
        self.sql = sql
        self.ctes: dict[TableRef, CTE] = {}
        self.components: dict[int, CTE] = {}

    def cte(self, ref: TableRef) -> CTE:
        if ref not in self.ctes:
            # Parents first: building a scope builds its parents' scopes, so a chain of a few hundred
            # tables would otherwise recurse once per table, past Python's stack.
            for node in self._unbuilt_ancestors(ref):
                self._build(node)
            self._build(ref)
        return self.ctes[ref]

    def _build(self, ref: TableRef) -> None:
        if ref not in self.ctes:
            cols = self.sql.graph.needed_columns(ref)
            self.ctes[ref] = self.sql.scope_select(ref, cols).cte(self.sql.name("cte"))

    def _unbuilt_ancestors(self, ref: TableRef) -> list[TableRef]:
        """Tables whose scopes `ref`'s scope reads, transitively, not built yet; parents first."""
        walk, graph = self.sql.walk, self.sql.graph
        found: set[TableRef] = set()
        stack = [ref]
        while stack:
            node = stack.pop()
            members = walk.components[walk.component(node)] if walk.is_recursive(node) else (node,)
            for member in members:
                for fk in walk.edges.get(member, []):
                    parent = graph.node(fk.parent)
                    if parent not in found and parent not in self.ctes and parent not in members:
                        found.add(parent)
                        stack.append(parent)
        rank = {n: i for i, n in enumerate(walk.order)}
        return sorted(found, key=lambda n: rank.get(n, -1))

    def keys(self, ref: TableRef, columns: Sequence[str]) -> Select[Any]:
        cte = self.cte(ref)
        return select(*(cte.c[c] for c in columns))

    def component(self, index: int) -> Any:
        if index not in self.components:
            self.components[index] = self.sql.component_select(index)
        return self.components[index]


@dataclass
class TempSource:
    """Write path: each scope is a temporary table of primary keys, created in plan order."""

    sql: ScopeSql
    names: dict[TableRef, str] = field(default_factory=dict)
    component_names: dict[int, str] = field(default_factory=dict)

    def temp(self, ref: TableRef) -> TableClause:
        return table(self.names[ref], *(column(k) for k in self.sql.graph.key(ref)), schema=TEMP)

    def keys(self, ref: TableRef, columns: Sequence[str]) -> Select[Any]:
        key = self.sql.graph.key(ref)
        tmp = self.temp(ref)
        if set(columns) <= set(key):
            return select(*(tmp.c[c] for c in columns))
        t = sa_table(self.sql.graph, ref).alias()
        return select(*(t.c[c] for c in columns)).select_from(t.join(tmp, equal(t, tmp, key, key)))

    def component(self, index: int) -> Any:
        return table(self.component_names[index], *(column(c.name, c.type) for c in TAGGED), schema=TEMP)
