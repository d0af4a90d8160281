"""Before a restore writes anything: rows of the backup that would collide with rows that exist now.

Primary keys and unique values that exist again (a reused slug, a user id back since), nulled
columns set again since, rows to un-null that are gone; and, when a write is refused anyway (a
parent deleted since), the constraint that refused it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Connection

from bot.backups import catalog
from bot.backups.manifest import COLUMN_ACTIONS, ManifestStep, driver, qualified
from bot.pii import scrub

MAX_SAMPLES = 5


@dataclass(frozen=True)
class Conflict:
    table: str
    constraint: str
    reason: str
    count: int
    samples: tuple[str, ...] = ()


def _sample(values: Sequence[Any]) -> str:
    return scrub(", ".join("NULL" if v is None else str(v) for v in values))[:120]


def find_conflicts(conn: Connection, step: ManifestStep, staged_table: str) -> tuple[list[Conflict], list[str]]:
    """Rows of a staged file that would collide with rows that exist now; and what could not be pre-checked."""
    raw = driver(conn)
    found: list[Conflict] = []
    unchecked: list[str] = []
    staged = sql.Identifier(staged_table)
    table = qualified(step.schema, step.table, only=step.only)
    if step.action in COLUMN_ACTIONS:
        _set_null_conflicts(raw, step, staged, table, found, unchecked)
        return found, unchecked
    oid = catalog.table_oid(conn, step.schema, step.table)
    keys, special = catalog.unique_keys(conn, oid)
    unchecked += [f"{step.qualified}.{name}" for name in special]
    for key in keys:
        match = sql.SQL(" AND ").join(
            sql.SQL("t.{c} IS NOT DISTINCT FROM s.{c}" if key.nulls_not_distinct else "t.{c} = s.{c}").format(
                c=sql.Identifier(c)
            )
            for c in key.columns
        )
        rows = _clashes(raw, staged, table, match, key.columns)
        if rows:
            what = "primary key" if key.primary else "unique key"
            found.append(
                Conflict(
                    table=step.qualified,
                    constraint=key.name,
                    reason=f"{what} ({', '.join(key.columns)}) exists again",
                    count=int(rows[0][0]),
                    samples=tuple(_sample(r[1:]) for r in rows),
                )
            )
    _exclusion_conflicts(conn, oid, step, staged, table, found, unchecked)
    _unvalidated_checks(conn, oid, step, staged, found)
    return found, unchecked


def _unvalidated_checks(
    conn: Connection, oid: int, step: ManifestStep, staged: sql.Composable, found: list[Conflict]
) -> None:
    """Rows that a CHECK constraint added NOT VALID after them rejects: they were kept, but cannot be inserted
    again. (Validated constraints held for every row when the backup was taken, and the schema is the same.)"""
    raw = driver(conn)
    checks = raw.execute(
        "SELECT conname, pg_get_expr(conbin, conrelid) FROM pg_constraint"
        " WHERE conrelid = %s AND contype = 'c' AND NOT convalidated ORDER BY conname",
        (oid,),
    ).fetchall()
    pk = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in step.primary_key)
    for name, expression in checks:
        rows = raw.execute(
            sql.SQL("SELECT count(*) OVER (), {pk} FROM {staged} WHERE ({check}) IS FALSE LIMIT {n}").format(
                pk=pk, staged=staged, check=sql.SQL(expression), n=sql.Literal(MAX_SAMPLES)
            )
        ).fetchall()
        if rows:
            found.append(
                Conflict(
                    table=step.qualified,
                    constraint=name,
                    reason="a CHECK constraint added NOT VALID since these rows were written rejects them",
                    count=int(rows[0][0]),
                    samples=tuple(_sample(r[1:]) for r in rows),
                )
            )


def _exclusion_conflicts(
    conn: Connection,
    oid: int,
    step: ManifestStep,
    staged: sql.Composable,
    table: sql.Composable,
    found: list[Conflict],
    unchecked: list[str],
) -> None:
    """Rows of the backup that an exclusion constraint would reject next to rows that exist now (an overlapping
    booking made since), by each element's own operator."""
    raw = driver(conn)
    exclusions, special = catalog.exclusions(conn, oid)
    unchecked += [f"{step.qualified}.{name}" for name in special]
    for exclusion in exclusions:
        clash = sql.SQL(" AND ").join(
            sql.SQL("s.{c} OPERATOR({schema}.{op}) t.{c}").format(
                c=sql.Identifier(c), schema=sql.Identifier(schema), op=sql.SQL(op)
            )
            for c, schema, op in exclusion.elements
        )
        columns = [c for c, _schema, _op in exclusion.elements]
        rows = _clashes(raw, staged, table, clash, columns)
        if rows:
            found.append(
                Conflict(
                    table=step.qualified,
                    constraint=exclusion.name,
                    reason=f"exclusion constraint ({', '.join(columns)}) rejects it next to rows that exist now",
                    count=int(rows[0][0]),
                    samples=tuple(_sample(r[1:]) for r in rows),
                )
            )


def _set_null_conflicts(
    raw: psycopg.Connection[Any],
    step: ManifestStep,
    staged: sql.Composable,
    table: sql.Composable,
    found: list[Conflict],
    unchecked: list[str],
) -> None:
    join = sql.SQL(" AND ").join(sql.SQL("t.{c} = s.{c}").format(c=sql.Identifier(c)) for c in step.primary_key)
    pk = sql.SQL(", ").join(sql.SQL("s.{}::text").format(sql.Identifier(c)) for c in step.primary_key)
    missing = raw.execute(
        sql.SQL(
            "SELECT count(*) OVER (), {pk} FROM {staged} s WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE {join})"
            " LIMIT {n}"
        ).format(pk=pk, staged=staged, table=table, join=join, n=sql.Literal(MAX_SAMPLES))
    ).fetchall()
    if missing:
        found.append(
            Conflict(
                step.qualified,
                "-",
                "rows to un-null no longer exist",
                int(missing[0][0]),
                tuple(_sample(r[1:]) for r in missing),
            )
        )
    if step.action == "set_default":
        # What the default evaluated to is not recorded, so a value set again since can't be told apart.
        unchecked.append(f"{step.qualified}({', '.join(step.set_null_columns)}) changed since")
        return
    changed_cond = sql.SQL(" OR ").join(
        sql.SQL("t.{} IS NOT NULL").format(sql.Identifier(c)) for c in step.set_null_columns
    )
    changed = raw.execute(
        sql.SQL("SELECT count(*) OVER (), {pk} FROM {staged} s JOIN {table} t ON {join} WHERE {cond} LIMIT {n}").format(
            pk=pk, staged=staged, table=table, join=join, cond=changed_cond, n=sql.Literal(MAX_SAMPLES)
        )
    ).fetchall()
    if changed:
        found.append(
            Conflict(
                step.qualified,
                ", ".join(step.set_null_columns),
                "the nulled column was set again since",
                int(changed[0][0]),
                tuple(_sample(r[1:]) for r in changed),
            )
        )


def integrity_conflict(step: ManifestStep, exc: psycopg.errors.IntegrityError) -> Conflict:
    diag = exc.diag
    if isinstance(exc, psycopg.errors.ForeignKeyViolation):
        reason = "a restored row references a row that no longer exists"
    elif isinstance(exc, psycopg.errors.UniqueViolation):
        reason = "a unique value exists again"
    else:
        reason = "a constraint rejects a restored row"
    detail = scrub(diag.message_detail or "")[:200]
    return Conflict(step.qualified, diag.constraint_name or "-", reason, 1, (detail,) if detail else ())


def _clashes(
    raw: psycopg.Connection[Any],
    staged: sql.Composable,
    table: sql.Composable,
    on: sql.Composable,
    columns: Sequence[str],
) -> list[tuple[Any, ...]]:
    """Staged rows that meet rows of `table` on `on`: how many in all, and the first few's `columns` as text."""
    return raw.execute(
        sql.SQL("SELECT count(*) OVER (), {cols} FROM {staged} s JOIN {table} t ON {on} LIMIT {n}").format(
            cols=sql.SQL(", ").join(sql.SQL("s.{}::text").format(sql.Identifier(c)) for c in columns),
            staged=staged,
            table=table,
            on=on,
            n=sql.Literal(MAX_SAMPLES),
        )
    ).fetchall()
