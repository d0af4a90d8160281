"""What a scoped backup is: its steps (one file per table), its manifest, and the COPY settings it pins.

A scoped backup holds exactly the rows a delete removes (and the columns it nulls), one gzip'd
`COPY ... TO STDOUT` file per table in the delete's plan order, and a `manifest.json`: plan order,
per-table action, row counts, sha256 of the uncompressed data, the tables' schema
fingerprint, the session settings the COPY text was written under, and the user triggers that
fired during the delete (whose effects the backup does not hold). `export` writes one, `restore`
puts one back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql
from sqlalchemy import Connection, text

from bot.backups import catalog
from bot.backups.store import BackupStore
from bot.errors import UserFacingError

MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
COMPRESSION_LEVEL = 1  # fast: a backup runs inside the delete's transaction, holding its locks
KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")

Action = Literal["delete", "set_null", "set_default"]
COLUMN_ACTIONS = ("set_null", "set_default")  # the delete changes columns of rows it keeps

# The settings COPY's text depends on, pinned as pg_dump pins them, so a role's own DateStyle (say
# `SQL, DMY`) can't turn 2024-11-03 into 2024-03-11 between backup and restore. `client_encoding`
# is the database's own encoding (as pg_dump's default), recorded in the manifest.
PINNED_SETTINGS: dict[str, str] = {
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",
    "TimeZone": "UTC",
    "bytea_output": "hex",
    "xmloption": "content",
    "search_path": "",
}


class BackupCorrupt(UserFacingError):
    outcome = "error"


@dataclass(frozen=True)
class BackupStep:
    """One table of a delete plan, in plan order (children before parents).

    `scope_table` is a temporary table whose columns include `primary_key` (same names); for
    `set_null`/`set_default`, it holds the rows whose `set_null_columns` the delete will null
    (or set to their default). `expected_rows` is the count the plan (the approved impact) says;
    None skips that check. `only`: a plain table, read with ONLY (rows of tables inheriting from it are not its rows).
    """

    schema: str
    table: str
    primary_key: tuple[str, ...]
    scope_table: str
    action: Action = "delete"
    set_null_columns: tuple[str, ...] = ()
    expected_rows: int | None = None
    only: bool = True

    @property
    def qualified(self) -> str:
        return catalog.qualified(self.schema, self.table)


@dataclass(frozen=True)
class BackupContext:
    """Who and what the backup is for; it goes into the manifest, the index and the audit."""

    stage: str
    request_id: str
    requested_by: str
    server_id: str | None = None
    slug: str | None = None
    approved_by: tuple[str, ...] = ()
    snapshot: dict[str, Any] | None = None


@dataclass(frozen=True)
class ManifestStep:
    order: int
    schema: str
    table: str
    primary_key: tuple[str, ...]
    action: Action
    set_null_columns: tuple[str, ...]
    columns: tuple[str, ...]
    file: str
    rows: int
    sha256: str
    bytes: int
    stored_bytes: int
    only: bool = True

    @property
    def qualified(self) -> str:
        return catalog.qualified(self.schema, self.table)


@dataclass(frozen=True)
class Manifest:
    backup_id: str
    stage: str
    request_id: str
    server_id: str | None
    slug: str | None
    created_at: str
    requested_by: str
    approved_by: tuple[str, ...]
    fingerprint: dict[str, Any]
    steps: tuple[ManifestStep, ...]
    snapshot: dict[str, Any] | None
    key: str  # where the manifest itself is stored; files are siblings
    settings: dict[str, str] = field(default_factory=dict)  # what the COPY text was written under
    triggers: tuple[str, ...] = ()  # user triggers that fired during the delete: their effects are not here

    @property
    def row_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for step in self.steps:
            label = step.qualified if step.action == "delete" else f"{step.qualified} ({step.action.replace('_', ' ')})"
            counts[label] = counts.get(label, 0) + step.rows
        return counts

    def file_key(self, step: ManifestStep) -> str:
        return self.key.rsplit("/", 1)[0] + "/" + step.file


@dataclass(frozen=True)
class BackupRecord:
    """What a write produced: enough for the engine's audit line and the delete's message."""

    backup_id: str
    manifest_key: str
    location: str
    row_counts: dict[str, int]
    stored_bytes: int
    manifest: Manifest


def sanitize(value: str) -> str:
    return KEY_UNSAFE.sub("_", value)[:100] or "_"


def ident_list(names: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def qualified(schema: str, table: str, *, only: bool = False) -> sql.Composable:
    """`schema.table`, with ONLY for a plain table read as a FROM item."""
    name = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    return sql.SQL("ONLY {}").format(name) if only else name


def driver(conn: Connection) -> psycopg.Connection[Any]:
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection), "stages use the psycopg 3 driver"
    return raw


def copy_settings(conn: Connection) -> dict[str, str]:
    """The pinned settings plus this database's encoding, as the manifest records them."""
    encoding = conn.execute(text("SELECT current_setting('server_encoding')")).scalar_one()
    return {**PINNED_SETTINGS, "client_encoding": str(encoding)}


@contextmanager
def pinned(conn: Connection, settings: Mapping[str, str]) -> Iterator[None]:
    """`settings` for the statements inside (local to the transaction), the previous values after.

    After an error the transaction (or savepoint) is rolled back anyway, which undoes them too.
    """
    names = list(settings)
    previous = conn.execute(
        text("SELECT " + ", ".join(f"current_setting(:n{i})" for i in range(len(names)))),
        {f"n{i}": n for i, n in enumerate(names)},
    ).one()
    _set(conn, settings)
    yield
    _set(conn, dict(zip(names, previous, strict=True)))


def _set(conn: Connection, settings: Mapping[str, str]) -> None:
    params: dict[str, str] = {}
    calls = []
    for i, (name, value) in enumerate(settings.items()):
        params[f"n{i}"], params[f"v{i}"] = name, value
        calls.append(f"set_config(:n{i}, :v{i}, true)")
    conn.execute(text("SELECT " + ", ".join(calls)), params)


def manifest_from_json(data: dict[str, Any], key: str) -> Manifest:
    try:
        if data.get("version") != MANIFEST_VERSION or data.get("kind") != "scoped":
            raise BackupCorrupt(f"{key} is not a scoped backup manifest this version can read")
        steps = tuple(
            ManifestStep(
                order=int(s["order"]),
                schema=str(s["schema"]),
                table=str(s["table"]),
                primary_key=tuple(s["primary_key"]),
                action=s["action"],
                set_null_columns=tuple(s.get("set_null_columns", ())),
                columns=tuple(s["columns"]),
                file=str(s["file"]),
                rows=int(s["rows"]),
                sha256=str(s["sha256"]),
                bytes=int(s["bytes"]),
                stored_bytes=int(s["stored_bytes"]),
                only=bool(s.get("only", True)),
            )
            for s in data["steps"]
        )
        return Manifest(
            backup_id=str(data["backup_id"]),
            stage=str(data["stage"]),
            request_id=str(data["request_id"]),
            server_id=data.get("server", {}).get("id"),
            slug=data.get("server", {}).get("slug"),
            created_at=str(data["created_at"]),
            requested_by=str(data.get("requested_by", "")),
            approved_by=tuple(data.get("approved_by", ())),
            fingerprint=dict(data["schema_fingerprint"]),
            steps=steps,
            snapshot=data.get("snapshot"),
            key=key,
            settings=dict(data.get("format", {}).get("settings") or PINNED_SETTINGS),
            triggers=tuple(data.get("triggers_on_delete", ())),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BackupCorrupt(f"{key} is not a readable manifest ({type(exc).__name__})") from None


def load_manifest(store: BackupStore, key: str) -> Manifest:
    raw = store.read_bytes(key)
    try:
        data = json.loads(raw)
    except ValueError:
        raise BackupCorrupt(f"{key} is not valid JSON") from None
    if not isinstance(data, dict):
        raise BackupCorrupt(f"{key} is not a manifest")
    return manifest_from_json(data, key)
