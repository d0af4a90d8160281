"""Which tables a delete reaches, through which foreign keys: the scope graph (SQL is in `scopesql`).

A table's *scope* is the set of its rows the delete removes. The root's scope is the server
row (`mcp_servers`, found by primary key or slug). Every other table's scope is "rows whose
foreign-key columns match an in-scope parent row", over each *scope edge* from an in-scope
parent; a table reached by several paths gets the union. Scope edges are:

- ON DELETE CASCADE: PostgreSQL would delete those rows anyway;
- ON DELETE NO ACTION, under `Rules(no_action="delete")` (the default, `NO_ACTION_EDGES`): Drizzle
  writes NO ACTION wherever a developer chose no rule, so such rows are deleted with the server
  ("no ON DELETE rule: deleted with the server"). Never into the root table itself: another server
  that points at a row in scope is a blocker, not part of the delete. `no_action="block"` keeps every
  NO ACTION edge a blocker.

RESTRICT edges (and NO ACTION ones that are not scope edges) from rows outside the scope are
blockers; SET NULL / SET DEFAULT edges change rows outside it (see `plan`).

Partitions belong to their partitioned table: a foreign key from or to one partition is an edge of
the partitioned table restricted to that partition's rows, and rows are deleted, exported and
restored through the partitioned table. Inheritance children are tables of their own (every plain
table is read and written with ONLY). Tables whose scopes depend on each other (a self-reference,
or a cycle of scope edges) form a *component* whose scope is one fixed point (a recursive query).

Orphaned users are a second root: the users every one of whose sessions is in the server's scope
(computed from the walk from the server alone, before anything is deleted); their dependents come
from the same walk.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from bot.deletion.catalog import Catalog, ForeignKey, TableRef

# The only platform names the engine knows: the root and the orphaned-user rule.
ROOT_TABLE = "mcp_servers"
ROOT_SLUG = "slug"  # the column people name a server by (a request binds its primary key)
USER_TABLE = "mcp_server_user"
SESSION_TABLE = "mcp_server_session"
NO_ACTION_CHOICES = ("delete", "block")


class ScopeError(Exception):
    """The graph cannot be turned into a scope (a table without a key, an unsupported shape)."""


@dataclass(frozen=True)
class Rules:
    """How edge rules the schema leaves open are read. `no_action`: "delete" (default) or "block"."""

    no_action: str = "delete"

    def __post_init__(self) -> None:
        if self.no_action not in NO_ACTION_CHOICES:
            raise ValueError(f"no_action must be one of {NO_ACTION_CHOICES}")


@dataclass(frozen=True)
class OrphanRule:
    users: TableRef
    sessions: TableRef
    edges: tuple[ForeignKey, ...]  # sessions -> users


@dataclass
class Walk:
    """The tables reached from some roots, their incoming scope edges, and their components in order."""

    nodes: set[TableRef]
    edges: dict[TableRef, list[ForeignKey]]  # node -> scope edges into it (from nodes of the walk)
    components: list[tuple[TableRef, ...]]  # parents first along scope edges
    recursive: set[int] = field(default_factory=set)  # components whose scope is a fixed point
    _component: dict[TableRef, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._component = {n: i for i, comp in enumerate(self.components) for n in comp}

    @property
    def order(self) -> list[TableRef]:
        return [n for comp in self.components for n in comp]

    def component(self, node: TableRef) -> int:
        return self._component[node]

    def is_recursive(self, node: TableRef) -> bool:
        return node in self._component and self._component[node] in self.recursive


@dataclass
class ScopeGraph:
    """The tables a delete reaches and the edges that put rows in their scope."""

    catalog: Catalog
    root: TableRef
    orphans: OrphanRule | None
    rules: Rules
    walk: Walk
    phase_a: Walk  # the walk from the root alone (what decides orphaned users)

    @property
    def tables(self) -> set[TableRef]:
        return set(self.walk.nodes)

    @property
    def order(self) -> list[TableRef]:
        return self.walk.order

    def key(self, ref: TableRef) -> tuple[str, ...]:
        return self.catalog.table(ref).key

    def node(self, ref: TableRef) -> TableRef:
        return self.catalog.node(ref)

    def needed_columns(self, ref: TableRef) -> tuple[str, ...]:
        """Key columns plus every column a foreign key into `ref` itself points at."""
        cols = list(self.key(ref))
        for fk in self.catalog.referencing(ref):
            for col in fk.parent_columns:
                if col not in cols:
                    cols.append(col)
        return tuple(cols)

    def scope_edge(self, fk: ForeignKey) -> bool:
        return is_scope_edge(self.catalog, fk, self.rules, self.root)

    def relations(self) -> set[TableRef]:
        """Every relation a plan names: nodes and their partitions, and relations of edges into the scope."""
        found: set[TableRef] = set()
        for node in self.walk.nodes:
            found.update(self.catalog.relations(node))
        for fk in self.catalog.foreign_keys:
            if self.node(fk.parent) in self.walk.nodes:
                found.update((fk.child, fk.parent))
        return found


def is_scope_edge(catalog: Catalog, fk: ForeignKey, rules: Rules, root: TableRef) -> bool:
    if fk.cascades:
        return True
    return fk.on_delete == "no action" and rules.no_action == "delete" and catalog.node(fk.child) != root


def _reach(catalog: Catalog, roots: Iterable[TableRef], rules: Rules, root: TableRef) -> Walk:
    seen = set(roots)
    changed = True
    while changed:
        changed = False
        for fk in catalog.foreign_keys:
            child = catalog.node(fk.child)
            if child not in seen and catalog.node(fk.parent) in seen and is_scope_edge(catalog, fk, rules, root):
                seen.add(child)
                changed = True
    edges: dict[TableRef, list[ForeignKey]] = {n: [] for n in seen}
    for fk in catalog.foreign_keys:
        child, parent = catalog.node(fk.child), catalog.node(fk.parent)
        if child in seen and parent in seen and is_scope_edge(catalog, fk, rules, root):
            edges[child].append(fk)
    pairs = [(catalog.node(fk.parent), child) for child, fks in edges.items() for fk in fks]
    components = ordered_components(sorted(seen), pairs)
    recursive = {
        i
        for i, comp in enumerate(components)
        if len(comp) > 1 or any(catalog.node(fk.parent) == comp[0] for fk in edges[comp[0]])
    }
    for i in recursive:
        for node in components[i]:
            for fk in edges[node]:
                if catalog.node(fk.parent) in components[i] and fk.parent != catalog.node(fk.parent):
                    raise ScopeError(
                        f"{fk.describe()} points at one partition inside a cycle of foreign keys; the engine "
                        "can't compute that scope"
                    )
    return Walk(nodes=seen, edges=edges, components=components, recursive=recursive)


def ordered_components(
    nodes: Sequence[TableRef], edges: Iterable[tuple[TableRef, TableRef]]
) -> list[tuple[TableRef, ...]]:
    """Strongly connected components (Tarjan), parents before children, ties broken by name."""
    succ: dict[TableRef, list[TableRef]] = {n: [] for n in nodes}
    for parent, child in edges:
        if parent in succ and child in succ and child not in succ[parent]:
            succ[parent].append(child)
    for n in succ:
        succ[n].sort()
    index: dict[TableRef, int] = {}
    low: dict[TableRef, int] = {}
    stack: list[TableRef] = []
    on_stack: set[TableRef] = set()
    comps: list[tuple[TableRef, ...]] = []

    def visit(v: TableRef) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            comps.append(tuple(sorted(comp)))

    for n in sorted(nodes):
        if n not in index:
            visit(n)
    of = {n: i for i, comp in enumerate(comps) for n in comp}
    incoming: dict[int, set[int]] = {i: set() for i in range(len(comps))}
    outgoing: dict[int, set[int]] = {i: set() for i in range(len(comps))}
    for parent, child_list in succ.items():
        for child in child_list:
            a, b = of[parent], of[child]
            if a != b:
                incoming[b].add(a)
                outgoing[a].add(b)
    ready = sorted((i for i in incoming if not incoming[i]), key=lambda i: comps[i])
    ordered: list[tuple[TableRef, ...]] = []
    while ready:
        i = ready.pop(0)
        ordered.append(comps[i])
        for j in outgoing[i]:
            incoming[j].discard(i)
            if not incoming[j]:
                ready.append(j)
        ready.sort(key=lambda i: comps[i])
    return ordered


def build_graph(
    catalog: Catalog,
    root: TableRef,
    users: TableRef | None,
    sessions: TableRef | None,
    *,
    extra_roots: Collection[TableRef] = (),
    rules: Rules | None = None,
) -> ScopeGraph:
    """The tables reached from `root` (and `extra_roots`, other tables whose given rows are roots too)."""
    rules = rules or Rules()
    phase_a = _reach(catalog, {root, *extra_roots}, rules, root)
    orphans: OrphanRule | None = None
    walk = phase_a
    if users and sessions and sessions in phase_a.nodes and users in catalog.tables:
        edges = tuple(fk for fk in catalog.edges_between(sessions, users))
        if edges:
            orphans = OrphanRule(users=users, sessions=sessions, edges=edges)
            walk = _reach(catalog, {root, users, *extra_roots}, rules, root)
    missing = [t for t in walk.nodes if not catalog.table(t).key]
    if missing:
        names = ", ".join(str(t) for t in sorted(missing))
        raise ScopeError(
            f"table {names} has no primary key (nor a NOT NULL unique key), so its rows can't be addressed"
        )
    return ScopeGraph(catalog=catalog, root=root, orphans=orphans, rules=rules, walk=walk, phase_a=phase_a)
