"""The live database's foreign-key graph, read from the catalog at plan time (four queries).

A hard-coded list of tables is how the runbook misses tables; here every table, key and
ON DELETE rule comes from the catalog: composite keys, keys to non-primary unique columns
(sessions point at `mcp_servers.slug`), partitions and inheritance children, row-level
security and privileges as the connected role sees them, user triggers and column defaults.
The queries themselves are in catalogsql.py; this module holds the graph and builds it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, text

from bot.deletion.catalogsql import FOREIGN_KEYS, KEYS, TABLES, TRIGGERS

# pg_constraint.confdeltype -> the rule's name
ON_DELETE = {"a": "no action", "r": "restrict", "c": "cascade", "n": "set null", "d": "set default"}
BLOCKING_RULES = frozenset({"no action", "restrict"})
SETTING_RULES = frozenset({"set null", "set default"})
PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")


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
    deferrable: bool = False
    deferred: bool = False  # INITIALLY DEFERRED
    validated: bool = True
    match: str = "s"  # s simple, f full

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
        extra = " DEFERRABLE" if self.deferrable else ""
        return f"{self.child}({cols}) → {self.parent}({pcols}) ON DELETE {self.on_delete.upper()}{extra}"


@dataclass(frozen=True)
class Trigger:
    """A user trigger: what it fires on, and whether it fires at all (`enabled`: O, A, R or D)."""

    table: TableRef
    name: str
    type: int
    enabled: str
    function: str
    constraint_trigger: bool = False

    @property
    def events(self) -> tuple[str, ...]:
        bits = (("INSERT", 4), ("DELETE", 8), ("UPDATE", 16), ("TRUNCATE", 32))
        return tuple(name for name, bit in bits if self.type & bit)

    @property
    def timing(self) -> str:
        return "INSTEAD OF" if self.type & 64 else "BEFORE" if self.type & 2 else "AFTER"

    @property
    def level(self) -> str:
        return "ROW" if self.type & 1 else "STATEMENT"

    @property
    def fires(self) -> bool:
        """Fires in a normal session (session_replication_role = origin)."""
        return self.enabled in ("O", "A")

    @property
    def summary(self) -> str:
        return f"{self.timing} {' OR '.join(self.events)} FOR EACH {self.level}, {self.function}()"

    def describe(self) -> str:
        return f"trigger {self.name} on {self.table} ({self.summary})"


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # format_type(): already quoted where it needs to be
    not_null: bool  # the column's own NOT NULL, or its domain's
    generated: bool
    default: str | None  # the default expression (the column's, else its domain's)
    array: bool = False  # an array, or a domain over one (a domain has its base type's category)


@dataclass(frozen=True)
class TableInfo:
    ref: TableRef
    columns: tuple[str, ...]
    key: tuple[str, ...]  # primary key, or a NOT NULL unique key; empty when the table has neither
    not_null: frozenset[str]
    estimated_rows: float
    pages: int = 0
    kind: str = "r"  # r: a table (read and written with ONLY: inheritance children are tables of their own)
    partition_root: TableRef | None = None  # a partition: the partitioned table its rows are reached through
    rls_hides: bool = False
    owned: bool = True
    privileges: frozenset[str] = frozenset(PRIVILEGES)
    column_info: tuple[Column, ...] = ()
    triggers: tuple[Trigger, ...] = ()

    @property
    def partitioned(self) -> bool:
        return self.kind == "p"

    @property
    def only(self) -> bool:
        """Plain tables are named with ONLY: rows of tables that inherit from them are not theirs."""
        return self.kind == "r"

    def column(self, name: str) -> Column:
        return next(c for c in self.column_info if c.name == name)

    def type_of(self, name: str) -> str:
        return self.column(name).type

    def missing(self, *privileges: str) -> list[str]:
        return [p for p in privileges if p not in self.privileges]


@dataclass
class Catalog:
    tables: dict[TableRef, TableInfo]
    foreign_keys: list[ForeignKey]
    role: str = ""  # the connected role, whose privileges and row-level security the tables were read with
    _by_parent: dict[TableRef, list[ForeignKey]] = field(default_factory=dict, repr=False)
    _partitions: dict[TableRef, list[TableRef]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for fk in self.foreign_keys:
            self._by_parent.setdefault(fk.parent, []).append(fk)
        for ref, info in sorted(self.tables.items()):
            if info.partition_root is not None:
                self._partitions.setdefault(info.partition_root, []).append(ref)

    def referencing(self, parent: TableRef) -> list[ForeignKey]:
        """Foreign keys whose parent is `parent`, in a stable order."""
        return self._by_parent.get(parent, [])

    def edges_between(self, child: TableRef, parent: TableRef) -> list[ForeignKey]:
        return [fk for fk in self.referencing(parent) if fk.child == child]

    def table(self, ref: TableRef) -> TableInfo:
        return self.tables[ref]

    def node(self, ref: TableRef) -> TableRef:
        """The table a relation's rows are deleted through: a partition's partitioned root, else itself."""
        info = self.tables.get(ref)
        return info.partition_root if info is not None and info.partition_root is not None else ref

    def partitions(self, ref: TableRef) -> list[TableRef]:
        """Every partition (any depth) of a partitioned table."""
        return self._partitions.get(ref, [])

    def relations(self, ref: TableRef) -> list[TableRef]:
        """The table and, if partitioned, its partitions: where its rows live and its triggers fire."""
        return [ref, *self.partitions(ref)]

    def firing(self, ref: TableRef, events: Iterable[str]) -> list[Trigger]:
        """User triggers that fire when rows of `ref` (and its partitions) see one of `events`.

        A partition written directly also fires the row triggers its partitioned table declares.
        """
        wanted = set(events)
        found = [t for r in self.relations(ref) for t in self.tables[r].triggers]
        root = self.tables[ref].partition_root
        if root is not None:
            found += [t for t in self.tables[root].triggers if t.level == "ROW"]
        return [t for t in found if t.fires and wanted & set(t.events)]


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


def _ref(names: Sequence[str] | None) -> TableRef | None:
    """(schema, name) as the catalog gives them: never one string split at a dot, which names may contain."""
    if not names:
        return None
    schema, name = names
    return TableRef(schema, name)


def load_catalog(conn: Connection) -> Catalog:
    """Four catalog queries; cheap enough to run for every plan, so a plan never uses a stale graph."""
    keys: dict[TableRef, list[tuple[bool, tuple[str, ...]]]] = {}
    for row in conn.execute(KEYS):
        if not row.usable:
            continue
        keys.setdefault(TableRef(row.schema, row.name), []).append((row.is_primary, tuple(row.columns)))
    triggers: dict[TableRef, list[Trigger]] = {}
    for row in conn.execute(TRIGGERS):
        ref = TableRef(row.schema, row.table_name)
        triggers.setdefault(ref, []).append(
            Trigger(ref, row.name, row.type, row.enabled, row.function, bool(row.constraint_trigger))
        )
    tables: dict[TableRef, TableInfo] = {}
    role = ""
    for row in conn.execute(TABLES):
        role = row.role
        ref = TableRef(row.schema, row.name)
        columns = tuple(
            Column(name, type_, bool(nn), bool(gen), default, bool(array))
            for name, type_, nn, gen, default, array in row.columns
        )
        tables[ref] = TableInfo(
            ref=ref,
            columns=tuple(c.name for c in columns),
            key=_choose_key(keys.get(ref, [])),
            not_null=frozenset(c.name for c in columns if c.not_null),
            estimated_rows=max(float(row.estimated_rows), 0.0),
            pages=int(row.pages or 0),
            kind=row.kind,
            partition_root=_ref(row.partition_root),
            rls_hides=bool(row.rls_hides),
            owned=bool(row.owned),
            privileges=frozenset(row.privileges) if row.schema_usage else frozenset(),
            column_info=columns,
            triggers=tuple(triggers.get(ref, ())),
        )
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
            deferrable=bool(row.deferrable),
            deferred=bool(row.deferred),
            validated=bool(row.validated),
            match=row.match,
        )
        for row in conn.execute(FOREIGN_KEYS)
    ]
    return Catalog(tables=tables, foreign_keys=foreign_keys, role=role)
