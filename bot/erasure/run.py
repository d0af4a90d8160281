"""Forgetting a person: one transaction, the deletion engine's execution, and a check after the commit.

The engine re-plans inside its REPEATABLE READ transaction (`plan_for`: the person is found again
from the request's digests; other user rows or emails than planned make the request stale),
materialises every scope (`delete_leaves`: tables nothing references, the user's ~100,000 tool
calls say, are deleted by their scope query right there, their count the DELETE's), compares the
counts, then calls the `before_delete` hook, which here anonymises the `anonymise`-mode rows of
ERASURE_COLUMNS and replaces the email inside the listed JSON columns of rows that stay (rows in the
delete scope are left to the delete, or already gone), comparing those counts too. Then the engine
deletes the rest, children first, and commits. After the commit a read checks
that nothing matching the person remains: no user row, no listed column, no JSON value touched.

`reapply` does the same inside somebody else's write transaction (a restore of an older backup).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Text,
    bindparam,
    case,
    cast,
    column,
    exists,
    func,
    literal,
    not_,
    select,
    table,
    true,
    update,
)
from sqlalchemy.types import NullType

from bot.deletion.catalog import Catalog, TableRef, load_catalog
from bot.deletion.execute import (
    DeleteFailed,
    MaterializedScope,
    ProgressCallback,
    SnapshotChanged,
    delete_in_transaction,
    execute_delete,
)
from bot.deletion.impact import compare_snapshots
from bot.deletion.plan import DeletePlan, PlanProblem
from bot.deletion.scopesql import TEMP, equal, sa_table
from bot.deletion.sqlext import as_type
from bot.erasure.identity import (
    digest,
    json_mentions,
    person_matches,
    scrub_mentions,
    sql_key_text,
    sql_row_token,
    sql_token,
)
from bot.erasure.plan import (
    LABEL,
    ErasureTarget,
    Found,
    delete_plan,
    email_matches,
    extras_key,
    find_person,
    identity_match,
    is_extra,
    key_texts,
    keys_in,
)
from bot.erasure.settings import ErasureSettings
from bot.erasure.targets import Targets, resolve_targets
from bot.slacktext.words import noun, plural
from bot.stages import Stage

VERIFY_STATEMENT_MS = 300_000
# The server's detail of a key violation quotes the values ("Key (id)=(msu_...)"): the person's own keys here.
_KEY_DETAIL = re.compile(r"\s*\((?:Key|Failing row contains) .*\)\s*$", re.DOTALL)
_WORD = re.compile(r"[^\s()'\"`,;:=]+")


def redact(message: str, target: ErasureTarget) -> str:
    """A database error without the person in it: the server's quoted key values dropped, and any word of
    it (a trigger's RAISE text naming OLD.mcp_server_user_id, say) that is the identifier or one of the
    person's user keys, by digest, shown as the label. Emails are masked by the error's own scrub."""
    known = {target.person.exact, target.person.normalised, *target.user_keys}
    return _WORD.sub(
        lambda m: target.person.label if digest(m.group(0)) in known else m.group(0), _KEY_DETAIL.sub("", message)
    )


Outside = Callable[[TableRef, Any], ColumnElement[bool]]


@dataclass
class Extras:
    """What the hook changed besides the engine's deletes: counts and the keys, for the check after."""

    counts: dict[str, int] = field(default_factory=dict)
    scanned: dict[str, int] = field(default_factory=dict)  # ERASURE_SCAN_ALL replacements, per column
    touched: dict[TableRef, list[tuple[Any, ...]]] = field(default_factory=dict)


@dataclass
class ErasureResult:
    counts: dict[str, int]
    steps: list[dict[str, Any]]
    duration_s: float
    dry_run: bool
    verified: bool
    verification: list[str] = field(default_factory=list)
    scanned: dict[str, int] = field(default_factory=dict)

    @property
    def total_rows(self) -> int:
        return sum(s["rows"] for s in self.steps)


def apply_extras(conn: Connection, catalog: Catalog, targets: Targets, found: Found, outside: Outside) -> Extras:
    """Anonymise `anonymise`-mode rows, then replace the email in listed JSON columns of kept rows."""
    extras = Extras()
    fold = targets.fold
    for it in targets.anonymised:
        t = sa_table(catalog, it.table)
        key = catalog.table(it.table).key
        row_key = sql_key_text(t, key)
        values: dict[str, Any] = {
            c: case(
                (
                    email_matches(t.c[c], found.emails, fold),
                    sql_row_token(t.c[c], row_key, fold) if c in it.unique else sql_token(t.c[c], fold),
                ),
                else_=t.c[c],
            )
            for c in it.columns
        }
        values |= {c.column: (None if c.nullable else literal("")) for c in it.clear}
        stmt = (
            update(t)
            .where(identity_match(t, it, found.emails, fold), outside(it.table, t))
            .values(values)
            .returning(*key_texts(t, key))
        )
        keys = [tuple(r) for r in conn.execute(stmt)]
        extras.counts[extras_key("anonymise", it.table)] = len(keys)
        extras.touched[it.table] = keys
    for jc in targets.json:
        t = sa_table(catalog, jc.table)
        key = catalog.table(jc.table).key
        where = [json_mentions(t.c[jc.column], found.emails, fold), outside(jc.table, t)]
        if not targets.scan_all:
            kept = extras.touched.get(jc.table, [])
            where.append(keys_in(t, catalog.table(jc.table), kept))
        rows = conn.execute(select(*key_texts(t, key), cast(t.c[jc.column], Text)).where(*where)).all()
        changes = []
        for row in rows:
            scrubbed, replaced = scrub_mentions(row[-1], found.emails)
            if replaced:
                changes.append({**{f"k{i}": v for i, v in enumerate(row[:-1])}, "value": scrubbed})
        if changes:
            target = sa_table(catalog, jc.table)
            info = catalog.table(jc.table)
            conn.execute(
                update(target)
                .where(*(target.c[k] == as_type(None, info.type_of(k), f"k{i}") for i, k in enumerate(key)))
                .values({jc.column: bindparam("value", type_=NullType())}),
                changes,
            )
        counted = extras.scanned if targets.scan_all else extras.counts
        counted[extras_key("json", jc.table, jc.column)] = len(changes)
        extras.touched.setdefault(jc.table, []).extend(tuple(r[:-1]) for r in rows)
    return extras


def _outside_scopes(catalog: Catalog, scopes: list[MaterializedScope]) -> Outside:
    """Rows not in a delete scope, by the engine's materialised keys."""
    deleted = {s.table: s for s in scopes if s.action == "delete"}

    def outside(ref: TableRef, alias: Any) -> ColumnElement[bool]:
        scope = deleted.get(ref)
        if scope is None:
            return true()
        tmp = table(scope.temp_table, *(column(k) for k in scope.key), schema=TEMP)
        return not_(exists(select(literal(1)).select_from(tmp).where(equal(tmp, alias, scope.key, scope.key))))

    return outside


def run_erasure(
    stage: Stage,
    settings: ErasureSettings,
    target: ErasureTarget,
    *,
    expected: dict[str, int] | None,
    budget_s: float,
    drift_percent: float = 0.0,
    lock_timeout_ms: int | None = None,
    dry_run: bool = False,
    progress: ProgressCallback | None = None,
    work_name: str | None = None,
) -> ErasureResult:
    """Erase the person `target` names on `stage`, or raise a UserFacingError with nothing changed."""
    state: dict[str, Any] = {}

    def plan_for(conn: Connection) -> DeletePlan:
        catalog = load_catalog(conn)
        targets = resolve_targets(conn, catalog, settings)
        if targets.problems:
            raise PlanProblem("the erasure can't be planned: " + "; ".join(targets.problems))
        # By the identifier only: a planned user row that no longer matches it makes the request stale anyway.
        found = find_person(conn, catalog, targets, target.person)
        if expected is not None and (found.user_key_digests != target.user_keys or found.emails != target.emails):
            raise SnapshotChanged(
                f"the user rows or emails matching {target.person.label} changed since the plan; nothing was erased",
                changes=["the person's user rows or emails"],
                fresh={},
            )
        state.update(catalog=catalog, targets=targets, found=found)
        return delete_plan(conn, catalog, targets, found)

    def hook(conn: Connection, plan: DeletePlan, scopes: list[MaterializedScope]) -> None:
        outside = _outside_scopes(plan.catalog, scopes)
        extras = apply_extras(conn, plan.catalog, state["targets"], state["found"], outside)
        state["extras"] = extras
        if expected is not None:
            approved = {k: v for k, v in expected.items() if is_extra(k)}
            changes = compare_snapshots(approved, extras.counts, drift_percent)
            if changes:
                raise SnapshotChanged(
                    "the rows in scope changed since the plan was confirmed: " + "; ".join(changes[:6]),
                    changes=changes,
                    fresh=dict(extras.counts),
                )

    engine_expected = None if expected is None else {k: v for k, v in expected.items() if not is_extra(k)}
    started = time.monotonic()
    try:
        result = execute_delete(
            stage,
            LABEL,
            expected=engine_expected,
            drift_percent=drift_percent,
            budget_s=budget_s,
            lock_timeout_ms=lock_timeout_ms,
            dry_run=dry_run,
            before_delete=hook,
            progress=progress,
            work_name=work_name,
            plan_for=plan_for,
            delete_leaves=True,  # the hook reads no deleted row (leaves gone already are simply outside), no backup
        )
    except DeleteFailed as exc:
        exc.message = redact(exc.message, target)  # the same error (a stale plan stays one), minus the person
        exc.args = (exc.message,)
        raise
    extras: Extras = state.get("extras") or Extras()
    steps = [{"table": s.table, "action": s.action, "rows": s.rows} for s in result.steps if s.rows]
    for key, rows in {**extras.counts, **extras.scanned}.items():
        if rows:
            kind, _, name = key.partition(" ")
            action = "anonymise" if kind == "anonymise" else "replace email"
            steps.append({"table": name, "action": action, "rows": rows})
    problems = list(result.verification)
    if not dry_run and "targets" in state:
        problems += verify_erased(stage, state["catalog"], state["targets"], target, state["found"], extras)
    return ErasureResult(
        counts={**result.counts, **extras.counts},
        steps=steps,
        duration_s=time.monotonic() - started,
        dry_run=dry_run,
        verified=not problems,
        verification=problems,
        scanned=extras.scanned,
    )


def verify_erased(
    stage: Stage, catalog: Catalog, targets: Targets, target: ErasureTarget, found: Found, extras: Extras
) -> list[str]:
    """After the commit: nothing matching the person is left in the user rows, listed columns or touched JSON."""
    problems: list[str] = []
    with stage.read(statement_timeout_ms=VERIFY_STATEMENT_MS) as conn:
        users = sa_table(catalog, targets.users)
        info = catalog.table(targets.users)
        still = person_matches(
            users, target.person, email=targets.user_email, exact=targets.user_exact, fold=targets.fold
        )
        left = conn.execute(select(func.count()).where(still | keys_in(users, info, found.user_keys))).scalar_one()
        if left:
            match = noun(left, "matches", "match")
            problems.append(f"{targets.users}: {plural(left, 'row')} still {match} {target.person.label}")
        for it in targets.identity:
            t = sa_table(catalog, it.table)
            matches = identity_match(t, it, found.emails, targets.fold)
            left = conn.execute(select(func.count()).where(matches)).scalar_one()
            if left:
                problems.append(f"{it.table}: {plural(left, 'row')} still {noun(left, 'holds', 'hold')} the email")
        for jc in targets.json:
            t = sa_table(catalog, jc.table)
            where = [json_mentions(t.c[jc.column], found.emails, targets.fold)]
            if not targets.scan_all:
                where.append(keys_in(t, catalog.table(jc.table), extras.touched.get(jc.table, [])))
            left = conn.execute(select(func.count()).where(*where)).scalar_one()
            if left:
                mention = noun(left, "mentions", "mention")
                problems.append(f"{jc.table}.{jc.column}: {plural(left, 'value')} still {mention} the email")
    return problems


def reapply(conn: Connection, settings: ErasureSettings, target: ErasureTarget, *, budget_s: float) -> dict[str, int]:
    """An erasure again, inside the caller's write transaction (after a restore); rows changed per table."""
    catalog = load_catalog(conn)
    targets = resolve_targets(conn, catalog, settings)
    if targets.problems:
        raise PlanProblem("the erasure can't be re-applied: " + "; ".join(targets.problems))
    found = find_person(conn, catalog, targets, target.person, known=target.user_keys)
    found.emails.update(target.emails)
    plan = delete_plan(conn, catalog, targets, found)
    counts = {s.key: s.rows for s in delete_in_transaction(conn, plan, budget_s=budget_s) if s.rows}
    extras = apply_extras(conn, catalog, targets, found, lambda _ref, _alias: true())
    counts |= {k: v for k, v in {**extras.counts, **extras.scanned}.items() if v}
    return counts
