"""Running a delete plan: one REPEATABLE READ transaction, all or nothing.

1. Re-plan from the catalog inside the transaction (a table added since the impact report
   shows up as a difference, not as a surprise).
2. Materialise every scope as a temporary table of primary keys (`ON COMMIT DROP`), parents
   first, and each SET NULL/SET DEFAULT edge's rows likewise; the row counts of those
   statements are the re-count. (Rows outside the scope that a NO ACTION/RESTRICT edge ties to
   it were reported by the impact report; if new ones appeared since, the database refuses the
   parent's DELETE and everything rolls back.)
3. Compare the counts with the snapshot the person confirmed; any difference (beyond the
   allowed drift) rolls back and says what changed.
4. Call `before_delete(conn, plan, scopes)` if given (the backup hook, see below).
5. Run the SET NULL/SET DEFAULT updates, then one `DELETE ... USING <scope>` per table,
   children before parents; each must remove exactly its scope's row count.
6. Commit (or, for a dry run, roll back), then, on the same session, check against the kept
   tables of keys that every deleted row is gone (and every nulled column is NULL), and drop
   them.

REPEATABLE READ makes every step see one snapshot: a row another session changes or adds
under the scope (a new session for an orphaned user on another server, say) makes the
delete fail with a serialization error instead of deleting what nobody approved.

The `before_delete` contract
----------------------------
`before_delete(conn, plan, scopes)` runs inside the delete's transaction, after the scopes
are materialised and re-counted and before anything is changed. `conn` is that transaction's
connection (use it, do not commit it). `scopes` is a list of `MaterializedScope`, in plan order
(SET NULL/SET DEFAULT rows first, then deletes children before parents), each with:
  - `table`: a TableRef (`.schema`, `.name`, `.qualified`);
  - `key`: the table's primary-key columns;
  - `action`: "delete", "set null" or "set default"; `columns`: the columns a set action changes;
  - `temp_table`: the name of the temporary table holding the scope's primary keys
    (columns named like the key; a delete scope also has `mcpops_tid`, each row's ctid), so
    `COPY (SELECT t.* FROM <table> t JOIN <temp_table> USING (<key>)) TO STDOUT` exports exactly
    the rows about to change;
  - `rows`: how many rows it holds.
Any exception it raises rolls the whole delete back and is reported as the failure.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Connection,
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
from sqlalchemy.exc import DBAPIError
from sqlalchemy.types import UserDefinedType

from bot.deletion.catalog import TableRef
from bot.deletion.identity import snapshot_changes
from bot.deletion.plan import (
    WORK_MEM,
    DeletePlan,
    PlanProblem,
    Step,
    build_plan,
    server_exists,
    set_local,
)
from bot.deletion.scope import ScopeSql, TempSource, equal, sa_table
from bot.deletion.sqlext import Analyze, CreateTempTableAs, DropTable
from bot.errors import UserFacingError
from bot.stages import Stage

log = logging.getLogger(__name__)

MIN_STATEMENT_MS = 1000
TID_COLUMN = "mcpops_tid"  # a delete scope's temp table also holds each row's ctid, under this name
VERIFY_STATEMENT_MS = 300_000


class DeleteFailed(UserFacingError):
    """The delete did not happen; the transaction was rolled back."""

    outcome = "failed"


class SnapshotChanged(DeleteFailed):
    """The fresh counts differ from the confirmed ones; nothing was deleted."""

    outcome = "stale"

    def __init__(self, message: str, *, changes: list[str], fresh: dict[str, int]) -> None:
        super().__init__(message)
        self.changes = changes
        self.fresh = fresh


class Blocked(DeleteFailed):
    outcome = "blocked"


@dataclass(frozen=True)
class MaterializedScope:
    table: TableRef
    key: tuple[str, ...]
    action: str
    columns: tuple[str, ...]
    temp_table: str
    rows: int


@dataclass(frozen=True)
class Progress:
    phase: str  # "counting", "hook", "deleting", "verifying"
    table: str
    rows_done: int
    rows_total: int
    elapsed_s: float


@dataclass
class StepResult:
    key: str
    table: str
    action: str
    rows: int
    seconds: float


@dataclass
class DeleteResult:
    slug: str
    counts: dict[str, int]
    steps: list[StepResult]
    duration_s: float
    dry_run: bool
    verified: bool
    verification: list[str] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        return sum(s.rows for s in self.steps if s.action == "delete")


BeforeDelete = Callable[[Connection, DeletePlan, list[MaterializedScope]], None]
ProgressCallback = Callable[[Progress], None]


class _DryRun(Exception):
    """Raised inside the transaction to roll a dry run back."""


def _describe_db_error(exc: DBAPIError) -> str:
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None) or ""
    diag = getattr(orig, "diag", None)
    constraint = getattr(diag, "constraint_name", None)
    table_name = getattr(diag, "table_name", None)
    if sqlstate == "23503":
        return f"the database refused: foreign key `{constraint}` on `{table_name}` still references deleted rows"
    if sqlstate in ("40001", "40P01"):
        return "the data changed while the delete ran (a concurrent write or deadlock)"
    if sqlstate == "23502":
        return f"the database refused: a NOT NULL column of `{table_name}` cannot be set to NULL"
    if sqlstate.startswith("P0") or sqlstate.startswith("23"):
        where = f" on `{table_name}`" if table_name else ""
        return f"the database refused the change{where} (SQLSTATE {sqlstate})"
    return f"the database reported an error (SQLSTATE {sqlstate or 'unknown'})"


class _Budget:
    """The statement timeout of each statement is what remains of the whole delete's budget."""

    def __init__(self, conn: Connection, budget_s: float) -> None:
        self.conn = conn
        self.deadline = time.monotonic() + budget_s

    def arm(self) -> None:
        remaining_ms = int((self.deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            raise DeleteFailed("the delete ran out of its time budget")
        set_local(self.conn, "statement_timeout", str(max(remaining_ms, MIN_STATEMENT_MS)))


def execute_delete(
    stage: Stage,
    slug: str | None = None,
    *,
    server_key: Mapping[str, Any] | None = None,
    expected: dict[str, int] | None,
    drift_percent: float = 0.0,
    budget_s: float,
    lock_timeout_ms: int | None = None,
    dry_run: bool = False,
    before_delete: BeforeDelete | None = None,
    progress: ProgressCallback | None = None,
    work_name: str | None = None,
    plan_for: Callable[[Connection], DeletePlan] | None = None,
    expected_hash: str | None = None,
) -> DeleteResult:
    """Delete one server and its scope, or raise a UserFacingError with nothing changed.

    The server is named as for `build_plan`: by `slug`, by `server_key` (its primary key, what a request
    binds), or both; it is resolved inside the delete's own transaction.
    `plan_for(conn)`, if given, makes the plan inside the transaction instead (a rooted plan: forget-user's
    scope starts at a person's rows; `slug` is then only its label).
    `expected_hash`, the approved snapshot's hash, also binds which tables are in the plan
    (bot/deletion/identity.py: `snapshot_changes`).
    """
    started = time.monotonic()
    report = progress or (lambda _p: None)
    results: list[StepResult] = []
    counts: dict[str, int] = {}
    plan_holder: list[DeletePlan] = []
    kept: list[MaterializedScope] = []
    problems: list[str] = []
    committing = False

    def elapsed() -> float:
        return time.monotonic() - started

    def check_after_commit(session: Connection) -> None:
        report(Progress("verifying", "", sum(r.rows for r in results if r.action == "delete"), 0, elapsed()))
        problems.extend(verify(session, plan_holder[0], kept))

    try:
        with stage.write(
            statement_timeout_ms=int(budget_s * 1000),
            lock_timeout_ms=lock_timeout_ms,
            isolation="REPEATABLE READ",
            after_commit=None if dry_run else check_after_commit,
            application_name=work_name,
        ) as conn:
            budget = _Budget(conn, budget_s)
            set_local(conn, "work_mem", WORK_MEM)
            plan = plan_for(conn) if plan_for is not None else build_plan(conn, slug, server_key=server_key)
            plan_holder.append(plan)
            slug = plan.slug
            if plan.problems:
                raise Blocked("the delete can't be planned: " + "; ".join(plan.problems))
            sql = plan.scope_sql(source_factory=TempSource, prefix="mcpops")
            source = sql.source
            assert isinstance(source, TempSource)
            scopes = _materialize(conn, plan, sql, source, budget, counts, report, elapsed, keep=not dry_run)
            kept.extend(scopes)
            if expected is not None:
                changes = snapshot_changes(expected, counts, drift_percent, approved_hash=expected_hash)
                if changes:
                    raise SnapshotChanged(
                        "the rows in scope changed since the plan was confirmed: " + "; ".join(changes[:6]),
                        changes=changes,
                        fresh=dict(counts),
                    )
            if before_delete is not None:
                report(Progress("hook", "", 0, 0, elapsed()))
                budget.arm()
                before_delete(conn, plan, scopes)
            total = sum(s.rows for s in scopes if s.action == "delete")
            done = 0
            for step, scope in zip(plan.steps, scopes, strict=True):
                report(Progress("deleting", str(step.table), done, total, elapsed()))
                budget.arm()
                step_started = time.monotonic()
                rows = _apply(conn, plan, step, scope)
                if rows != scope.rows:
                    raise DeleteFailed(
                        f"{step.table}: expected to {step.action} {scope.rows:,} rows, the database reported {rows:,}"
                    )
                if step.action == "delete":
                    done += rows
                results.append(
                    StepResult(step.snapshot_key, str(step.table), step.action, rows, time.monotonic() - step_started)
                )
            report(Progress("deleting", "", done, total, elapsed()))
            if dry_run:
                raise _DryRun
            committing = True
    except _DryRun:
        return DeleteResult(plan_holder[0].slug, counts, results, elapsed(), dry_run=True, verified=True)
    except UserFacingError:
        if committing:
            return _after_uncertain_commit(stage, plan_holder[0], counts, results, elapsed())
        raise
    except DBAPIError as exc:
        if committing:
            return _after_uncertain_commit(stage, plan_holder[0], counts, results, elapsed())
        raise DeleteFailed(_describe_db_error(exc)) from exc
    return DeleteResult(
        plan_holder[0].slug, counts, results, elapsed(), dry_run=False, verified=not problems, verification=problems
    )


def delete_in_transaction(conn: Connection, plan: DeletePlan, *, budget_s: float) -> list[StepResult]:
    """Materialise and apply a plan inside the caller's open write transaction: no commit, no check after.

    For a delete that is one part of another change (forget-user re-applied inside a restore's
    transaction). Its temporary tables are dropped before it returns, so it can run more than once
    in one transaction. A refusal by the database raises DeleteFailed with its meaning.
    """
    if plan.problems:
        raise Blocked("the delete can't be planned: " + "; ".join(plan.problems))
    budget = _Budget(conn, budget_s)
    set_local(conn, "work_mem", WORK_MEM)
    sql = plan.scope_sql(source_factory=TempSource, prefix="mcpops")
    source = sql.source
    assert isinstance(source, TempSource)
    counts: dict[str, int] = {}
    results: list[StepResult] = []
    try:
        scopes = _materialize(conn, plan, sql, source, budget, counts, lambda _p: None, lambda: 0.0, keep=False)
        for step, scope in zip(plan.steps, scopes, strict=True):
            budget.arm()
            started = time.monotonic()
            rows = _apply(conn, plan, step, scope)
            if rows != scope.rows:
                raise DeleteFailed(
                    f"{step.table}: expected to {step.action} {scope.rows:,} rows, the database reported {rows:,}"
                )
            seconds = time.monotonic() - started
            results.append(StepResult(step.snapshot_key, str(step.table), step.action, rows, seconds))
        for scope in scopes:
            conn.execute(DropTable(scope.temp_table))
    except DBAPIError as exc:
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        if sqlstate.startswith(("23", "P0")):  # a constraint or a trigger refused; timeouts and lost links pass
            raise DeleteFailed(_describe_db_error(exc)) from exc
        raise
    return results


def _materialize(
    conn: Connection,
    plan: DeletePlan,
    sql: ScopeSql,
    source: TempSource,
    budget: _Budget,
    counts: dict[str, int],
    report: ProgressCallback,
    elapsed: Callable[[], float],
    *,
    keep: bool,
) -> list[MaterializedScope]:
    """Every scope as a temp table of keys; `keep`: they outlive the commit, for the check after it."""
    graph = plan.graph
    by_step: dict[Step, MaterializedScope] = {}
    deletes = {s.table: s for s in plan.delete_steps}
    for index, ref in enumerate(graph.order, 1):
        step = deletes[ref]
        report(Progress("counting", str(ref), 0, 0, elapsed()))
        name = f"mcpops_scope_{index}"
        t = sa_table(graph, ref).alias()
        key = graph.key(ref)
        budget.arm()
        # Each row's ctid too: the DELETE then finds its rows by TID (a TID scan), not by joining the
        # keys back to the table (a scan and a hash of the whole table: 7x slower for 10% of a big one).
        tid = column("ctid", _selectable=t)
        query = select(*(t.c[k] for k in key), tid.label(TID_COLUMN)).where(sql.predicate(ref, t))
        referenced = bool(plan.catalog.referencing(ref))
        if referenced:
            # Parents go in their physical order: every deleted row fires its RI triggers, and
            # heap-ordered parents keep those probes local (users: about half the time of hash order).
            query = query.order_by(tid)
        rows = conn.execute(CreateTempTableAs(name, query, preserve=keep)).rowcount
        if referenced:  # its children's scopes are planned against it; a leaf's is only read whole
            conn.execute(Analyze(name))
        source.names[ref] = name
        counts[step.snapshot_key] = rows
        by_step[step] = MaterializedScope(ref, key, "delete", (), name, rows)
    for index, step in enumerate(plan.set_steps, 1):
        assert step.edge is not None
        report(Progress("counting", str(step.table), 0, 0, elapsed()))
        name = f"mcpops_set_{index}"
        x = sa_table(graph, step.table).alias()
        budget.arm()
        rows = conn.execute(
            CreateTempTableAs(
                name,
                select(*(x.c[k] for k in step.key)).where(*_outside(plan, sql, source, step.edge, x)),
                preserve=keep,
            )
        ).rowcount
        conn.execute(Analyze(name))
        counts[step.snapshot_key] = rows
        by_step[step] = MaterializedScope(step.table, step.key, step.action, step.columns, name, rows)
    return [by_step[step] for step in plan.steps]


def _outside(plan: DeletePlan, sql: ScopeSql, source: TempSource, fk: Any, x: Any) -> list[Any]:
    """Rows of fk.child referencing in-scope fk.parent rows that are not themselves in a delete scope."""
    conditions = [sql.edge_match(x, fk)]
    if fk.child in plan.graph.tables:
        tmp = source.temp(fk.child)
        key = plan.graph.key(fk.child)
        conditions.append(not_(exists(select(literal(1)).select_from(tmp).where(equal(tmp, x, key, key)))))
    return conditions


class _Tid(UserDefinedType[Any]):
    cache_ok = True

    def get_col_spec(self, **_kw: Any) -> str:
        return "tid"


def _apply(conn: Connection, plan: DeletePlan, step: Step, scope: MaterializedScope) -> int:
    """One set-based statement: a delete by the scope's TIDs, an update joined to its keys."""
    t = sa_table(plan.graph, step.table)
    tmp = table(scope.temp_table, *(column(k) for k in scope.key), column(TID_COLUMN))
    if step.action == "delete":
        tids = cast(select(func.array_agg(tmp.c[TID_COLUMN])).scalar_subquery(), ARRAY(_Tid()))
        stmt: Any = delete(t).where(column("ctid", _selectable=t) == any_(tids))
    else:
        value: Any = None if step.action == "set null" else literal_column("DEFAULT")
        stmt = update(t).where(equal(t, tmp, step.key, step.key)).values({c: value for c in step.columns})
    return int(conn.execute(stmt).rowcount)


def verify(session: Connection, plan: DeletePlan, scopes: list[MaterializedScope]) -> list[str]:
    """After the commit, on the delete's own session: every deleted key is gone, every nulled column NULL.

    The kept temp tables hold every key the delete removed (not a sample); they are dropped here.
    """
    problems: list[str] = []
    with session.begin():
        set_local(session, "statement_timeout", str(VERIFY_STATEMENT_MS))
        if _root_rows_left(session, plan):
            what = "the server row is" if plan.root_filters is None else "rows it started from are"
            problems.append(f"{plan.graph.root}: {what} still there")
        for scope in scopes:
            t = sa_table(plan.graph, scope.table)
            tmp = table(scope.temp_table, *(column(k) for k in scope.key))
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
            session.execute(DropTable(scope.temp_table))
    return problems


def _root_rows_left(conn: Connection, plan: DeletePlan) -> bool:
    """The plan's root rows still there: the server row (by key), or (rooted plan) those its first filter picks."""
    if plan.root_filters is None:
        return server_exists(conn, server_key=plan.server_key)
    root = sa_table(plan.graph, plan.graph.root)
    where = plan.root_filters[plan.graph.root](root)
    return bool(conn.execute(select(func.count()).select_from(root).where(where)).scalar_one())


def _after_uncertain_commit(
    stage: Stage, plan: DeletePlan, counts: dict[str, int], results: list[StepResult], elapsed: float
) -> DeleteResult:
    """The connection failed during COMMIT (or right after): the server row says whether it happened."""
    try:
        with stage.read() as conn:
            still_there = _root_rows_left(conn, plan)
    except UserFacingError as exc:
        raise DeleteFailed(
            "the connection failed while committing and the stage can't be checked now; "
            "run `/mcp impact` to see whether the server is still there"
        ) from exc
    if still_there:
        raise DeleteFailed("the connection failed while committing; the delete did not happen (rolled back)")
    # One transaction: the server row gone means everything went with it; the session that could
    # compare every key is gone, so say the check was not done rather than claim it.
    return DeleteResult(
        plan.slug,
        counts,
        results,
        elapsed,
        dry_run=False,
        verified=False,
        verification=["the connection was lost at commit: the server row is gone, the other rows were not re-checked"],
    )


class Heartbeat:
    """Calls `tick` every `interval` seconds while a long statement runs (for progress messages)."""

    def __init__(self, tick: Callable[[], None], interval: float) -> None:
        self.tick = tick
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delete-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception:  # progress is best effort; the delete must not notice
                log.warning("progress update failed", exc_info=True)


__all__ = [
    "BeforeDelete",
    "Blocked",
    "DeleteFailed",
    "DeleteResult",
    "Heartbeat",
    "MaterializedScope",
    "PlanProblem",
    "Progress",
    "SnapshotChanged",
    "delete_in_transaction",
    "execute_delete",
]
