"""A schema snapshot of one database: every object that defines its shape, read in a fixed handful of queries.

An object belongs to a group: the table (or view) it is part of, `schema.name`, or the
database itself (`""`) for enums and extensions. Each object carries ordered (attribute,
value) pairs, the words a person compares: a column's type, nullability and default; a
foreign key's definition, ON DELETE rule and validity; an index's definition and validity.
Two snapshots are compared attribute by attribute (bot/schema/drift.py).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, text

from bot.pgcatalog import queries

DATABASE = ""  # the group of database-wide objects

RELATION_KINDS = {"r": "table", "p": "partitioned table", "v": "view", "m": "materialized view", "f": "foreign table"}
CONSTRAINT_KINDS = {
    "p": "primary key",
    "u": "unique constraint",
    "c": "check constraint",
    "f": "foreign key",
    "x": "exclusion constraint",
}
TRIGGER_STATES = {"O": "enabled", "D": "disabled", "R": "enabled on replicas only", "A": "enabled always"}
POLICY_COMMANDS = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}
# Clauses of pg_get_constraintdef that are compared as attributes of their own.
_RULE_CLAUSE = re.compile(r" ON (DELETE|UPDATE) (NO ACTION|RESTRICT|CASCADE|SET NULL|SET DEFAULT)( \([^)]*\))?")
_TAIL_CLAUSE = re.compile(r"( NOT VALID| NOT DEFERRABLE| DEFERRABLE( INITIALLY (DEFERRED|IMMEDIATE))?)")

Skip = Callable[[str, str], bool]  # (schema, name) -> leave it out


@dataclass(frozen=True)
class CatalogObject:
    group: str  # "schema.table" for a table's (or view's) parts, DATABASE for database-wide objects
    kind: str  # "table", "column", "foreign key", "index", "trigger", "policy", "sequence", "enum", ...
    name: str
    attrs: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.group, self.kind, self.name)

    def attr(self, name: str) -> str | None:
        return dict(self.attrs).get(name)


@dataclass
class Snapshot:
    objects: dict[tuple[str, str, str], CatalogObject] = field(default_factory=dict)
    server_version: int = 0  # server_version_num
    queries: int = 0  # catalog statements this snapshot took

    def add(self, obj: CatalogObject) -> None:
        self.objects[obj.key] = obj

    def groups(self) -> set[str]:
        return {key[0] for key in self.objects}

    def restricted_to(self, groups: Iterable[str]) -> Snapshot:
        """Only these tables' objects (the database-wide ones are left out too)."""
        wanted = set(groups)
        kept = {key: obj for key, obj in self.objects.items() if key[0] in wanted}
        return Snapshot(kept, self.server_version, self.queries)


def ignore_patterns(raw: str) -> tuple[str, ...]:
    """DRIFT_IGNORE: comma-separated `schema.table` globs; a pattern without a dot names a schema or a table."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def ignorer(patterns: Iterable[str], excluded: Iterable[tuple[str, str]] = ()) -> Skip:
    """A Skip for DRIFT_IGNORE patterns plus exact (schema, table) pairs (the migrations table)."""
    pats = tuple(patterns)
    exact = set(excluded)

    def skip(schema: str, name: str) -> bool:
        if (schema, name) in exact:
            return True
        for pattern in pats:
            if "." in pattern:
                if fnmatch.fnmatchcase(f"{schema}.{name}", pattern):
                    return True
            elif fnmatch.fnmatchcase(schema, pattern) or fnmatch.fnmatchcase(name, pattern):
                return True
        return False

    return skip


def qualified(schema: str, name: str) -> str:
    return f"{schema}.{name}"


def _yes(value: bool, word: str, other: str) -> str:
    return word if value else other


def _constraint_attrs(row: Any) -> tuple[tuple[str, str], ...]:
    definition: str = row.definition
    attrs: list[tuple[str, str]] = []
    if row.type == "f":
        rules = {m.group(1): m.group(2) + (m.group(3) or "") for m in _RULE_CLAUSE.finditer(definition)}
        attrs += [("ON DELETE", rules.get("DELETE", "NO ACTION")), ("ON UPDATE", rules.get("UPDATE", "NO ACTION"))]
    core = _TAIL_CLAUSE.sub("", _RULE_CLAUSE.sub("", definition))
    attrs.insert(0, ("definition", core))
    attrs.append(("validity", _yes(row.valid, "valid", "NOT VALID")))
    if row.deferrable:
        attrs.append(("deferrable", "initially deferred" if row.deferred else "initially immediate"))
    return tuple(attrs)


def _column_attrs(row: Any) -> tuple[tuple[str, str], ...]:
    r = row
    generated = r.generated or ""
    expression = r.default_expr
    attrs = [
        ("type", r.type),
        ("nullability", _yes(r.not_null, "NOT NULL", "nullable")),
        ("default", "none" if generated or expression is None else expression),
        ("generated", f"{expression} ({'stored' if generated == 's' else 'virtual'})" if generated else "no"),
        ("identity", {"a": "always", "d": "by default"}.get(r.identity or "", "no")),
    ]
    if r.collation:
        attrs.append(("collation", r.collation))
    return tuple(attrs)


def read_snapshot(conn: Connection, skip: Skip | None = None) -> Snapshot:
    """Read every schema object of the connected database, in ten statements whatever its size."""
    skip = skip or (lambda _schema, _name: False)
    snap = Snapshot()

    def run(query: Any) -> list[Any]:
        snap.queries += 1
        return list(conn.execute(query))

    snap.server_version = int(conn.execute(text("SELECT current_setting('server_version_num')::int")).scalar_one())
    snap.queries += 1
    for r in run(queries.RELATIONS):
        if skip(r.schema, r.name):
            continue
        group = qualified(r.schema, r.name)
        kind = RELATION_KINDS[r.kind]
        attrs: list[tuple[str, str]] = []
        if r.view_definition is not None:
            attrs.append(("definition", " ".join(r.view_definition.split())))
        else:
            rls = "forced" if r.force_rls else _yes(r.rls, "enabled", "disabled")
            attrs.append(("row level security", rls))
        if r.parent:
            attrs.append(("partition of", f"{r.parent} {r.partition_bound or ''}".strip()))
        snap.add(CatalogObject(group, "view" if "view" in kind else "table", r.name, (("kind", kind), *attrs)))
    tables = snap.groups()
    for r in run(queries.COLUMNS):
        group = qualified(r.schema, r.table_name)
        if group in tables:
            snap.add(CatalogObject(group, "column", r.name, _column_attrs(r)))
    for r in run(queries.CONSTRAINTS):
        group = qualified(r.schema, r.table_name)
        if group in tables:
            snap.add(CatalogObject(group, CONSTRAINT_KINDS[r.type], r.name, _constraint_attrs(r)))
    for r in run(queries.INDEXES):
        group = qualified(r.schema, r.table_name)
        if group in tables:
            valid = _yes(r.valid, "valid", "INVALID (a failed CREATE INDEX CONCURRENTLY)")
            snap.add(CatalogObject(group, "index", r.name, (("definition", r.definition), ("validity", valid))))
    for r in run(queries.TRIGGERS):
        group = qualified(r.schema, r.table_name)
        if group in tables:
            state = TRIGGER_STATES.get(r.enabled, r.enabled)
            snap.add(CatalogObject(group, "trigger", r.name, (("definition", r.definition), ("state", state))))
    for r in run(queries.POLICIES):
        group = qualified(r.schema, r.table_name)
        if group in tables:
            attrs = (
                ("command", POLICY_COMMANDS.get(r.command, r.command)),
                ("mode", _yes(r.permissive, "permissive", "restrictive")),
                ("roles", ", ".join(r.roles)),
                ("using", r.using_expr or "none"),
                ("with check", r.check_expr or "none"),
            )
            snap.add(CatalogObject(group, "policy", r.name, attrs))
    for r in run(queries.SEQUENCES):
        owner = r.owned_by
        if owner is not None and owner not in tables:
            continue  # owned by a table left out (ignored, or the migrations table)
        if owner is None and skip(r.schema, r.name):
            continue
        attrs = (
            ("type", r.data_type),
            ("start", str(r.start)),
            ("increment", str(r.increment)),
            ("range", f"{r.min}..{r.max}"),
            ("cycle", _yes(r.cycle, "yes", "no")),
            ("cache", str(r.cache)),
        )
        name = r.name if owner else qualified(r.schema, r.name)
        snap.add(CatalogObject(owner or DATABASE, "sequence", name, attrs))
    for r in run(queries.ENUMS):
        if not skip(r.schema, r.name):
            values = ", ".join(f"'{label}'" for label in r.labels)
            snap.add(CatalogObject(DATABASE, "enum", qualified(r.schema, r.name), (("values", values),)))
    for r in run(queries.EXTENSIONS):
        snap.add(CatalogObject(DATABASE, "extension", r.name, (("version", r.version),)))
    return snap
