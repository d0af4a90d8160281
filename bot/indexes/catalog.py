"""What exists now: a table and its columns, an index that already serves them, an index's state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

_TABLE = text(
    "SELECT c.oid, greatest(c.reltuples, 0)::bigint AS rows, pg_relation_size(c.oid) AS bytes"
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = :schema AND c.relname = :table AND c.relkind IN ('r', 'p', 'm')"
)
_COLUMNS = text(
    "SELECT attname, attnum, format_type(atttypid, atttypmod) AS type FROM pg_attribute"
    " WHERE attrelid = :oid AND attnum > 0 AND NOT attisdropped AND attname = ANY (CAST(:columns AS text[]))"
)


def covers(index: str, columns: str) -> str:
    """SQL: the pg_index row `index` serves every lookup on `columns` (an int2[] of attribute numbers).

    A valid, non-partial index whose leading *key* columns are exactly these, in any order, each
    with its column's own collation (a lookup by `=` can't use an index in another one): an
    expression, an INCLUDE column or a predicate does not count. The one rule for the foreign-key
    checks (bot/health/checks/foreign_keys.py) and for Create index's "an equivalent index exists".
    """
    lead = f"[0:cardinality({columns}) - 1]"
    return (
        f"{index}.indisvalid AND {index}.indpred IS NULL AND {index}.indnkeyatts >= cardinality({columns})"
        f" AND ({index}.indkey::int2[]){lead} @> {columns}"
        f" AND NOT EXISTS (SELECT 1 FROM unnest(({index}.indkey::int2[]){lead}, ({index}.indcollation::oid[]){lead})"
        f" AS k(attnum, coll) JOIN pg_attribute ka ON ka.attrelid = {index}.indrelid AND ka.attnum = k.attnum"
        " WHERE k.coll <> ka.attcollation)"
    )


_EQUIVALENT = text(
    "SELECT format('%I.%I', n.nspname, c.relname) AS name, pg_get_indexdef(i.indexrelid) AS definition"
    " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE i.indrelid = :oid AND "
    + covers("i", "CAST(:attnums AS int2[])")
    + " ORDER BY i.indisunique DESC, c.relname LIMIT 1"
)
_INDEX = (
    "SELECT i.indexrelid AS oid, i.indisvalid AS valid, i.indisready AS ready,"
    " pg_get_indexdef(i.indexrelid) AS definition, i.indrelid AS table_oid, (i.indkey::int2[])::int[] AS keys,"
    " t.relname AS table_name, pg_relation_size(i.indexrelid) AS bytes,"
    " EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) AS constraint_backed,"
    " EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = i.indexrelid) AS building"
    " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
    " JOIN pg_class t ON t.oid = i.indrelid WHERE "
)
_INDEX_NAMED = text(_INDEX + "n.nspname = :schema AND c.relname = :name")
# A qualified name as the catalog prints it (`format('%I.%I')`): PostgreSQL reads its quoting.
_INDEX_QUALIFIED = text(_INDEX + "c.oid = to_regclass(:qualified)")


@dataclass(frozen=True)
class TableNow:
    schema: str
    table: str
    oid: int
    rows: int
    bytes: int
    attnums: list[int]  # of the requested columns, in their order
    types: list[str]  # of the requested columns, in their order
    missing: list[str]  # requested columns the table does not have


@dataclass(frozen=True)
class IndexNow:
    oid: int
    valid: bool
    ready: bool
    definition: str
    table_oid: int
    keys: list[int]  # pg_index.indkey: attribute numbers, 0 for an expression
    table: str
    bytes: int
    constraint_backed: bool
    building: bool


def table_now(conn: Connection, schema: str, table: str, columns: Sequence[str]) -> TableNow | None:
    row = conn.execute(_TABLE, {"schema": schema, "table": table}).first()
    if row is None:
        return None
    found = {r.attname: r for r in conn.execute(_COLUMNS, {"oid": row.oid, "columns": list(columns)})}
    return TableNow(
        schema=schema,
        table=table,
        oid=row.oid,
        rows=int(row.rows),
        bytes=int(row.bytes),
        attnums=[found[c].attnum for c in columns if c in found],
        types=[found[c].type for c in columns if c in found],
        missing=[c for c in columns if c not in found],
    )


def equivalent_index(conn: Connection, table: TableNow) -> tuple[str, str] | None:
    """(name, definition) of a valid index that already serves lookups on these columns."""
    row = conn.execute(_EQUIVALENT, {"oid": table.oid, "attnums": table.attnums}).first()
    return (row.name, row.definition) if row else None


def index_now(conn: Connection, schema: str, name: str) -> IndexNow | None:
    return _index(conn.execute(_INDEX_NAMED, {"schema": schema, "name": name}).first())


def index_qualified(conn: Connection, qualified: str) -> IndexNow | None:
    """The index a qualified, quoted name (`"Some Schema"."an.index"`) names now, if any."""
    return _index(conn.execute(_INDEX_QUALIFIED, {"qualified": qualified}).first())


def _index(row: Any) -> IndexNow | None:
    if row is None:
        return None
    return IndexNow(
        oid=row.oid,
        valid=row.valid,
        ready=row.ready,
        definition=row.definition,
        table_oid=int(row.table_oid),
        keys=list(row.keys),
        table=row.table_name,
        bytes=int(row.bytes),
        constraint_backed=row.constraint_backed,
        building=row.building,
    )
