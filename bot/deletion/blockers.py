"""What would make the database refuse a delete, found before anyone approves it, with the rows shown.

- rows outside the scope that a RESTRICT edge (or, with NO_ACTION_EDGES=block, a NO ACTION edge)
  ties to rows in scope: counted, a few shown by key;
- a SET NULL into a NOT NULL column or NOT NULL domain, and a SET DEFAULT whose default is NULL
  into such a column, or names no parent row that survives the delete.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Select, Text, and_, cast, exists, func, literal, literal_column, not_, select
from sqlalchemy.exc import DBAPIError

from bot.deletion.catalog import ForeignKey
from bot.deletion.plan import DeletePlan
from bot.deletion.scopesql import ScopeSql, sa_table
from bot.deletion.sqlext import as_type
from bot.slacktext.words import noun, plural

BLOCKER_SAMPLE_ROWS = 5


@dataclass
class Blocker:
    table: str
    edge: str
    rows: int
    reason: str
    sample: list[dict[str, str]] = field(default_factory=list)


def edge_rows(plan: DeletePlan, sql: ScopeSql, fk: ForeignKey, *, count: bool) -> Select[Any]:
    """Rows of fk.child outside the scope that reference an in-scope row of fk.parent."""
    x = sa_table(plan.graph, fk.child).alias()
    where = and_(sql.edge_match(x, fk, over_child=True), sql.outside_predicate(plan.graph.node(fk.child), x))
    if count:
        return select(func.count()).select_from(x).where(where)
    info = plan.catalog.table(fk.child)
    shown = list(info.key) + [c for c in fk.child_columns if c not in info.key]
    return select(*(x.c[c] for c in shown)).where(where).limit(BLOCKER_SAMPLE_ROWS)


def _sample(conn: Connection, query: Select[Any]) -> list[dict[str, str]]:
    return [{k: str(v) for k, v in r._mapping.items()} for r in conn.execute(query)]


def blocking_rows(conn: Connection, plan: DeletePlan, counts: dict[str, int]) -> list[Blocker]:
    blockers: list[Blocker] = []
    for fk in plan.blocking:
        rows = counts.pop(f"blocker {fk.name}")
        if rows:
            sample = _sample(conn, edge_rows(plan, plan.scope_sql(prefix="sample"), fk, count=False))
            rule = "no ON DELETE rule (NO_ACTION_EDGES=block)" if fk.on_delete == "no action" else "RESTRICT"
            blockers.append(
                Blocker(
                    table=str(fk.child),
                    edge=fk.describe(),
                    rows=rows,
                    reason=(
                        f"{plural(rows, 'row')} of {fk.child} outside the delete "
                        f"{noun(rows, 'references', 'reference')} rows of {fk.parent} "
                        f"that would be deleted ({rule}): the database would refuse"
                    ),
                    sample=sample,
                )
            )
    return blockers


def _default_value(conn: Connection, expression: str | None) -> tuple[bool, str | None]:
    """(known, value as text) of a column default; evaluated in a savepoint, so a volatile one is 'unknown'.

    The expression is PostgreSQL's own deparse of the catalog's default (pg_get_expr), not input.
    """
    if expression is None:
        return True, None
    try:
        with conn.begin_nested():
            return True, conn.execute(select(cast(literal_column(expression), Text))).scalar()
    except DBAPIError:
        return False, None


def set_blockers(conn: Connection, plan: DeletePlan, counts: dict[str, int]) -> list[Blocker]:
    """SET NULL into a NOT NULL column (or domain), SET DEFAULT to a value no remaining parent row has."""
    blockers: list[Blocker] = []
    sql = plan.scope_sql(prefix="setcheck")
    for step in plan.set_steps:
        rows = counts[step.snapshot_key]
        fk = step.edge
        if not rows or fk is None:
            continue
        info = plan.catalog.table(step.table)
        values: dict[str, str | None] = {}
        if step.action == "set default":
            defaults = {c: _default_value(conn, info.column(c).default) for c in step.columns}
            if not all(known for known, _ in defaults.values()):
                continue  # a volatile default: the database decides at run time
            values = {c: value for c, (_, value) in defaults.items()}
        nulled = [c for c in step.columns if values.get(c) is None]
        if set(nulled) & info.not_null:
            what = "NULL (it has no default)" if step.action == "set default" else "NULL"
            blockers.append(
                Blocker(
                    table=str(step.table),
                    edge=fk.describe(),
                    rows=rows,
                    reason=(
                        f"{step.table}({', '.join(sorted(set(nulled) & info.not_null))}) is NOT NULL (the column or "
                        f"its domain), so ON DELETE {step.action.upper()} would set it to {what} and fail"
                    ),
                )
            )
            continue
        if step.action != "set default" or nulled:
            continue
        missing = _missing_default_parent(conn, plan, sql, fk, values)
        if missing:
            shown = ", ".join(f"{c}={values[c]}" for c in step.columns)
            blockers.append(
                Blocker(
                    table=str(step.table),
                    edge=fk.describe(),
                    rows=missing,
                    reason=(
                        f"ON DELETE SET DEFAULT would set {step.table}({shown}), but no {fk.parent} row with that key "
                        "remains after the delete: the database would refuse"
                    ),
                )
            )
    return blockers


def _missing_default_parent(
    conn: Connection, plan: DeletePlan, sql: ScopeSql, fk: ForeignKey, values: Mapping[str, str | None]
) -> int:
    """Rows whose defaulted key would point at no parent row left after the delete (MATCH SIMPLE)."""
    x = sa_table(plan.graph, fk.child).alias()
    p = sa_table(plan.graph, fk.parent).alias()
    child = plan.catalog.table(fk.child)
    new = {c: as_type(values[c], child.type_of(c)) if c in values else x.c[c] for c in fk.child_columns}
    parent_left = exists(
        select(literal(1))
        .select_from(p)
        .where(
            *(p.c[pc] == new[cc] for cc, pc in zip(fk.child_columns, fk.parent_columns, strict=True)),
            sql.outside_predicate(plan.graph.node(fk.parent), p),
        )
    )
    query = (
        select(func.count())
        .select_from(x)
        .where(
            sql.edge_match(x, fk, over_child=True),
            sql.outside_predicate(plan.graph.node(fk.child), x),
            *(x.c[c].is_not(None) for c in fk.child_columns if c not in values),
            not_(parent_left),
        )
    )
    return int(conn.execute(query).scalar_one())
