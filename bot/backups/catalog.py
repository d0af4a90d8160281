"""What a backup needs to know about a table, read from the catalog: columns, unique keys, a fingerprint.

The fingerprint (columns with types and nullability, constraints, unique indexes) is
stored in the manifest; a restore refuses when it differs, because rows exported under
one schema are not safe to insert into another.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from bot.errors import UserFacingError


class TableMissing(UserFacingError):
    outcome = "not_found"


@dataclass(frozen=True)
class UniqueKey:
    name: str
    columns: tuple[str, ...]
    primary: bool
    nulls_not_distinct: bool


def qualified(schema: str, table: str) -> str:
    return f"{schema}.{table}"


def table_oid(conn: Connection, schema: str, table: str) -> int:
    oid = conn.execute(
        text(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = :schema AND c.relname = :table AND c.relkind IN ('r', 'p')"
        ),
        {"schema": schema, "table": table},
    ).scalar()
    if oid is None:
        raise TableMissing(f"table {qualified(schema, table)} does not exist")
    return int(oid)


def columns(conn: Connection, oid: int) -> list[tuple[str, str, bool, str]]:
    """(name, type, not null, generated) in column order, without dropped columns."""
    rows = conn.execute(
        text(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull, attgenerated::text"
            " FROM pg_attribute WHERE attrelid = :oid AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
        ),
        {"oid": oid},
    )
    return [(r[0], r[1], bool(r[2]), r[3] or "") for r in rows]


def insertable_columns(conn: Connection, oid: int) -> list[str]:
    """Columns a row can be written back into: generated columns are computed, not restored."""
    return [name for name, _type, _notnull, generated in columns(conn, oid) if not generated]


def unique_keys(conn: Connection, oid: int) -> tuple[list[UniqueKey], list[str]]:
    """Plain unique indexes (primary key included); and the names of expression/partial ones we cannot pre-check."""
    modern = int(conn.execute(text("SELECT current_setting('server_version_num')::int")).scalar_one()) >= 150000
    nulls = "i.indnullsnotdistinct" if modern else "false"
    rows = conn.execute(
        text(
            "SELECT c.relname, i.indisprimary, "
            + nulls
            + " AS nnd, i.indexprs IS NOT NULL OR i.indpred IS NOT NULL AS special,"
            " ARRAY(SELECT a.attname FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)"
            "       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.ord) AS cols"
            " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = :oid AND i.indisunique ORDER BY i.indisprimary DESC, c.relname"
        ),
        {"oid": oid},
    )
    keys: list[UniqueKey] = []
    special: list[str] = []
    for name, primary, nnd, is_special, cols in rows:
        if is_special or not cols:
            special.append(name)
        else:
            keys.append(UniqueKey(name, tuple(cols), bool(primary), bool(nnd)))
    return keys, special


@dataclass(frozen=True)
class Exclusion:
    """An exclusion constraint over plain columns: `(column, operator schema, operator name)` per element."""

    name: str
    elements: tuple[tuple[str, str, str], ...]


OPERATOR_CHARS = frozenset("+-*/<>=~!@#%^&|`?")


def exclusions(conn: Connection, oid: int) -> tuple[list[Exclusion], list[str]]:
    """Exclusion constraints over plain columns; and the names of those over expressions or partial ones."""
    rows = conn.execute(
        text(
            "SELECT con.conname, i.indexprs IS NOT NULL OR i.indpred IS NOT NULL AS special,"
            " ARRAY(SELECT a.attname FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)"
            "       LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.ord),"
            " ARRAY(SELECT n.nspname FROM unnest(con.conexclop) WITH ORDINALITY o(op, ord)"
            "       JOIN pg_operator p ON p.oid = o.op JOIN pg_namespace n ON n.oid = p.oprnamespace ORDER BY o.ord),"
            " ARRAY(SELECT p.oprname FROM unnest(con.conexclop) WITH ORDINALITY o(op, ord)"
            "       JOIN pg_operator p ON p.oid = o.op ORDER BY o.ord)"
            " FROM pg_constraint con JOIN pg_index i ON i.indexrelid = con.conindid"
            " WHERE con.conrelid = :oid AND con.contype = 'x' ORDER BY con.conname"
        ),
        {"oid": oid},
    )
    found: list[Exclusion] = []
    special: list[str] = []
    for name, is_special, cols, schemas, operators in rows:
        plain = not is_special and cols and None not in cols and len(cols) == len(operators)
        if not plain or not all(set(op) <= OPERATOR_CHARS for op in operators):
            special.append(name)
            continue
        found.append(Exclusion(name, tuple(zip(cols, schemas, operators, strict=True))))
    return found, special


def table_fingerprint(conn: Connection, schema: str, table: str) -> dict[str, Any]:
    oid = table_oid(conn, schema, table)
    constraints = conn.execute(
        text(
            "SELECT conname, contype::text, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = :oid ORDER BY conname"
        ),
        {"oid": oid},
    )
    indexes = conn.execute(
        text(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = :oid AND i.indisunique ORDER BY c.relname"
        ),
        {"oid": oid},
    )
    return {
        "columns": [
            {"name": n, "type": t, "not_null": nn, **({"generated": g} if g else {})}
            for n, t, nn, g in columns(conn, oid)
        ],
        "constraints": [{"name": n, "type": t, "definition": d} for n, t, d in constraints],
        "unique_indexes": [{"name": n, "definition": d} for n, d in indexes],
    }


def schema_fingerprint(conn: Connection, tables: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Per-table fingerprints plus one hash over all of them."""
    per_table = {qualified(s, t): table_fingerprint(conn, s, t) for s, t in sorted(set(tables))}
    digest = hashlib.sha256(json.dumps(per_table, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return {"sha256": digest, "tables": per_table}


def describe_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """A short, human account of how one table's fingerprint changed."""
    parts: list[str] = []
    old_cols = {c["name"]: c for c in old.get("columns", [])}
    new_cols = {c["name"]: c for c in new.get("columns", [])}
    if added := sorted(set(new_cols) - set(old_cols)):
        parts.append("new columns " + ", ".join(added))
    if removed := sorted(set(old_cols) - set(new_cols)):
        parts.append("dropped columns " + ", ".join(removed))
    if changed := sorted(n for n in set(old_cols) & set(new_cols) if old_cols[n] != new_cols[n]):
        parts.append("changed columns " + ", ".join(changed))
    if old.get("constraints") != new.get("constraints"):
        parts.append("constraints changed")
    if old.get("unique_indexes") != new.get("unique_indexes"):
        parts.append("unique indexes changed")
    return "; ".join(parts) or "definition changed"
