"""Putting a scoped backup back, byte for byte, or saying exactly why not (and writing nothing).

`restore` reads the manifest's tables back in the caller's write transaction:
1. refuses if the schema changed (the tables' fingerprint);
2. stages every file in a temporary table shaped like its table (generated columns computed, so
   unique keys on them can be checked), with `COPY FROM STDIN` under the settings the backup was
   written with, checking its sha256 and row count;
3. looks for rows that would collide with what is there now (primary keys and unique values that
   exist again, a reused slug, nulled columns set again since); any conflict: nothing is written;
4. turns off the user triggers that would fire on the rows it writes, where the role may (it owns
   the table: `ALTER TABLE ... DISABLE TRIGGER`, inside the transaction, each turned back to its own
   mode before the commit), so a counter cache does not double and a revision stamp does not move;
   where it may not, the report (and a dry run, before anyone approves) names the triggers that fire;
5. inserts parents first (tables on a cycle of foreign keys in one statement), then sets nulled
   columns back.
A dry run does everything but 4's changes and 5, then rolls its savepoint back.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from sqlalchemy import Connection

from bot.backups import catalog
from bot.backups.conflicts import Conflict, find_conflicts, integrity_conflict
from bot.backups.manifest import (
    COLUMN_ACTIONS,
    BackupCorrupt,
    Manifest,
    ManifestStep,
    driver,
    ident_list,
    pinned,
    qualified,
)
from bot.backups.store import BackupStore
from bot.deletion import dberrors
from bot.deletion.catalog import Catalog, TableRef, Trigger, load_catalog
from bot.deletion.scope import ordered_components
from bot.errors import UserFacingError
from bot.slacktext.words import plural

# How each trigger mode is turned back on (tgenabled): O origin (the default), A always.
ENABLE = {"O": "ENABLE TRIGGER", "A": "ENABLE ALWAYS TRIGGER"}


class SchemaChanged(UserFacingError):
    outcome = "bad_input"


class RestoreFailed(UserFacingError):
    """The database refused part of the restore (a trigger, a privilege, a lock); nothing was written."""

    outcome = "error"


@dataclass
class RestoreReport:
    backup_id: str
    request_id: str
    stage: str
    slug: str | None
    dry_run: bool
    tables: list[tuple[str, str, int]] = field(default_factory=list)  # (table, action, rows) in restore order
    conflicts: list[Conflict] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)  # unique indexes too special to pre-check
    restored: bool = False
    seconds: dict[str, float] = field(default_factory=dict)  # per phase: staging, checks, writing
    notes: list[str] = field(default_factory=list)  # from the service's after-restore hooks (erasures re-applied)
    triggers_disabled: list[str] = field(default_factory=list)  # user triggers turned off while rows go back
    triggers_fire: list[str] = field(default_factory=list)  # user triggers the role may not turn off: they fire
    not_restored: list[str] = field(default_factory=list)  # triggers that fired at delete time: not in the backup

    @property
    def total_rows(self) -> int:
        return sum(rows for _t, _a, rows in self.tables)


class RestoreConflict(UserFacingError):
    """Rows in the backup collide with rows that exist now; the message lists them."""

    outcome = "conflict"

    def __init__(self, report: RestoreReport) -> None:
        lines = [
            f"restoring backup {report.backup_id} (request {report.request_id}) would collide with rows that"
            " exist now, so nothing was written:"
        ]
        for c in report.conflicts[:10]:
            example = f"; e.g. {' | '.join(c.samples[:3])}" if c.samples else ""
            lines.append(f"• {c.table}: {c.reason} [{c.constraint}], {plural(c.count, 'row')}{example}")
        if len(report.conflicts) > 10:
            lines.append(f"• … and {len(report.conflicts) - 10} more")
        super().__init__("\n".join(lines))
        self.report = report


def restore_order(manifest: Manifest) -> list[ManifestStep]:
    """Parents first: deletes in reverse plan order, then the nulled columns (their parents exist again)."""
    deletes = [s for s in reversed(manifest.steps) if s.action == "delete"]
    nulls = [s for s in reversed(manifest.steps) if s.action in COLUMN_ACTIONS]
    return deletes + nulls


def restore_groups(cat: Catalog, order: Sequence[ManifestStep]) -> list[list[ManifestStep]]:
    """Statements in order: inserts parents first along every foreign key among the tables put back (tables on a
    cycle of keys, whatever their ON DELETE rules, together in one statement), then each nulled-column update."""
    inserts = {TableRef(s.schema, s.table): s for s in order if s.action == "delete"}
    edges = [
        (cat.node(fk.parent), cat.node(fk.child))
        for fk in cat.foreign_keys
        if cat.node(fk.parent) in inserts and cat.node(fk.child) in inserts and not fk.deferrable
    ]
    known = [ref for ref in inserts if ref in cat.tables]
    groups = [[inserts[ref] for ref in comp] for comp in ordered_components(known, edges)]
    groups += [[inserts[ref]] for ref in inserts if ref not in cat.tables]
    return groups + [[s] for s in order if s.action != "delete"]


def check_fingerprint(conn: Connection, manifest: Manifest) -> None:
    tables = [(s.schema, s.table) for s in manifest.steps]
    try:
        current = catalog.schema_fingerprint(conn, tables)
    except catalog.TableMissing as exc:
        raise SchemaChanged(f"the schema changed since the backup: {exc.message}; nothing was restored") from None
    if current["sha256"] == manifest.fingerprint.get("sha256"):
        return
    then = manifest.fingerprint.get("tables", {})
    changes = [
        f"{name}: {catalog.describe_difference(then.get(name, {}), now)}"
        for name, now in current["tables"].items()
        if then.get(name) != now
    ]
    raise SchemaChanged(
        "the schema changed since the backup, so its rows cannot be put back safely; nothing was restored. "
        + "; ".join(changes[:5])
    )


def restore_triggers(cat: Catalog, manifest: Manifest) -> tuple[list[Trigger], list[Trigger]]:
    """(user triggers the restore turns off, those it may not: they fire) on the rows it writes."""
    off: list[Trigger] = []
    fire: list[Trigger] = []
    seen: set[tuple[TableRef, str]] = set()
    for step in manifest.steps:
        ref = TableRef(step.schema, step.table)
        if ref not in cat.tables:
            continue
        for trigger in cat.firing(ref, ("INSERT",) if step.action == "delete" else ("UPDATE",)):
            if (trigger.table, trigger.name) in seen:
                continue
            seen.add((trigger.table, trigger.name))
            (off if cat.table(trigger.table).owned and trigger.enabled in ENABLE else fire).append(trigger)
    return off, fire


class _Restorer:
    def __init__(self, conn: Connection, store: BackupStore, manifest: Manifest, report: RestoreReport) -> None:
        self.conn = conn
        self.raw = driver(conn)
        self.store = store
        self.manifest = manifest
        self.report = report
        self.staged: dict[int, str] = {}

    def stage(self, step: ManifestStep) -> None:
        name = f"mcpops_restore_{self.manifest.backup_id}_{step.order}"
        table = qualified(step.schema, step.table)
        if step.action == "delete":
            # Shaped like the table, generated columns included (computed from the staged values), so
            # unique keys on them are checked like any other.
            create = sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING GENERATED) ON COMMIT DROP").format(
                sql.Identifier(name), table
            )
        else:
            create = sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
                sql.Identifier(name), ident_list(step.columns), table
            )
        self.raw.execute(create)
        digest = hashlib.sha256()
        rows = 0
        decompressor = zlib.decompressobj(31)
        key = self.manifest.file_key(step)
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(name), ident_list(step.columns))
        with self.raw.cursor() as cursor, cursor.copy(statement) as copy:
            try:
                for chunk in self.store.read_chunks(key):
                    data = decompressor.decompress(chunk)
                    digest.update(data)
                    rows += data.count(b"\n")
                    copy.write(data)
                data = decompressor.flush()
            except zlib.error:
                raise BackupCorrupt(f"{key} is not a valid gzip file; nothing was restored") from None
            digest.update(data)
            rows += data.count(b"\n")
            copy.write(data)
            if digest.hexdigest() != step.sha256 or rows != step.rows:
                raise BackupCorrupt(
                    f"{key} does not match its manifest (checksum or row count differs); nothing was restored"
                )
        self.raw.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(name)))  # good plans for the checks
        self.staged[step.order] = name

    def conflicts(self, step: ManifestStep) -> None:
        found, unchecked = find_conflicts(self.conn, step, self.staged[step.order])
        self.report.conflicts += found
        self.report.unchecked += unchecked

    def _insert(self, step: ManifestStep) -> sql.Composable:
        return sql.SQL("INSERT INTO {table} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM {staged}").format(
            table=qualified(step.schema, step.table),
            cols=ident_list(step.columns),
            staged=sql.Identifier(self.staged[step.order]),
        )

    def apply(self, group: list[ManifestStep]) -> list[int]:
        """One statement: an INSERT (a batch: one data-modifying CTE per table), or the UPDATE of nulled columns."""
        step = group[0]
        if len(group) > 1:
            ctes = sql.SQL(", ").join(
                sql.SQL("{} AS ({} RETURNING 1)").format(sql.Identifier(f"mcpops_back_{i}"), self._insert(s))
                for i, s in enumerate(group)
            )
            counts = sql.SQL(", ").join(
                sql.SQL("(SELECT count(*) FROM {})").format(sql.Identifier(f"mcpops_back_{i}"))
                for i in range(len(group))
            )
            row = self.raw.execute(sql.SQL("WITH {} SELECT {}").format(ctes, counts)).fetchone()
            assert row is not None
            return [int(n) for n in row]
        if step.action == "delete":
            statement = self._insert(step)
        else:
            statement = sql.SQL("UPDATE {table} t SET {assign} FROM {staged} s WHERE {join}").format(
                table=qualified(step.schema, step.table, only=step.only),
                assign=sql.SQL(", ").join(
                    sql.SQL("{c} = s.{c}").format(c=sql.Identifier(c)) for c in step.set_null_columns
                ),
                staged=sql.Identifier(self.staged[step.order]),
                join=sql.SQL(" AND ").join(
                    sql.SQL("t.{c} = s.{c}").format(c=sql.Identifier(c)) for c in step.primary_key
                ),
            )
        with self.raw.cursor() as cursor:
            cursor.execute(statement)
            return [cursor.rowcount]

    def switch_triggers(self, triggers: list[Trigger], *, on: bool) -> None:
        for trigger in triggers:
            action = sql.SQL(ENABLE[trigger.enabled] if on else "DISABLE TRIGGER")
            statement = sql.SQL("ALTER TABLE {} {} {}").format(
                qualified(trigger.table.schema, trigger.table.name), action, sql.Identifier(trigger.name)
            )
            try:
                self.raw.execute(statement)
            except psycopg.errors.LockNotAvailable:
                raise RestoreFailed(
                    f"nothing was restored: turning the user triggers of `{trigger.table}` off while the rows go "
                    "back (ALTER TABLE ... DISABLE TRIGGER) waits for every open transaction that wrote to it, and "
                    f"one held it past lock_timeout; try again once it ends (`/mcp sessions --stage "
                    f"{self.report.stage}` shows long and idle-in-transaction sessions)"
                ) from None


def restore(
    conn: Connection, store: BackupStore, manifest: Manifest, *, stage: str, dry_run: bool = False
) -> RestoreReport:
    """Put a scoped backup back inside the caller's write transaction, or report why not.

    Conflicts raise RestoreConflict (nothing written: the caller's transaction rolls back too);
    a dry run stages and checks everything, then rolls its savepoint back and returns the report.
    """
    if manifest.stage != stage:
        raise SchemaChanged(f"backup {manifest.backup_id} was taken on stage {manifest.stage}, not {stage}")
    check_fingerprint(conn, manifest)
    order = restore_order(manifest)
    cat = load_catalog(conn)
    off, fire = restore_triggers(cat, manifest)
    report = RestoreReport(
        backup_id=manifest.backup_id,
        request_id=manifest.request_id,
        stage=stage,
        slug=manifest.slug,
        dry_run=dry_run,
        tables=[(s.qualified, s.action, s.rows) for s in order],
        triggers_disabled=[t.describe() for t in off],
        triggers_fire=[t.describe() for t in fire],
        not_restored=list(manifest.triggers),
    )
    savepoint = conn.begin_nested()
    try:
        _run(conn, store, manifest, report, restore_groups(cat, order), off, dry_run=dry_run)
    except psycopg.Error as exc:
        savepoint.rollback()
        raise RestoreFailed(f"nothing was restored: {dberrors.describe(exc)}") from exc
    except BaseException:
        savepoint.rollback()
        raise
    if report.conflicts:
        savepoint.rollback()
        raise RestoreConflict(report)
    if dry_run:
        savepoint.rollback()
        return report
    savepoint.commit()
    report.restored = True
    return report


def _run(
    conn: Connection,
    store: BackupStore,
    manifest: Manifest,
    report: RestoreReport,
    groups: list[list[ManifestStep]],
    off: list[Trigger],
    *,
    dry_run: bool,
) -> None:
    order = [step for group in groups for step in group]
    restorer = _Restorer(conn, store, manifest, report)
    clock = time.perf_counter()
    with pinned(conn, manifest.settings):  # the COPY text is read as it was written
        for step in order:
            restorer.stage(step)
    report.seconds["staging"] = time.perf_counter() - clock
    clock = time.perf_counter()
    for step in order:
        restorer.conflicts(step)
    report.seconds["checks"] = time.perf_counter() - clock
    clock = time.perf_counter()
    if report.conflicts or dry_run:
        return
    restorer.switch_triggers(off, on=False)
    for group in groups:
        try:
            with restorer.raw.transaction():  # a nested savepoint, so the error is reportable
                written = restorer.apply(group)
        except psycopg.errors.IntegrityError as exc:
            report.conflicts.append(integrity_conflict(group[0], exc))
            return
        for step, rows in zip(group, written, strict=True):
            if rows != step.rows:
                raise BackupCorrupt(
                    f"restoring {step.qualified} wrote {plural(rows, 'row')} instead of {step.rows:,};"
                    " nothing was restored"
                )
            report.seconds[step.qualified] = (time.perf_counter() - clock) / len(group)
        clock = time.perf_counter()
    restorer.switch_triggers(off, on=True)
