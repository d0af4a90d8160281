"""Drizzle's bookkeeping, read as drizzle-orm reads it: the migrations folder and the migrations table.

Folder (drizzle-kit 0.x): `meta/_journal.json` lists entries (`idx`, `when`, `tag`, `breakpoints`); each migration
is `<tag>.sql`. Folder (drizzle-kit 1.x): one directory per migration, `<YYYYMMDDHHMMSS>_<name>/migration.sql`,
its `when` being that UTC timestamp. Either way a migration's hash is sha256 (hex) of the whole file's text.

drizzle-orm hashes the text it read (`readFileSync(...).toString()`: UTF-8, an invalid byte read as U+FFFD), so the
hash here is of the file's bytes decoded the same way.

Table: `"drizzle"."__drizzle_migrations"` by default (`id`, `hash`, `created_at` = the entry's `when`), plus
`name` and `applied_at` once drizzle-orm 1.x has upgraded it. drizzle-orm 0.x runs every entry whose `when` is newer
than the newest `created_at`; 1.x runs every migration whose name has no row.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import BigInteger, Column, Connection, DateTime, Integer, MetaData, Table, Text, select, text

from bot.errors import UserFacingError

JOURNAL = Path("meta") / "_journal.json"
V1_FILE = "migration.sql"


class MigrationsFolderError(UserFacingError):
    outcome = "error"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class LocalMigration:
    name: str  # the journal's tag, or the 1.x folder name
    when: int  # milliseconds: what drizzle records as created_at
    hash: str
    line_ending_hashes: frozenset[str]  # the same text with LF or CRLF line endings only


def _as_node_reads_it(data: bytes) -> bytes:
    """The UTF-8 of the file's text as Node's Buffer.toString() makes it (what drizzle hashes)."""
    return data.decode("utf-8", errors="replace").encode("utf-8")


def _line_ending_variants(data: bytes) -> frozenset[str]:
    lf = data.replace(b"\r\n", b"\n")
    return frozenset({sha256(lf), sha256(lf.replace(b"\n", b"\r\n"))}) - {sha256(data)}


def _local(name: str, when: int, raw: bytes) -> LocalMigration:
    data = _as_node_reads_it(raw)
    return LocalMigration(name=name, when=when, hash=sha256(data), line_ending_hashes=_line_ending_variants(data))


def _v1_when(folder_name: str) -> int | None:
    try:
        stamp = datetime.strptime(folder_name[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return int(stamp.timestamp() * 1000)


APP_FOLDERS = ("migrations", "drizzle")  # the platform's `out`, and drizzle-kit's default one


def _holds_migrations(folder: Path) -> bool:
    return (folder / JOURNAL).exists() or any((sub / V1_FILE).is_file() for sub in folder.iterdir() if sub.is_dir())


def migrations_folder(directory: Path) -> Path:
    """MIGRATIONS_DIR itself, or its `migrations` (or `drizzle`) folder when it holds the app rather than the folder."""
    if not directory.is_dir() or _holds_migrations(directory):
        return directory
    return next(
        (directory / n for n in APP_FOLDERS if (directory / n).is_dir() and _holds_migrations(directory / n)), directory
    )


def read_folder(directory: Path) -> tuple[str, list[LocalMigration]]:
    """("journal" | "folders", migrations in the order drizzle applies them); MigrationsFolderError if unreadable."""
    try:
        folder = migrations_folder(directory)
        journal = folder / JOURNAL
        if journal.exists():
            entries = json.loads(journal.read_text(encoding="utf-8")).get("entries", [])
            found = [_local(str(e["tag"]), int(e["when"]), (folder / f"{e['tag']}.sql").read_bytes()) for e in entries]
            return "journal", found
        found = []
        for sub in sorted(p for p in folder.iterdir() if (p / V1_FILE).is_file()):
            when = _v1_when(sub.name)
            if when is not None:
                found.append(_local(sub.name, when, (sub / V1_FILE).read_bytes()))
        if not found:
            raise MigrationsFolderError(
                f"MIGRATIONS_DIR holds no Drizzle migrations: no {JOURNAL.as_posix()} and no "
                f"<YYYYMMDDHHMMSS>_<name>/{V1_FILE} folders in it or in its {' or '.join(APP_FOLDERS)} folder"
            )
        return "folders", found
    except FileNotFoundError as exc:
        raise MigrationsFolderError(
            f"MIGRATIONS_DIR lists a migration whose file is missing: {Path(exc.filename).name}"
        ) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MigrationsFolderError(
            f"MIGRATIONS_DIR could not be read ({type(exc).__name__}): expected drizzle-kit's out folder"
        ) from None


@dataclass(frozen=True)
class AppliedRow:
    id: int
    hash: str
    created_at: int | None
    name: str | None = None
    applied_at: datetime | None = None


@dataclass(frozen=True)
class MigrationTable:
    """A stage's migrations table as read, or why it could not be (`missing`, `denied`)."""

    state: str  # "ok" | "missing" | "denied" | "foreign" (no id, hash and created_at: not Drizzle's)
    rows: tuple[AppliedRow, ...] = ()
    named: bool = False  # drizzle-orm 1.x layout: name and applied_at columns

    @property
    def newest(self) -> AppliedRow | None:
        dated = [r for r in self.rows if r.created_at is not None]
        return max(dated, key=lambda r: (r.created_at, r.id)) if dated else None


def read_table(conn: Connection, schema: str, table: str) -> MigrationTable:
    """Read the stage's migrations table in the caller's (read-only) transaction; two catalog lookups, one read."""
    qualified = f'"{schema}"."{table}"'
    found = conn.execute(
        text(
            "SELECT c.oid, has_table_privilege(c.oid, 'SELECT') AS readable,"
            " ARRAY(SELECT attname::text FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0"
            " AND NOT attisdropped) AS columns"
            " FROM pg_class c WHERE c.oid = to_regclass(:name)"
        ),
        {"name": qualified},
    ).first()
    if found is None:
        return MigrationTable("missing")
    if not found.readable:
        return MigrationTable("denied")
    if not {"id", "hash", "created_at"} <= set(found.columns):
        return MigrationTable("foreign")
    named = {"name", "applied_at"} <= set(found.columns)
    columns = [Column("id", Integer), Column("hash", Text), Column("created_at", BigInteger)]
    if named:
        columns += [Column("name", Text), Column("applied_at", DateTime(timezone=True))]
    migrations = Table(table, MetaData(), *columns, schema=schema)
    rows = conn.execute(select(migrations).order_by(migrations.c.id))
    return MigrationTable(
        "ok",
        tuple(
            AppliedRow(
                id=r.id,
                hash=r.hash,
                created_at=r.created_at,
                name=r.name if named else None,
                applied_at=r.applied_at if named else None,
            )
            for r in rows
        ),
        named,
    )
