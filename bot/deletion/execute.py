"""Running a delete plan: one REPEATABLE READ transaction, all or nothing.

1. Re-plan from the catalog inside the transaction (a table added since the impact report
   shows up as a difference, not as a surprise).
2. Materialise every scope as a temporary table of primary keys (`ON COMMIT DROP`), parents
   first, and each SET NULL/SET DEFAULT edge's rows likewise; the row counts of those
   statements are the re-count. (Rows outside the scope that a RESTRICT edge ties to it were
   reported by the impact report; if new ones appeared since, the database refuses the parent's
   DELETE and everything rolls back.) `row_security` is off: rows the role cannot see are an
   error, never a short count.
3. Compare the counts with the snapshot the person confirmed; any difference (beyond the
   allowed drift) rolls back and says what changed.
4. Call `before_delete(conn, plan, scopes)` if given (the backup hook, see below).
5. Run the SET NULL/SET DEFAULT updates, then one `DELETE ... USING <scope>` per table,
   children before parents; each must remove exactly its scope's row count (tables that cascade
   into each other: at most that, and none of it left).
6. `SET CONSTRAINTS ALL IMMEDIATE`: deferred constraints are checked now, so a violation is
   reported with its constraint and table (a dry run checks them too), not as a failed commit.
7. Commit (or, for a dry run, roll back), then, on the same session, check against the kept
   tables of keys that every deleted row is gone (and every nulled column is NULL), and drop
   them.

`delete_leaves=True` (a caller whose hook never reads the rows being deleted, and takes no backup:
forget-user) moves step 5's DELETE of each leaf table (one no foreign key references, without DELETE
triggers or SET steps) into step 2: it is deleted by its scope query there, its count being the
DELETE's, compared in step 3 like any other (a difference still rolls everything back). One pass over
the table instead of two (collect keys, delete by them), and no temp table: after the commit its
scope query is run again over the parents' kept keys and must find nothing. A parent scope of a few
rows (one person's user row and sessions) is then probed as an array of its keys, which an index on
the child's column serves (steps.ARRAY_PARENT_ROWS).

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
    (columns named like the key; a delete scope of a plain table also has `mcpops_tid`, each row's
    ctid), so `COPY (SELECT t.* FROM <table> t JOIN <temp_table> USING (<key>)) TO STDOUT` exports
    exactly the rows about to change;
  - `rows`: how many rows it holds.
Any exception it raises rolls the whole delete back and is reported as the failure.
With `delete_leaves`, scopes already deleted are not passed (their rows are gone).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from bot.deletion import dberrors
from bot.deletion.identity import snapshot_changes
from bot.deletion.outcomes import Blocked, DeleteFailed, DeleteResult, SnapshotChanged, StepResult
from bot.deletion.plan import WORK_MEM, DeletePlan, PlanProblem, build_plan, set_local
from bot.deletion.scope import Rules
from bot.deletion.scopesql import TempSource
from bot.deletion.sqlext import DropTable
from bot.deletion.steps import (
    MaterializedScope,
    Progress,
    ProgressCallback,
    apply,
    apply_batch,
    batches,
    count_holds,
    materialize,
    root_rows_left,
    verify,
)
from bot.errors import QueryTimeout, StageUnavailable, UserFacingError
from bot.slacktext.words import plural
from bot.stages import Stage

log = logging.getLogger(__name__)

MIN_STATEMENT_MS = 1000
REARM_FRACTION = 0.01  # the statement timeout is set again once 1% of the budget has passed since ...
REARM_MIN_S = 0.5  # ... or half a second, whichever is longer
# Errors that mean "refused, nothing happened", even when raised by COMMIT (deferred constraints and triggers).
DEFINITE = ("23", "P0", "40", "42")


BeforeDelete = Callable[[Connection, DeletePlan, list[MaterializedScope]], None]


class _DryRun(Exception):
    """Raised inside the transaction to roll a dry run back."""


class _Budget:
    """The statement timeout of each statement is what remains of the whole delete's budget.

    It is set again only once the last setting is `slack_s` old (1% of the budget, at least half a
    second): a statement may then end at most that much past the deadline, and a delete of many
    small steps does not pay a round trip per step for it (under load, each costs milliseconds).
    """

    def __init__(self, conn: Connection, budget_s: float, *, armed: bool = False) -> None:
        """`armed`: the transaction began with the whole budget as its statement timeout (just now)."""
        self.conn = conn
        self.deadline = time.monotonic() + budget_s
        self.slack_s = max(REARM_MIN_S, budget_s * REARM_FRACTION)
        self.armed_at: float | None = time.monotonic() if armed else None

    def arm(self) -> None:
        now = time.monotonic()
        remaining_ms = int((self.deadline - now) * 1000)
        if remaining_ms <= 0:
            raise DeleteFailed("the delete ran out of its time budget")
        if self.armed_at is not None and now - self.armed_at < self.slack_s:
            return
        set_local(self.conn, "statement_timeout", str(max(remaining_ms, MIN_STATEMENT_MS)))
        self.armed_at = now


def _definite(exc: DBAPIError) -> bool:
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    return not exc.connection_invalidated and sqlstate.startswith(DEFINITE)


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
    rules: Rules | None = None,
    delete_leaves: bool = False,
) -> DeleteResult:
    """Delete one server and its scope, or raise a UserFacingError with nothing changed.

    The server is named as for `build_plan`: by `slug`, by `server_key` (its primary key, what a request
    binds), or both; it is resolved inside the delete's own transaction. `rules` as for `build_plan`
    (NO_ACTION_EDGES). `plan_for(conn)`, if given, makes the plan inside the transaction instead (a
    rooted plan: forget-user's scope starts at a person's rows; `slug` is then only its label).
    `expected_hash`, the approved snapshot's hash, also binds which tables are in the plan
    (bot/deletion/identity.py: `snapshot_changes`). `delete_leaves`: see the module doc; never with a
    `before_delete` that reads or exports the rows about to go (a backup).
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
            budget = _Budget(conn, budget_s, armed=True)  # stage.write set statement_timeout to the budget
            # work_mem, and row_security off: rows hidden from the role are an error, never a short count.
            conn.execute(
                text("SELECT set_config('work_mem', :work_mem, true), set_config('row_security', 'off', true)"),
                {"work_mem": WORK_MEM},
            )
            plan = (
                plan_for(conn) if plan_for is not None else build_plan(conn, slug, server_key=server_key, rules=rules)
            )
            plan_holder.append(plan)
            if plan.problems:
                raise Blocked("the delete can't be planned: " + "; ".join(plan.problems))
            if plan.defer_constraints:
                conn.execute(text("SET CONSTRAINTS ALL DEFERRED"))
            sql = plan.scope_sql(source_factory=TempSource, prefix="mcpops")
            scopes = materialize(
                conn,
                plan,
                sql,
                budget.arm,
                counts,
                lambda table: report(Progress("counting", table, 0, 0, elapsed())),
                keep=not dry_run,
                delete_leaves=delete_leaves,
            )
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
                before_delete(conn, plan, [s for s in scopes if not s.deleted])
            total = sum(s.rows for s in scopes if s.action == "delete")

            def before_each(step: Any, done: int) -> None:
                report(Progress("deleting", str(step.table), done, total, elapsed()))

            results.extend(_apply_steps(conn, plan, scopes, budget, before_each))
            report(Progress("deleting", "", sum(r.rows for r in results if r.action == "delete"), total, elapsed()))
            conn.execute(text("SET CONSTRAINTS ALL IMMEDIATE"))  # deferred checks now, with their meaning
            if dry_run:
                raise _DryRun
            committing = True
    except _DryRun:
        return DeleteResult(plan_holder[0].slug, counts, results, elapsed(), dry_run=True, verified=True)
    except QueryTimeout as exc:
        raise dberrors.rolled_back(exc, stage.name) from exc.__cause__
    except StageUnavailable:
        if committing:
            return _after_uncertain_commit(stage, plan_holder[0], counts, results, elapsed())
        raise
    except DBAPIError as exc:
        if committing and not _definite(exc):
            return _after_uncertain_commit(stage, plan_holder[0], counts, results, elapsed())
        raise DeleteFailed(dberrors.describe(exc, at_commit=committing)) from exc
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
    counts: dict[str, int] = {}
    results: list[StepResult] = []
    try:
        scopes = materialize(conn, plan, sql, budget.arm, counts, lambda _t: None, keep=False)
        results = _apply_steps(conn, plan, scopes, budget, lambda _step, _done: None)
        for scope in scopes:
            conn.execute(DropTable(scope.temp_table))
    except DBAPIError as exc:
        if _definite(exc):  # a constraint or a trigger refused; timeouts and lost links pass
            raise DeleteFailed(dberrors.describe(exc)) from exc
        raise
    return results


def _apply_steps(
    conn: Connection,
    plan: DeletePlan,
    scopes: list[MaterializedScope],
    budget: _Budget,
    before_each: Callable[[Any, int], None],
) -> list[StepResult]:
    """Every step in plan order (a batch of tables in one statement), each checked against its scope's count."""
    results: list[StepResult] = []
    done = 0
    for group in batches(plan, scopes):
        first = group[0][0]
        before_each(first, done)
        budget.arm()
        step_started = time.monotonic()
        if len(group) == 1 and group[0][1].deleted:
            counted: int | list[int] = group[0][1].rows  # deleted while materialised
        elif len(group) == 1:
            counted = apply(conn, plan, first, group[0][1])
        else:
            counted = apply_batch(conn, plan, group)
        seconds = (time.monotonic() - step_started) / len(group)
        for (step, scope), rows in zip(group, [counted] if isinstance(counted, int) else counted, strict=True):
            if not count_holds(conn, plan, scope, rows):
                why = dberrors.short_count_causes(conn, plan.catalog, step.table, step.action)
                raise DeleteFailed(
                    f"{step.table}: expected to {step.action} {plural(scope.rows, 'row')},"
                    f" the database reported {rows:,}{why}; nothing was changed (rolled back)"
                )
            if step.action == "delete":
                done += rows
            results.append(StepResult(step.snapshot_key, str(step.table), step.action, rows, seconds))
    return results


def _after_uncertain_commit(
    stage: Stage, plan: DeletePlan, counts: dict[str, int], results: list[StepResult], elapsed: float
) -> DeleteResult:
    """The connection failed during COMMIT (or right after): the server row says whether it happened."""
    try:
        with stage.read() as conn:
            still_there = root_rows_left(conn, plan)
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
