"""`/mcp migrations`: per stage and per migration, applied, pending, skipped, edited or unknown.

With MIGRATIONS_DIR, each migration of the folder is matched to the stage's row (by name on a drizzle-orm 1.x
table, else by `created_at` = the journal's `when`, or, for a folder-per-migration layout, the folder's timestamp
to the second, as 1.x's upgrade of a 0.x table matches them; last, by hash), then:
- applied: the row's hash is the file's; `crlf` when it is the file's with other line endings only;
- edited: the row's hash is neither (someone changed an applied migration's file);
- pending: no row, and the next migrate will run it. The folder's layout says which migrator reads it: a journal
  is drizzle-orm 0.x's (it runs entries whose `when` is newer than the newest row's `created_at`), folders are
  1.x's (it runs every migration whose name has no row, so nothing is ever skipped there);
- skipped: no row, and 0.x's migrate never will (its `when` is older than the newest row's: a branch merged late);
- unknown: a row that matches no file.
Without MIGRATIONS_DIR the stages' tables are compared with each other: which hashes each has that another lacks.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.exc import DBAPIError

from bot.config import SchemaSettings
from bot.errors import UserFacingError
from bot.schema.drizzle import AppliedRow, LocalMigration, MigrationTable, read_folder, read_table
from bot.stages import Stage

APPLIED, CRLF, EDITED, PENDING, SKIPPED = "applied", "crlf", "edited", "pending", "skipped"
HAS_IT = frozenset({APPLIED, CRLF, EDITED})  # a row for it exists on the stage


@dataclass(frozen=True)
class Entry:
    """One migration on one stage."""

    name: str
    state: str
    when: int
    row: AppliedRow | None = None
    file_hash: str = ""  # the folder file's sha256, beside the row's (an edit shows both)
    repeats: tuple[AppliedRow, ...] = ()  # more rows recording it: run twice (two migrates at once; no lock)


@dataclass
class StageMigrations:
    stage: str
    protected: bool
    table: str  # "ok" | "missing" | "denied" | "foreign" | "unreachable"
    reason: str | None = None  # why the table could not be read, in words
    named: bool = False
    entries: list[Entry] = field(default_factory=list)  # the folder's migrations, in order (with MIGRATIONS_DIR)
    unknown: list[AppliedRow] = field(default_factory=list)
    rows: tuple[AppliedRow, ...] = ()
    newest: AppliedRow | None = None
    newest_name: str | None = None
    reruns: AppliedRow | None = None  # a row without created_at: drizzle-orm 0.x's next migrate reruns every entry

    @property
    def readable(self) -> bool:
        return self.table == "ok"

    def entry(self, name: str) -> Entry | None:
        return next((e for e in self.entries if e.name == name), None)

    def state_of(self, name: str) -> str | None:
        found = self.entry(name)
        return found.state if found else None

    def applied_keys(self) -> set[str]:
        """What this stage has applied: folder names with MIGRATIONS_DIR, else row hashes."""
        if self.entries:
            return {e.name for e in self.entries if e.state in HAS_IT}
        return {r.hash for r in self.rows}

    def counts(self) -> dict[str, int]:
        counted: dict[str, int] = {}
        for entry in self.entries:
            counted[entry.state] = counted.get(entry.state, 0) + 1
        return counted


@dataclass
class MigrationsReport:
    stages: list[StageMigrations]
    layout: str | None  # "journal" | "folders" | None (no MIGRATIONS_DIR)
    local: list[LocalMigration]
    reference: str | None
    checked_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def stage(self, name: str) -> StageMigrations | None:
        return next((s for s in self.stages if s.stage == name), None)

    def behind(self, stage: StageMigrations, other: StageMigrations) -> list[str]:
        """What `other` has applied that `stage` has not (names, or hashes without MIGRATIONS_DIR)."""
        if not (stage.readable and other.readable):
            return []
        missing = other.applied_keys() - stage.applied_keys()
        if self.local:
            return [m.name for m in self.local if m.name in missing]
        return sorted(missing)

    def not_everywhere(self) -> list[str]:
        """Migrations not plainly `applied` (once) on every readable stage, in folder order."""
        readable = [s for s in self.stages if s.readable]

        def plain(stage: StageMigrations, name: str) -> bool:
            entry = stage.entry(name)
            return entry is not None and entry.state == APPLIED and not entry.repeats

        return [m.name for m in self.local if not all(plain(s, m.name) for s in readable)]


def classify(
    local: list[LocalMigration], table: MigrationTable, layout: str = "journal"
) -> tuple[list[Entry], list[AppliedRow]]:
    """Each folder migration's state on this table, and the rows that match no file.

    `layout` is read_folder's: "journal" (drizzle-orm 0.x reads it) or "folders" (1.x).
    """
    folders = layout == "folders"
    unmatched = list(table.rows)
    newest = table.newest
    # 0.x reads `ORDER BY created_at DESC LIMIT 1`: NULL sorts first, reads as 0, and every entry runs again.
    undated = any(r.created_at is None for r in table.rows)
    by_name = {r.name: r for r in unmatched if r.name}

    def same_when(row: AppliedRow, when: int) -> bool:
        if row.created_at is None:
            return False
        # 1.x folders carry their timestamp to the second; a 0.x row's `when` has milliseconds.
        return row.created_at // 1000 == when // 1000 if folders else row.created_at == when

    entries: list[Entry] = []
    for m in local:
        row = by_name.get(m.name) if table.named else None
        if row is None:
            dated = [r for r in unmatched if same_when(r, m.when) and not (table.named and r.name)]
            row = next((r for r in dated if r.hash == m.hash), dated[0] if dated else None)
        if row is None:  # recorded under another `when` (a regenerated journal), recognised by its text
            row = next((r for r in unmatched if r.hash == m.hash and not (folders and table.named and r.name)), None)
        repeats: tuple[AppliedRow, ...] = ()
        if row is not None:
            unmatched.remove(row)
            state = APPLIED if row.hash == m.hash else CRLF if row.hash in m.line_ending_hashes else EDITED
            repeats = tuple(
                r for r in unmatched if r.hash == row.hash and (r.name, r.created_at) == (row.name, row.created_at)
            )
            for again in repeats:
                unmatched.remove(again)
        elif folders or newest is None or newest.created_at is None or undated or m.when > newest.created_at:
            state = PENDING
        else:
            state = SKIPPED
        entries.append(Entry(m.name, state, m.when, row, m.hash, repeats))
    return entries, unmatched


def _read_stage(stage: Stage, settings: SchemaSettings) -> MigrationTable | str:
    """The stage's table, or a reason it could not be read (unreachable, a permission)."""
    try:
        with stage.read() as conn:
            try:
                with conn.begin_nested():
                    return read_table(conn, settings.migrations_schema, settings.migrations_table)
            except DBAPIError as exc:
                if getattr(exc.orig, "sqlstate", None) == "42501":
                    return MigrationTable("denied")
                raise
    except UserFacingError as exc:
        return exc.message


def _stage_migrations(
    stage: Stage, read: MigrationTable | str, local: list[LocalMigration], layout: str | None, settings: SchemaSettings
) -> StageMigrations:
    table_name = f"{settings.migrations_schema}.{settings.migrations_table}"
    if isinstance(read, str):
        return StageMigrations(stage.name, stage.protected, "unreachable", reason=read)
    unread = {
        "missing": f"no table {table_name}: never migrated by Drizzle (or MIGRATIONS_SCHEMA/MIGRATIONS_TABLE name "
        "another table)",
        "foreign": f"{table_name} is not a Drizzle migrations table (no id, hash and created_at columns)",
        "denied": f"the stage's role may not read {table_name} (permission denied)",
    }
    if read.state in unread:
        return StageMigrations(stage.name, stage.protected, read.state, reason=unread[read.state])
    entries, unknown = classify(local, read, layout or "journal") if local else ([], [])
    newest = read.newest
    named = newest.name if newest and newest.name else None
    if named is None and newest is not None:
        named = next((e.name for e in entries if e.row is not None and e.row.id == newest.id), None)
    return StageMigrations(
        stage.name,
        stage.protected,
        "ok",
        named=read.named,
        entries=entries,
        unknown=unknown,
        rows=read.rows,
        newest=newest,
        newest_name=named,
        reruns=next((r for r in read.rows if r.created_at is None), None) if layout == "journal" else None,
    )


def migrations_report(stages: Iterable[Stage], settings: SchemaSettings) -> MigrationsReport:
    """Every stage's table read at once (each in its own read-only transaction), classified against the folder."""
    layout, local = read_folder(settings.migrations_dir) if settings.migrations_dir else (None, [])
    listed = list(stages)
    with ThreadPoolExecutor(max_workers=max(len(listed), 1), thread_name_prefix="migrations") as pool:
        reads = list(pool.map(lambda s: _read_stage(s, settings), listed))
    return MigrationsReport(
        stages=[_stage_migrations(s, r, local, layout, settings) for s, r in zip(listed, reads, strict=True)],
        layout=layout,
        local=local,
        reference=settings.reference_stage,
    )
