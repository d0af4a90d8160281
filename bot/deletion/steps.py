"""The write path's statements: materialise each scope as a temp table of keys, apply each step, verify.

Scopes are created parents first; a component of tables that depend on each other is first
materialised as one temp table of tagged rows (its fixed point), then split per table.

With `delete_leaves` a table no foreign key references (a leaf: no other scope reads its keys, its
deletion fires no referential action) is deleted by its own scope query instead (`DELETE ... WHERE
<scope>`, one pass over the table instead of a pass to collect its keys and one to delete by them);
the DELETE's row count is its count, and the check after the commit runs that query again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Select,
    any_,
    cast,
    column,
    delete,
    exists,
    func,
    literal,
    literal_column,
    not_,
    or_,
    select,
    table,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import UserDefinedType

from bot.deletion.catalog import TableRef
from bot.deletion.plan import DeletePlan, Step, server_exists, set_local
from bot.deletion.scopesql import TEMP, ScopeSql, TempSource, equal, sa_table
from bot.deletion.sqlext import Analyze, CreateTempTableAs, DropTable
from bot.slacktext.words import noun, plural

VERIFY_STATEMENT_MS = 300_000
# With `delete_leaves`, a parent scope of at most this many rows is probed as an array by its children's
# scopes (ScopeSql.array_parents): an index on the child's column then finds a person's 100,000 tool calls
# in milliseconds. Small, because without such an index every row compares with each element (PostgreSQL
# hashes an array only from 9 constant elements on).
ARRAY_PARENT_ROWS = 8
TID_COLUMN = "mcpops_tid"  # a delete scope's temp table also holds each row's ctid, under this name


@dataclass(frozen=True)
class MaterializedScope:
    table: TableRef
    key: tuple[str, ...]
    action: str
    columns: tuple[str, ...]
    temp_table: str  # "" when `remaining` is set: no temp table
    rows: int
    # Deleted by its own scope query while being materialised (`delete_leaves`): the count of rows that
    # query still finds, for the check after the commit (it reads the parents' kept temp tables).
    remaining: Select[Any] | None = None

    @property
    def deleted(self) -> bool:
        return self.remaining is not None


@dataclass(frozen=True)
class Progress:
    phase: str  # "counting", "hook", "deleting", "verifying"
    table: str
    rows_done: int
    rows_total: int
    elapsed_s: float


ProgressCallback = Callable[[Progress], None]


def materialize(
    conn: Connection,
    plan: DeletePlan,
    sql: ScopeSql,
    arm: Callable[[], None],
    counts: dict[str, int],
    report: Callable[[str], None],
    *,
    keep: bool,
    delete_leaves: bool = False,
) -> list[MaterializedScope]:
    """Every scope as a temp table of keys; `keep`: they outlive the commit, for the check after it.

    `arm()` runs before each statement (the time budget), `report(table)` says which one is next.
    `delete_leaves`: leaf tables without DELETE triggers or SET steps are deleted right away (module doc).
    """
    graph = plan.graph
    source = sql.source
    assert isinstance(source, TempSource)
    by_step: dict[Step, MaterializedScope] = {}
    deletes = {s.table: s for s in plan.delete_steps}
    walk = graph.walk
    index = 0
    for number, component in enumerate(walk.components):
        if number in walk.recursive:
            name = f"mcpops_component_{number}"
            tagged = sql.component_select(number)
            arm()
            conn.execute(CreateTempTableAs(name, select(tagged.c.tag, tagged.c.v), preserve=False))
            conn.execute(Analyze(name))
            source.component_names[number] = name
        for ref in component:
            index += 1
            step = deletes[ref]
            report(str(ref))
            name = f"mcpops_scope_{index}"
            t = sa_table(graph, ref).alias()
            key = graph.key(ref)
            arm()
            # Each row's ctid too (not for a partitioned table: ctids repeat across partitions): the DELETE
            # then finds its rows by TID (a TID scan), not by joining the keys back to the table (a scan and
            # a hash of the whole table: 7x slower for 10% of a big one).
            tid = column("ctid", _selectable=t)
            extra = [] if plan.catalog.table(ref).partitioned else [tid.label(TID_COLUMN)]
            query = select(*(t.c[k] for k in key), *extra).where(sql.predicate(ref, t))
            referenced = _scope_parent(plan, ref)
            if delete_leaves and not referenced and _deletable_at_once(plan, step):
                t = sa_table(graph, ref)
                rows = int(conn.execute(delete(t).where(sql.predicate(ref, t))).rowcount)
                remaining = select(func.count()).select_from(t).where(sql.predicate(ref, t))
                counts[step.snapshot_key] = rows
                by_step[step] = MaterializedScope(ref, key, "delete", (), "", rows, remaining)
                continue
            if referenced:
                # Parents go in their physical order: every deleted row fires its RI triggers, and
                # heap-ordered parents keep those probes local (users: about half the time of hash order).
                query = query.order_by(tid)
            rows = conn.execute(CreateTempTableAs(name, query, preserve=keep)).rowcount
            if referenced:  # its children's scopes are planned against it; a leaf's is only read whole
                conn.execute(Analyze(name))
                if delete_leaves and rows <= ARRAY_PARENT_ROWS:
                    sql.array_parents.add(ref)
            source.names[ref] = name
            counts[step.snapshot_key] = rows
            by_step[step] = MaterializedScope(ref, key, "delete", (), name, rows)
        if number in walk.recursive:
            conn.execute(DropTable(source.component_names.pop(number)))
    for number, step in enumerate(plan.set_steps, 1):
        assert step.edge is not None
        report(str(step.table))
        name = f"mcpops_set_{number}"
        x = sa_table(graph, step.table).alias()
        arm()
        query = select(*(x.c[k] for k in step.key)).where(*_outside(plan, sql, source, step, x))
        rows = conn.execute(CreateTempTableAs(name, query, preserve=keep)).rowcount
        conn.execute(Analyze(name))
        counts[step.snapshot_key] = rows
        by_step[step] = MaterializedScope(step.table, step.key, step.action, step.columns, name, rows)
    return [by_step[step] for step in plan.steps]


def _outside(plan: DeletePlan, sql: ScopeSql, source: TempSource, step: Step, x: Any) -> list[Any]:
    """Rows of the step's table referencing in-scope parent rows that are not themselves deleted."""
    fk = step.edge
    assert fk is not None
    conditions = [sql.edge_match(x, fk, over_child=True)]
    node = plan.graph.node(fk.child)
    if node in plan.graph.tables:
        tmp = source.temp(node)
        key = plan.graph.key(node)
        conditions.append(not_(exists(select(literal(1)).select_from(tmp).where(equal(tmp, x, key, key)))))
    return conditions


def _deletable_at_once(plan: DeletePlan, step: Step) -> bool:
    """A leaf's delete may move to its materialisation: alone in its batch, no DELETE trigger (which
    could skip rows or see other tables half deleted), no SET step reading its scope."""
    alone = sum(s.batch == step.batch for s in plan.delete_steps) == 1
    graph = plan.graph
    set_on_it = any(graph.node(s.table) == step.table for s in plan.set_steps)
    return alone and not set_on_it and not plan.catalog.firing(step.table, ("DELETE",))


def _scope_parent(plan: DeletePlan, ref: TableRef) -> bool:
    """Is `ref`'s scope read by another table's scope (a foreign key into one of its partitions, say)?"""
    graph = plan.graph
    return any(graph.node(fk.parent) == ref for fk in plan.catalog.foreign_keys)


class _Tid(UserDefinedType[Any]):
    cache_ok = True

    def get_col_spec(self, **_kw: Any) -> str:
        return "tid"


def apply(conn: Connection, plan: DeletePlan, step: Step, scope: MaterializedScope) -> int:
    """One set-based statement: a delete by the scope's TIDs, an update joined to its keys.

    A row this transaction changed after its scope was taken (a SET NULL fired by a parent deleted
    earlier) has a new TID: whatever the TIDs missed is deleted by key, so the count still holds.
    """
    t = sa_table(plan.graph, step.table)
    tmp = table(scope.temp_table, *(column(k) for k in scope.key), column(TID_COLUMN), schema=TEMP)
    if step.action != "delete":
        value: Any = None if step.action == "set null" else literal_column("DEFAULT")
        stmt = update(t).where(equal(t, tmp, step.key, step.key)).values({c: value for c in step.columns})
        return int(conn.execute(stmt).rowcount)
    by_key = delete(t).where(equal(t, tmp, step.key, step.key))
    if plan.catalog.table(step.table).partitioned:
        return int(conn.execute(by_key).rowcount)
    tids = cast(select(func.array_agg(tmp.c[TID_COLUMN])).scalar_subquery(), ARRAY(_Tid()))
    rows = int(conn.execute(delete(t).where(column("ctid", _selectable=t) == any_(tids))).rowcount)
    if rows < scope.rows:
        rows += int(conn.execute(by_key).rowcount)
    return rows


def batches(plan: DeletePlan, scopes: list[MaterializedScope]) -> list[list[tuple[Step, MaterializedScope]]]:
    """Steps in plan order, grouped: every SET step alone, delete steps by their batch."""
    groups: list[list[tuple[Step, MaterializedScope]]] = []
    for step, scope in zip(plan.steps, scopes, strict=True):
        last = groups[-1][-1][0] if groups else None
        if last is not None and step.action == last.action == "delete" and step.batch == last.batch:
            groups[-1].append((step, scope))
        else:
            groups.append([(step, scope)])
    return groups


def apply_batch(conn: Connection, plan: DeletePlan, group: list[tuple[Step, MaterializedScope]]) -> list[int]:
    """Tables on a cycle of order-forcing keys: one DELETE per table, all in one statement (data-modifying
    CTEs), so the database's checks and cascades run once all of them are gone."""
    counts = []
    for i, (step, scope) in enumerate(group):
        t = sa_table(plan.graph, step.table)
        tmp = table(scope.temp_table, *(column(k) for k in scope.key), schema=TEMP)
        gone = delete(t).where(equal(t, tmp, step.key, step.key)).returning(literal(1)).cte(f"mcpops_gone_{i}")
        counts.append(select(func.count()).select_from(gone).scalar_subquery())
    return [int(n) for n in conn.execute(select(*counts)).one()]


def verify(session: Connection, plan: DeletePlan, scopes: list[MaterializedScope]) -> list[str]:
    """After the commit, on the delete's own session: every deleted key is gone, every nulled column NULL.

    The kept temp tables hold every key the delete removed (not a sample); they are dropped here.
    """
    problems: list[str] = []
    with session.begin():
        set_local(session, "statement_timeout", str(VERIFY_STATEMENT_MS))
        if root_rows_left(session, plan):
            what = "the server row is" if plan.root_filters is None else "rows it started from are"
            problems.append(f"{plan.graph.root}: {what} still there")
        for scope in scopes:
            if scope.remaining is not None:
                left = session.execute(scope.remaining).scalar_one()
                if left:
                    again = f"{plural(left, 'row')} {noun(left, 'is', 'are')} in its scope again"
                    problems.append(f"{scope.table}: {again} ({plural(scope.rows, 'row')} deleted)")
                continue
            t = sa_table(plan.graph, scope.table)
            tmp = table(scope.temp_table, *(column(k) for k in scope.key), schema=TEMP)
            query = select(func.count()).select_from(t.join(tmp, equal(t, tmp, scope.key, scope.key)))
            if scope.action == "delete":
                left = session.execute(query).scalar_one()
                if left:
                    problems.append(f"{scope.table}: {left:,} of the {scope.rows:,} deleted rows are there again")
            elif scope.action == "set null":
                left = session.execute(query.where(or_(*(t.c[c].isnot(None) for c in scope.columns)))).scalar_one()
                if left:
                    problems.append(f"{scope.table}: {left:,} of the {scope.rows:,} nulled rows are not NULL")
        for scope in scopes:
            if scope.temp_table:
                session.execute(DropTable(scope.temp_table))
    return problems


def count_holds(conn: Connection, plan: DeletePlan, scope: MaterializedScope, rows: int) -> bool:
    """Did a step change exactly its scope's rows? Fewer deleted is right too when none of them is left: a
    user trigger fired earlier in this transaction deleted the rest (the backup, taken before, holds them)."""
    if rows == scope.rows:
        return True
    if rows > scope.rows or scope.action != "delete":
        return False
    t = sa_table(plan.graph, scope.table)
    tmp = table(scope.temp_table, *(column(k) for k in scope.key), schema=TEMP)
    left = conn.execute(select(func.count()).select_from(t.join(tmp, equal(t, tmp, scope.key, scope.key))))
    return not left.scalar_one()


def root_rows_left(conn: Connection, plan: DeletePlan) -> bool:
    """The plan's root rows still there: the server row (by key), or (rooted plan) those its first filter picks."""
    if plan.root_filters is None:
        return server_exists(conn, server_key=plan.server_key)
    root = sa_table(plan.graph, plan.graph.root)
    where = plan.root_filters[plan.graph.root](root)
    return bool(conn.execute(select(func.count()).select_from(root).where(where)).scalar_one())
