"""The live database's foreign-key graph, read from pg_constraint and pg_index at plan time.

A hard-coded list of tables is how the runbook misses tables; here every table, key and
ON DELETE rule comes from the catalog, composite keys and keys to non-primary unique
columns (sessions point at `mcp_servers.slug`) included.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import Connection, text

# pg_constraint.confdeltype -> the rule's name
ON_DELETE = {"a": "no action", "r": "restrict", "c": "cascade", "n": "set null", "d": "set default"}
BLOCKING_RULES = frozenset({"no action", "restrict"})
SETTING_RULES = frozenset({"set null", "set default"})

_NOT_SYSTEM = r"n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'"

_FOREIGN_KEYS = text(
    r"""
    SELECT con.conname AS name,
           n.nspname AS child_schema, cc.relname AS child_table,
           pn.nspname AS parent_schema, pc.relname AS parent_table,
           ARRAY(SELECT a.attname::text
                 FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
                 ORDER BY k.ord) AS child_columns,
           ARRAY(SELECT a.attname::text
                 FROM unnest(con.confkey) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum
                 ORDER BY k.ord) AS parent_columns,
           ARRAY(SELECT a.attname::text
                 FROM unnest(coalesce(con.confdelsetcols, '{}'::int2[])) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
                 ORDER BY k.ord) AS set_columns,
           con.confdeltype::text AS on_delete,
           EXISTS (
               SELECT 1
               FROM pg_index i
               CROSS JOIN LATERAL (
                   SELECT (string_to_array(i.indkey::text, ' ')::int2[])[1:cardinality(con.conkey)] AS lead
               ) AS l
               WHERE i.indrelid = con.conrelid
                 AND i.indisvalid AND i.indpred IS NULL
                 AND i.indnkeyatts >= cardinality(con.conkey)
                 AND l.lead @> con.conkey AND l.lead <@ con.conkey
           ) AS indexed
    FROM pg_constraint con
    JOIN pg_class cc ON cc.oid = con.conrelid
    JOIN pg_namespace n ON n.oid = cc.relnamespace
    JOIN pg_class pc ON pc.oid = con.confrelid
    JOIN pg_namespace pn ON pn.oid = pc.relnamespace
    WHERE con.contype = 'f' AND con.conparentid = 0 AND """
    + _NOT_SYSTEM
    + """
    ORDER BY n.nspname, cc.relname, con.conname
    """
)

_TABLES = text(
    """
    SELECT n.nspname AS schema, c.relname AS name, c.reltuples::float8 AS estimated_rows,
           (pg_relation_size(c.oid) / current_setting('block_size')::int)::bigint AS pages,
           ARRAY(SELECT a.attname::text FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull) AS not_null,
           ARRAY(SELECT a.attname::text FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) AS columns
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND """
    + _NOT_SYSTEM
)

# Primary keys, and unique indexes that could stand in for one (plain columns, all NOT NULL).
_KEYS = text(
    """
    SELECT n.nspname AS schema, c.relname AS name, i.indisprimary AS is_primary,
           ARRAY(SELECT a.attname::text
                 FROM unnest(k.cols) WITH ORDINALITY AS u(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = u.attnum
                 ORDER BY u.ord) AS columns,
           NOT EXISTS (SELECT 1 FROM unnest(k.cols) AS u(attnum)
                       LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = u.attnum
                       WHERE u.attnum = 0 OR NOT a.attnotnull) AS usable
    FROM pg_index i
    JOIN pg_class c ON c.oid = i.indrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    CROSS JOIN LATERAL (SELECT (string_to_array(i.indkey::text, ' ')::int2[])[1:i.indnkeyatts] AS cols) AS k
    WHERE (i.indisprimary OR i.indisunique) AND i.indisvalid AND i.indpred IS NULL AND """
    + _NOT_SYSTEM
)


@dataclass(frozen=True, order=True)
class TableRef:
    schema: str
    name: str

    def __str__(self) -> str:
        return self.name if self.schema == "public" else f"{self.schema}.{self.name}"

    @property
    def qualified(self) -> str:
        """Stable key for snapshots and audit: always schema-qualified."""
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class ForeignKey:
    name: str
    child: TableRef
    child_columns: tuple[str, ...]
    parent: TableRef
    parent_columns: tuple[str, ...]
    on_delete: str
    set_columns: tuple[str, ...]
    indexed: bool

    @property
    def blocking(self) -> bool:
        return self.on_delete in BLOCKING_RULES

    @property
    def cascades(self) -> bool:
        return self.on_delete == "cascade"

    @property
    def sets(self) -> bool:
        return self.on_delete in SETTING_RULES

    @property
    def self_reference(self) -> bool:
        return self.child == self.parent

    def describe(self) -> str:
        cols = ", ".join(self.child_columns)
        pcols = ", ".join(self.parent_columns)
        return f"{self.child}({cols}) → {self.parent}({pcols}) ON DELETE {self.on_delete.upper()}"


@dataclass(frozen=True)
class TableInfo:
    ref: TableRef
    columns: tuple[str, ...]
    key: tuple[str, ...]  # primary key, or a NOT NULL unique key; empty when the table has neither
    not_null: frozenset[str]
    estimated_rows: float
    pages: int = 0


@dataclass
class Catalog:
    tables: dict[TableRef, TableInfo]
    foreign_keys: list[ForeignKey]
    _by_parent: dict[TableRef, list[ForeignKey]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for fk in self.foreign_keys:
            self._by_parent.setdefault(fk.parent, []).append(fk)

    def referencing(self, parent: TableRef) -> list[ForeignKey]:
        """Foreign keys whose parent is `parent`, in a stable order."""
        return self._by_parent.get(parent, [])

    def edges_between(self, child: TableRef, parent: TableRef) -> list[ForeignKey]:
        return [fk for fk in self.referencing(parent) if fk.child == child]

    def table(self, ref: TableRef) -> TableInfo:
        return self.tables[ref]


def resolve_table(conn: Connection, name: str) -> TableRef | None:
    """The table `name` means on this connection's search_path, or None."""
    row = conn.execute(
        text(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.oid = to_regclass(:name)"
        ),
        {"name": name},
    ).first()
    return TableRef(row[0], row[1]) if row else None


def _choose_key(candidates: Iterable[tuple[bool, tuple[str, ...]]]) -> tuple[str, ...]:
    ordered = sorted(candidates, key=lambda c: (not c[0], len(c[1]), c[1]))
    return ordered[0][1] if ordered else ()


def load_catalog(conn: Connection) -> Catalog:
    """Three catalog queries; cheap enough to run for every plan, so a plan never uses a stale graph."""
    keys: dict[TableRef, list[tuple[bool, tuple[str, ...]]]] = {}
    for row in conn.execute(_KEYS):
        if not row.usable:
            continue
        keys.setdefault(TableRef(row.schema, row.name), []).append((row.is_primary, tuple(row.columns)))
    tables = {
        TableRef(row.schema, row.name): TableInfo(
            ref=TableRef(row.schema, row.name),
            columns=tuple(row.columns),
            key=_choose_key(keys.get(TableRef(row.schema, row.name), [])),
            not_null=frozenset(row.not_null),
            estimated_rows=max(float(row.estimated_rows), 0.0),
            pages=int(row.pages or 0),
        )
        for row in conn.execute(_TABLES)
    }
    foreign_keys = [
        ForeignKey(
            name=row.name,
            child=TableRef(row.child_schema, row.child_table),
            child_columns=tuple(row.child_columns),
            parent=TableRef(row.parent_schema, row.parent_table),
            parent_columns=tuple(row.parent_columns),
            on_delete=ON_DELETE.get(row.on_delete, "no action"),
            set_columns=tuple(row.set_columns) or tuple(row.child_columns),
            indexed=bool(row.indexed),
        )
        for row in conn.execute(_FOREIGN_KEYS)
    ]
    return Catalog(tables=tables, foreign_keys=foreign_keys)
