"""The configured erasure columns, resolved against one stage's catalog.

A column the settings name but this database lacks is skipped and said in the report (stages drift);
a column that exists but cannot be used as configured (a clear column that is not text-like and NOT
NULL, say) is a problem that stops the erasure before anything is touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Connection, text

from bot.deletion.catalog import Catalog, TableRef, resolve_table
from bot.deletion.scope import USER_TABLE
from bot.erasure.identity import fold_collation
from bot.erasure.settings import ColumnRef, ErasureSettings, Mode

# The platform's user table: rows are roots when their email (case-insensitive) or one of the exact
# columns equals the identifier. Only columns the table really has are used.
USER_EMAIL = "email"
USER_EXACT = ("id", "distinct_id")


@dataclass(frozen=True)
class Cleared:
    column: str
    nullable: bool  # NULL when it may be, else ''


@dataclass(frozen=True)
class IdentityTable:
    """A table with email columns matched without a foreign key (ERASURE_COLUMNS), and its mode."""

    table: TableRef
    columns: tuple[str, ...]
    mode: Mode
    clear: tuple[Cleared, ...] = ()
    unique: frozenset[str] = frozenset()  # columns under a UNIQUE index: anonymised with a per-row token


# Columns of a table that some unique index (or constraint, partial or not) includes.
_UNIQUE_COLUMNS = text(
    """
    SELECT DISTINCT a.attname::text FROM pg_index i
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[])
    WHERE i.indrelid = CAST(:relation AS regclass) AND i.indisunique
    """
)


def unique_columns(conn: Connection, table: TableRef) -> frozenset[str]:
    quote = conn.dialect.identifier_preparer.quote_identifier
    relation = f"{quote(table.schema)}.{quote(table.name)}"
    return frozenset(conn.execute(_UNIQUE_COLUMNS, {"relation": relation}).scalars())


@dataclass(frozen=True)
class JsonColumn:
    table: TableRef
    column: str


@dataclass
class Targets:
    users: TableRef
    user_email: str | None
    user_exact: tuple[str, ...]
    identity: list[IdentityTable]
    json: list[JsonColumn]
    scan_all: bool
    skipped: list[str] = field(default_factory=list)  # configured columns this database does not have
    problems: list[str] = field(default_factory=list)
    fold: str | None = None  # the collation emails are lowered under (identity.fold_collation)

    def identity_table(self, ref: TableRef) -> IdentityTable | None:
        return next((t for t in self.identity if t.table == ref), None)

    @property
    def delete_roots(self) -> list[IdentityTable]:
        return [t for t in self.identity if t.mode == "delete"]

    @property
    def anonymised(self) -> list[IdentityTable]:
        return [t for t in self.identity if t.mode == "anonymise"]


def _resolve(
    conn: Connection, catalog: Catalog, ref: ColumnRef, skipped: list[str], seen: dict[str, TableRef | None]
) -> TableRef | None:
    quote = conn.dialect.identifier_preparer.quote_identifier
    name = ".".join(quote(part) for part in ref.relation)
    if name not in seen:  # each table looked up once (several columns of one table are usual)
        seen[name] = resolve_table(conn, name)
    table = seen[name]
    if table is None or table not in catalog.tables or ref.column not in catalog.table(table).columns:
        skipped.append(str(ref))
        return None
    return table


def resolve_targets(conn: Connection, catalog: Catalog, settings: ErasureSettings) -> Targets:
    """Raises nothing: what is missing is skipped, what is unusable is a problem."""
    users = resolve_table(conn, USER_TABLE)
    problems: list[str] = []
    skipped: list[str] = []
    if users is None or users not in catalog.tables:
        return Targets(
            users=TableRef("public", USER_TABLE),
            user_email=None,
            user_exact=(),
            identity=[],
            json=[],
            scan_all=settings.scan_all,
            problems=[f"this database has no `{USER_TABLE}` table"],
        )
    info = catalog.table(users)
    if not info.key:
        problems.append(f"{users} has no primary key, so its rows can't be addressed")
    by_table: dict[TableRef, list[str]] = {}
    seen: dict[str, TableRef | None] = {}
    for ref in settings.columns:
        table = _resolve(conn, catalog, ref, skipped, seen)
        if table is not None and ref.column not in by_table.setdefault(table, []):
            by_table[table].append(ref.column)
    clears: dict[TableRef, list[Cleared]] = {}
    for ref in settings.clear_columns:
        table = _resolve(conn, catalog, ref, skipped, seen)
        if table is None or table not in by_table:
            continue
        nullable = ref.column not in catalog.table(table).not_null
        clears.setdefault(table, []).append(Cleared(ref.column, nullable))
    identity = []
    for table, columns in by_table.items():
        mode = settings.mode(table.name)
        if not catalog.table(table).key:
            problems.append(f"{table} has no primary key, so its rows can't be addressed")
        unique = unique_columns(conn, table) & set(columns) if mode == "anonymise" else frozenset()
        identity.append(IdentityTable(table, tuple(columns), mode, tuple(clears.get(table, ())), unique))
    json_columns = []
    for ref in settings.json_columns:
        table = _resolve(conn, catalog, ref, skipped, seen)
        if table is not None:
            if not catalog.table(table).key:
                problems.append(f"{table} has no primary key, so its rows can't be addressed")
            json_columns.append(JsonColumn(table, ref.column))
    return Targets(
        users=users,
        user_email=USER_EMAIL if USER_EMAIL in info.columns else None,
        user_exact=tuple(c for c in USER_EXACT if c in info.columns),
        identity=identity,
        json=json_columns,
        scan_all=settings.scan_all,
        skipped=skipped,
        problems=problems,
        fold=fold_collation(conn),
    )
