"""The delete plan: which server, what will go, in which order, and what makes it impossible.

Order: SET NULL/SET DEFAULT updates of rows outside the scope first, then one set-based DELETE
per table, children before parents along every foreign key that forces an order, so the
database's per-row triggers find nothing left to do:

- CASCADE, NO ACTION (not deferrable) and RESTRICT edges force "children first";
- a SET NULL edge does not (the row is deleted anyway), unless the column is NOT NULL (the database
  would refuse); a SET DEFAULT edge does (the default's parent must still exist when it fires);
- DEFERRABLE NO ACTION edges do not: where the order puts a parent first, the delete runs with
  `SET CONSTRAINTS ALL DEFERRED` and checks everything (`SET CONSTRAINTS ALL IMMEDIATE`) before its
  commit.

Tables on a cycle of such edges (two tables that cascade into each other, or reference each
other with NO ACTION) are deleted in one statement, one data-modifying CTE per table: the
database's checks and cascades run at the statement's end, when all of them are gone, as they
would after PostgreSQL's own cascade.

The plan also refuses, naming the table, when the connected role could not see every row it
counts (row-level security) or lacks a privilege the delete needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Text, bindparam, cast, column, literal, select, table, text
from sqlalchemy.types import NullType

from bot.deletion.catalog import Catalog, ForeignKey, TableRef, load_catalog, resolve_table
from bot.deletion.scope import (
    ROOT_SLUG,
    ROOT_TABLE,
    SESSION_TABLE,
    USER_TABLE,
    Rules,
    ScopeError,
    ScopeGraph,
    build_graph,
    ordered_components,
)
from bot.deletion.scopesql import CteSource, RootFilter, ScopeSql, sa_table
from bot.deletion.sqlext import as_type
from bot.errors import NotFound, UserFacingError

WORK_MEM = "64MB"  # scope hashes of 100k+ keys must stay hashed (see execute.py)


class PlanProblem(UserFacingError):
    """The delete cannot be planned (no such table, a table without a key, rows the role cannot see)."""

    outcome = "blocked"


class ServerGone(NotFound):
    """The server a request was bound to (by primary key) no longer exists."""

    outcome = "stale"


class ServerChanged(UserFacingError):
    """The server a request was bound to exists, but is no longer named by the slug people approved."""

    outcome = "stale"


@dataclass(frozen=True)
class Step:
    table: TableRef
    key: tuple[str, ...]
    action: str  # "delete", "set null" or "set default"
    columns: tuple[str, ...] = ()
    edge: ForeignKey | None = None
    # Tables whose deletes depend on each other (a cycle of foreign keys that force an order) share a
    # batch: deleted in one statement (data-modifying CTEs), so every check runs at its end.
    batch: int = 0

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
    blocking: list[ForeignKey]  # RESTRICT (and blocking NO ACTION) edges into tables in scope
    problems: list[str] = field(default_factory=list)
    root_row: dict[str, Any] = field(default_factory=dict)  # the server's key and referenced columns, as text
    # A rooted plan (build_rooted_plan): the rows each root table starts from, instead of the slug.
    root_filters: Mapping[TableRef, RootFilter] | None = None
    defer_constraints: bool = False  # a DEFERRABLE NO ACTION edge is ordered parent first

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
            reasons.append("the server itself")
        if self.graph.orphans is not None and ref == self.graph.orphans.users:
            reasons.append(f"orphaned: every session in {self.graph.orphans.sessions} belongs to the server")
        what = "the server" if self.root_filters is None else "the rows it references"
        for fk in self.graph.walk.edges.get(ref, []):
            cols = ", ".join(fk.child_columns)
            parent = "itself" if self.graph.node(fk.parent) == ref else str(fk.parent)
            where = f" of partition {fk.child}" if fk.child != ref else ""
            if fk.cascades:
                reasons.append(f"cascade from {parent} ({cols}){where}")
            else:
                reasons.append(f"no ON DELETE rule: deleted with {what} ({cols} → {parent}){where}")
        return reasons


def _describe_key(key: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in key.items())


def _param(name: str, value: Any) -> Any:
    """Untyped, so the server infers the column's type (and can use its index)."""
    return bindparam(name, value, type_=NullType())


def find_server(
    conn: Connection,
    root: TableRef,
    catalog: Catalog,
    columns: Sequence[str],
    *,
    slug: str | None,
    server_key: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The root row's `columns` as text, found by primary key (a bound request) or by slug (a command).

    With both, the row found by key must still carry that slug: a slug reused by another server never
    redirects a request, and a renamed server is not silently the one approved.
    """
    t = sa_table(catalog, root)
    info = catalog.table(root)
    pk = info.key
    # As text, as PostgreSQL prints them: compared again cast to the column's type (sqlext.as_type).
    query = select(*(cast(t.c[c], Text) for c in columns))
    if server_key is not None:
        if set(server_key) != set(pk):
            raise PlanProblem(
                f"the request names the server by ({', '.join(sorted(server_key))}), but the primary key of "
                f"{root} is ({', '.join(pk)})"
            )
        query = query.where(
            *(t.c[k] == as_type(str(server_key[k]), info.type_of(k), f"key_{i}") for i, k in enumerate(pk))
        )
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


def build_plan(
    conn: Connection,
    slug: str | None = None,
    *,
    server_key: Mapping[str, Any] | None = None,
    rules: Rules | None = None,
) -> DeletePlan:
    """Read the catalog and decide the steps for one server.

    Name the server by `slug` (a command), by `server_key` (its primary key columns -> values, as
    `ImpactReport.server_key` and `DeletePlan.server_key` give them: what a request binds), or by both
    (the key decides; the slug must still match). Raises NotFound for an unknown slug, ServerGone for a
    key that no longer exists, ServerChanged when the keyed row no longer carries the slug, PlanProblem
    when the role cannot see or read every row the delete reaches.
    """
    catalog = load_catalog(conn)
    root = resolve_table(conn, ROOT_TABLE)
    if root is None or root not in catalog.tables:
        raise PlanProblem(f"this database has no `{ROOT_TABLE}` table")
    users = resolve_table(conn, USER_TABLE)
    sessions = resolve_table(conn, SESSION_TABLE)
    try:
        graph = build_graph(catalog, root, users, sessions, rules=rules)
    except ScopeError as exc:
        raise PlanProblem(str(exc)) from None
    needed = list(graph.needed_columns(root))
    if ROOT_SLUG not in needed:
        needed.append(ROOT_SLUG)
    check_access(graph, [root])
    root_row = find_server(conn, root, catalog, needed, slug=slug, server_key=server_key)
    steps, blocking, problems, defer = _plan_steps(catalog, graph)
    return DeletePlan(
        slug=str(root_row[ROOT_SLUG]),
        graph=graph,
        steps=steps,
        blocking=blocking,
        problems=problems,
        root_row=root_row,
        defer_constraints=defer,
    )


def build_rooted_plan(
    conn: Connection,
    roots: Mapping[TableRef, RootFilter],
    *,
    label: str,
    catalog: Catalog | None = None,
    root_row: dict[str, Any] | None = None,
    rules: Rules | None = None,
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
        graph = build_graph(catalog, tables[0], None, None, extra_roots=tables[1:], rules=rules)
    except ScopeError as exc:
        raise PlanProblem(str(exc)) from None
    check_access(graph, tables)
    steps, blocking, problems, defer = _plan_steps(catalog, graph)
    return DeletePlan(
        slug=label,
        graph=graph,
        steps=steps,
        blocking=blocking,
        problems=problems,
        root_row=dict(root_row or {}),
        root_filters=dict(roots),
        defer_constraints=defer,
    )


def check_access(graph: ScopeGraph, roots: Sequence[TableRef]) -> None:
    """Refuse, naming the table, when the role cannot read (or fully see) a table the delete counts.

    Counts taken under row-level security that hides rows would be short, while PostgreSQL's own
    cascade (which ignores RLS) would delete the hidden rows unreported and un-backed-up.
    """
    catalog = graph.catalog
    role = catalog.role or "the bot's role"
    for ref in sorted(graph.relations() | set(roots)):
        info = catalog.table(ref)
        if "SELECT" not in info.privileges:
            raise PlanProblem(
                f"the role `{role}` may not read {ref} (it lacks the SELECT privilege, or USAGE on schema "
                f"{ref.schema}), and the delete reaches it: nothing can be counted. Grant it, e.g. "
                f"`GRANT SELECT, DELETE ON {ref.qualified} TO {role}`"
            )
        if info.rls_hides:
            raise PlanProblem(
                f"row-level security on {ref} hides rows from the role `{role}`, so the delete's counts could "
                "miss rows that PostgreSQL's cascade would still delete: refused. Run it with a role that owns "
                "the table or has BYPASSRLS"
            )


def _order_edges(
    catalog: Catalog, graph: ScopeGraph
) -> tuple[list[tuple[TableRef, TableRef]], list[tuple[TableRef, TableRef]], list[ForeignKey]]:
    """(hard, cascade, deferrable) edges between tables in scope, each as (child, parent)."""
    nodes = graph.tables
    hard: list[tuple[TableRef, TableRef]] = []
    cascade: list[tuple[TableRef, TableRef]] = []
    deferrable: list[ForeignKey] = []
    for fk in catalog.foreign_keys:
        child, parent = graph.node(fk.child), graph.node(fk.parent)
        if child not in nodes or parent not in nodes or child == parent:
            continue
        if fk.cascades:
            cascade.append((child, parent))
        elif fk.on_delete == "restrict" or (fk.on_delete == "no action" and not fk.deferrable):
            hard.append((child, parent))
        elif fk.on_delete == "no action":
            deferrable.append(fk)
        elif fk.on_delete == "set default" or set(fk.set_columns) & catalog.table(fk.child).not_null:
            hard.append((child, parent))
    return hard, cascade, deferrable


def _plan_steps(catalog: Catalog, graph: ScopeGraph) -> tuple[list[Step], list[ForeignKey], list[str], bool]:
    """SET NULL/SET DEFAULT steps, then deletes children before parents; blocking edges; problems."""
    nodes = graph.tables
    steps: list[Step] = []
    blocking: list[ForeignKey] = []
    problems: list[str] = []
    for fk in catalog.foreign_keys:
        if graph.node(fk.parent) not in nodes:
            continue
        if fk.sets:
            key = catalog.table(fk.child).key
            steps.append(Step(table=fk.child, key=key, action=fk.on_delete, columns=fk.set_columns, edge=fk))
            if not key:
                problems.append(
                    f"table {fk.child} has no primary key, so its {fk.on_delete.upper()} rows can't be addressed"
                )
        elif fk.blocking and not graph.scope_edge(fk):
            blocking.append(fk)
    hard, cascade, deferrable = _order_edges(catalog, graph)
    batches = ordered_components(sorted(nodes), hard + cascade)
    position = {t: i for i, comp in enumerate(batches) for t in comp}
    defer = any(position[graph.node(fk.parent)] < position[graph.node(fk.child)] for fk in deferrable)
    for ref in sorted(nodes):
        missing = catalog.table(ref).missing("DELETE")
        if missing:
            problems.append(f"the role `{catalog.role}` lacks the DELETE privilege on {ref}, which the delete reaches")
    for step in steps:
        if "UPDATE" not in catalog.table(step.table).privileges:
            problems.append(
                f"the role `{catalog.role}` lacks the UPDATE privilege on {step.table}, whose rows the delete sets to "
                f"{step.action.removeprefix('set ').upper()}"
            )
    steps += [
        Step(table=ref, key=graph.key(ref), action="delete", batch=i) for i, comp in enumerate(batches) for ref in comp
    ]
    return steps, blocking, problems, defer


def server_exists(conn: Connection, slug: str | None = None, *, server_key: Mapping[str, Any] | None = None) -> bool:
    """Is the server there (by primary key if given, else by slug)? False when there is no root table either."""
    root = resolve_table(conn, ROOT_TABLE)
    if root is None:
        return False
    if server_key is not None:
        t = table(root.name, *(column(k) for k in server_key), schema=root.schema)
        types = column_types(conn, root)
        where = [
            t.c[k] == (as_type(str(v), types[k], f"key_{i}") if k in types else _param(f"key_{i}", v))
            for i, (k, v) in enumerate(server_key.items())
        ]
    else:
        t = table(root.name, column(ROOT_SLUG), schema=root.schema)
        where = [t.c[ROOT_SLUG] == _param("slug", slug)]
    return conn.execute(select(literal(1)).select_from(t).where(*where)).first() is not None


def column_types(conn: Connection, ref: TableRef) -> dict[str, str]:
    """Each column's type as `format_type()` spells it (a key given as text is compared cast to it)."""
    rows = conn.execute(
        text(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
            " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = :schema AND c.relname = :name AND a.attnum > 0 AND NOT a.attisdropped"
        ),
        {"schema": ref.schema, "name": ref.name},
    )
    return {str(name): str(spec) for name, spec in rows}


def set_local(conn: Connection, name: str, value: str) -> None:
    conn.execute(text("SELECT set_config(:name, :value, true)"), {"name": name, "value": value})
