"""Scoped backups: exactly the rows a delete removes (and the columns it nulls), and putting them back.

The deletion engine materialises each table's scope as a temporary table of primary keys
inside its write transaction, maps its plan onto `BackupStep`s and calls, before deleting
anything:

    backup.write(conn, steps)

In full, the engine's side is: `snapshot = runtime.backups.snapshot(stage, actor=...)` before
its transaction (None unless the stage has an RDS target; raises SnapshotFailed), then
`backup = runtime.backups.scoped(BackupContext(stage, request_id, requested_by, server_id,
slug, approved_by, snapshot))`, `record = backup.write(conn, steps)` after materialising the
scopes, and once the transaction has ended `runtime.backups.index.mark_delete(record.backup_id,
committed=...)`.

Each table is exported with `COPY (SELECT ... FROM t JOIN scope USING (pk)) TO STDOUT`,
streamed through sha256 and gzip into the store (one file per table), then a
`manifest.json` records the plan order, row counts, checksums and the tables' schema
fingerprint. Anything that goes wrong raises `BackupFailed`; the exception leaves the
delete's transaction, which therefore rolls back: there is no way to delete without a
backup once one is asked for.

`restore` reads the manifest back, refuses if the schema changed, stages every file in a
temporary table (checking its checksum), looks for rows that would collide with what is
there now (a reused slug, a user id that exists again) and, only if there are none,
inserts parents first and sets nulled columns back, all in the caller's transaction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg
from psycopg import sql
from sqlalchemy import Connection, text

from bot.audit import AuditEntry, AuditLog
from bot.backups import catalog
from bot.backups.index import BackupIndex, new_backup_id
from bot.backups.store import BackupStore, BackupStoreError
from bot.errors import UserFacingError
from bot.pii import scrub

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
COMPRESSION_LEVEL = 1  # fast: a backup runs inside the delete's transaction, holding its locks
BUFFER_BYTES = 1024 * 1024
MAX_SAMPLES = 5
KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")

Action = Literal["delete", "set_null", "set_default"]
COLUMN_ACTIONS = ("set_null", "set_default")  # the delete changes columns of rows it keeps


class BackupFailed(UserFacingError):
    """The backup could not be written or verified; the delete that asked for it must not run."""

    outcome = "error"


class BackupMismatch(BackupFailed):
    """The exported rows are not the rows the plan says it deletes."""


class BackupCorrupt(UserFacingError):
    outcome = "error"


class SchemaChanged(UserFacingError):
    outcome = "bad_input"


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
            lines.append(f"• {c.table}: {c.reason} [{c.constraint}], {c.count:,} row(s){example}")
        if len(report.conflicts) > 10:
            lines.append(f"• … and {len(report.conflicts) - 10} more")
        super().__init__("\n".join(lines))
        self.report = report


@dataclass(frozen=True)
class BackupStep:
    """One table of a delete plan, in plan order (children before parents).

    `scope_table` is a temporary table whose columns are exactly `primary_key` (same names);
    for `set_null`/`set_default`, it holds the rows whose `set_null_columns` the delete will null
    (or set to their default).
    `expected_rows` is the count the plan (the approved impact) says; None skips that check.
    """

    schema: str
    table: str
    primary_key: tuple[str, ...]
    scope_table: str
    action: Action = "delete"
    set_null_columns: tuple[str, ...] = ()
    expected_rows: int | None = None

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
    """What `write` produced: enough for the engine's audit line and the delete's message."""

    backup_id: str
    manifest_key: str
    location: str
    row_counts: dict[str, int]
    stored_bytes: int
    manifest: Manifest


def _sanitize(value: str) -> str:
    return KEY_UNSAFE.sub("_", value)[:100] or "_"


def _ident_list(names: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def _qualified(schema: str, table: str) -> sql.Composable:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))


def _driver(conn: Connection) -> psycopg.Connection[Any]:
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection), "stages use the psycopg 3 driver"
    return raw


class _Export:
    """One table's COPY stream -> sha256 and row count of the raw bytes -> gzip chunks for the store."""

    def __init__(self, raw: psycopg.Connection[Any], statement: sql.Composable) -> None:
        self.raw = raw
        self.statement = statement
        self.rows = 0
        self.bytes = 0
        self.digest = hashlib.sha256()
        self._stream: Iterator[bytes] | None = None

    def _take(self, compressor: Any, data: bytes) -> bytes:
        self.digest.update(data)
        self.rows += data.count(b"\n")  # COPY text format escapes newlines in values: one per row
        self.bytes += len(data)
        return compressor.compress(data)

    def __iter__(self) -> Iterator[bytes]:
        self._stream = self._generate()
        return self._stream

    def close(self) -> None:
        """End the COPY now (cancelling it if unfinished), not whenever the generator is collected."""
        if self._stream is not None:
            self._stream.close()  # type: ignore[attr-defined]

    def _generate(self) -> Iterator[bytes]:
        compressor = zlib.compressobj(COMPRESSION_LEVEL, zlib.DEFLATED, 31)  # 31: gzip framing
        buffer = bytearray()
        with self.raw.cursor() as cursor, cursor.copy(self.statement) as copy:
            for data in copy:
                buffer += data
                if len(buffer) >= BUFFER_BYTES:
                    out = self._take(compressor, bytes(buffer))
                    buffer.clear()
                    if out:
                        yield out
        tail = self._take(compressor, bytes(buffer)) + compressor.flush()
        if tail:
            yield tail


def _manifest_from_json(data: dict[str, Any], key: str) -> Manifest:
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
    return _manifest_from_json(data, key)


class ScopedBackup:
    """Writes one scoped backup for one delete request; see the module docstring for the contract."""

    def __init__(
        self,
        store: BackupStore,
        index: BackupIndex,
        context: BackupContext,
        *,
        audit: AuditLog | None = None,
        on_progress: Callable[[str, int], None] | None = None,
    ) -> None:
        self.store = store
        self.index = index
        self.context = context
        self.audit = audit
        self.on_progress = on_progress

    def write(self, conn: Connection, steps: Sequence[BackupStep]) -> BackupRecord:
        """Export every step's rows and the manifest; raise BackupFailed (so the caller rolls back) on any doubt."""
        self._validate(steps)
        ctx = self.context
        backup_id = new_backup_id()
        prefix = f"{_sanitize(ctx.stage)}/scoped/{_sanitize(ctx.request_id)}/{backup_id}/"
        written: list[str] = []
        started = time.perf_counter()
        try:
            self.index.start(
                backup_id=backup_id,
                kind="scoped",
                stage=ctx.stage,
                destination=self.store.description,
                created_by=ctx.requested_by,
                server_id=ctx.server_id,
                slug=ctx.slug,
                request_id=ctx.request_id,
                approved_by=ctx.approved_by,
                snapshot=ctx.snapshot,
            )
        except UserFacingError as exc:
            raise BackupFailed(f"the backup failed, so nothing was deleted: {exc.message}") from exc
        try:
            record = self._write(conn, steps, backup_id, prefix, written)
            self._audit(record, int((time.perf_counter() - started) * 1000))
            self.index.complete(
                backup_id, location=record.manifest_key, size_bytes=record.stored_bytes, row_counts=record.row_counts
            )
        except Exception as exc:
            reason = exc.message if isinstance(exc, UserFacingError) else f"unexpected {type(exc).__name__}"
            log.warning("scoped backup failed", extra={"backup_id": backup_id, "reason": scrub(reason)})
            self._cleanup(written)
            try:
                self.index.fail(backup_id, scrub(reason))
            except UserFacingError:
                log.warning("could not record the failed backup", extra={"backup_id": backup_id})
            if isinstance(exc, BackupFailed):
                raise
            raise BackupFailed(f"the backup failed, so nothing was deleted: {reason}") from exc
        return record

    def _audit(self, record: BackupRecord, duration_ms: int) -> None:
        """Audited before it counts as complete: a backup nobody can trace is not taken (fail closed)."""
        if self.audit is None:
            return
        ctx = self.context
        self.audit.record(
            AuditEntry(
                actor=ctx.requested_by,
                stage=ctx.stage,
                command="backup",
                args=f"scoped {ctx.slug or ctx.server_id or ''} request {ctx.request_id}".strip(),
                outcome="ok",
                duration_ms=duration_ms,
                detail={
                    "backup_id": record.backup_id,
                    "location": record.location,
                    "rows": record.row_counts,
                    "bytes": record.stored_bytes,
                    **({"snapshot": ctx.snapshot} if ctx.snapshot else {}),
                },
            ),
            required=True,
        )

    def _progress_for(self, label: str) -> Callable[[int], None] | None:
        report = self.on_progress
        if report is None:
            return None
        return lambda stored: report(label, stored)

    @staticmethod
    def _validate(steps: Sequence[BackupStep]) -> None:
        if not steps:
            raise BackupFailed("the backup has no tables to export")
        for step in steps:
            if not step.primary_key:
                raise BackupFailed(f"{step.qualified} has no primary key, so its rows cannot be restored exactly")
            if step.action in COLUMN_ACTIONS and not step.set_null_columns:
                raise BackupFailed(f"{step.qualified}: a {step.action} step names no columns")
            if step.action not in ("delete", *COLUMN_ACTIONS):
                raise BackupFailed(f"{step.qualified}: unknown action {step.action!r}")

    def _cleanup(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self.store.delete(key)
            except BackupStoreError:
                log.warning("could not remove a partial backup file", extra={"key": key})

    def _write(
        self, conn: Connection, steps: Sequence[BackupStep], backup_id: str, prefix: str, written: list[str]
    ) -> BackupRecord:
        ctx = self.context
        raw = _driver(conn)
        fingerprint = catalog.schema_fingerprint(conn, [(s.schema, s.table) for s in steps])
        manifest_steps: list[dict[str, Any]] = []
        for order, step in enumerate(steps):
            oid = catalog.table_oid(conn, step.schema, step.table)
            if step.action == "delete":
                cols = catalog.insertable_columns(conn, oid)
            else:
                cols = list(dict.fromkeys([*step.primary_key, *step.set_null_columns]))
            statement = sql.SQL("COPY (SELECT {cols} FROM {table} JOIN {scope} USING ({pk})) TO STDOUT").format(
                cols=_ident_list(cols),
                table=_qualified(step.schema, step.table),
                scope=sql.Identifier(step.scope_table),
                pk=_ident_list(step.primary_key),
            )
            name = f"{order:02d}-{_sanitize(step.schema)}.{_sanitize(step.table)}.{step.action}.copy.gz"
            key = prefix + name
            export = _Export(raw, statement)
            progress = self._progress_for(step.qualified)
            written.append(key)
            try:
                stored = self.store.upload(key, export, content_type="application/gzip", on_progress=progress)
            except psycopg.Error as exc:
                raise BackupFailed(
                    f"the backup failed, so nothing was deleted: exporting {step.qualified} failed"
                    f" ({exc.sqlstate or type(exc).__name__})"
                ) from exc
            finally:
                export.close()
            scope_rows = conn.execute(
                text("SELECT count(*) FROM " + conn.dialect.identifier_preparer.quote(step.scope_table))
            ).scalar_one()
            if export.rows != scope_rows or (step.expected_rows is not None and export.rows != step.expected_rows):
                expected = step.expected_rows if step.expected_rows is not None else scope_rows
                raise BackupMismatch(
                    f"the backup does not match the plan, so nothing was deleted: {step.qualified} exported"
                    f" {export.rows:,} rows, the plan says {expected:,} (scope holds {scope_rows:,})"
                )
            size = self.store.size(key)
            if size != stored.size:
                raise BackupFailed(
                    f"the backup failed, so nothing was deleted: {step.qualified} was stored incompletely"
                    f" ({size} of {stored.size} bytes)"
                )
            manifest_steps.append(
                {
                    "order": order,
                    "schema": step.schema,
                    "table": step.table,
                    "primary_key": list(step.primary_key),
                    "action": step.action,
                    "set_null_columns": list(step.set_null_columns),
                    "columns": cols,
                    "file": name,
                    "rows": export.rows,
                    "sha256": export.digest.hexdigest(),
                    "bytes": export.bytes,
                    "stored_bytes": stored.size,
                }
            )
        database = conn.execute(
            text("SELECT current_database(), current_setting('server_version'), pg_current_xact_id()::text")
        ).one()
        document = {
            "version": MANIFEST_VERSION,
            "kind": "scoped",
            "backup_id": backup_id,
            "stage": ctx.stage,
            "server": {"id": ctx.server_id, "slug": ctx.slug},
            "request_id": ctx.request_id,
            "requested_by": ctx.requested_by,
            "approved_by": list(ctx.approved_by),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "database": {"name": database[0], "server_version": database[1], "transaction": database[2]},
            "format": {"data": "PostgreSQL COPY text format, gzip", "checksum": "sha256 of the uncompressed data"},
            "plan_order": [s["schema"] + "." + s["table"] for s in manifest_steps],
            "steps": manifest_steps,
            "schema_fingerprint": fingerprint,
            "snapshot": ctx.snapshot,
        }
        body = json.dumps(document, indent=2, sort_keys=False).encode()
        manifest_key = prefix + MANIFEST_NAME
        written.append(manifest_key)
        self.store.put_bytes(manifest_key, body, content_type="application/json")
        if self.store.read_bytes(manifest_key) != body:
            raise BackupFailed("the backup failed, so nothing was deleted: the manifest did not read back intact")
        manifest = _manifest_from_json(document, manifest_key)
        return BackupRecord(
            backup_id=backup_id,
            manifest_key=manifest_key,
            location=self.store.location(manifest_key),
            row_counts=manifest.row_counts,
            stored_bytes=sum(s["stored_bytes"] for s in manifest_steps) + len(body),
            manifest=manifest,
        )


# -- restore ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conflict:
    table: str
    constraint: str
    reason: str
    count: int
    samples: tuple[str, ...] = ()


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

    @property
    def total_rows(self) -> int:
        return sum(rows for _t, _a, rows in self.tables)


def restore_order(manifest: Manifest) -> list[ManifestStep]:
    """Parents first: deletes in reverse plan order, then the nulled columns (their parents exist again)."""
    deletes = [s for s in reversed(manifest.steps) if s.action == "delete"]
    nulls = [s for s in reversed(manifest.steps) if s.action in COLUMN_ACTIONS]
    return deletes + nulls


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


def _sample(values: Sequence[Any]) -> str:
    return scrub(", ".join("NULL" if v is None else str(v) for v in values))[:120]


class _Restorer:
    def __init__(self, conn: Connection, store: BackupStore, manifest: Manifest, report: RestoreReport) -> None:
        self.conn = conn
        self.raw = _driver(conn)
        self.store = store
        self.manifest = manifest
        self.report = report
        self.staged: dict[int, str] = {}

    def stage(self, step: ManifestStep) -> None:
        name = f"mcpops_restore_{self.manifest.backup_id}_{step.order}"
        table = _qualified(step.schema, step.table)
        self.raw.execute(
            sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
                sql.Identifier(name), _ident_list(step.columns), table
            )
        )
        digest = hashlib.sha256()
        rows = 0
        decompressor = zlib.decompressobj(31)
        key = self.manifest.file_key(step)
        with (
            self.raw.cursor() as cursor,
            cursor.copy(
                sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(name), _ident_list(step.columns))
            ) as copy,
        ):
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
        staged = sql.Identifier(self.staged[step.order])
        table = _qualified(step.schema, step.table)
        if step.action in COLUMN_ACTIONS:
            self._set_null_conflicts(step, staged, table)
            return
        oid = catalog.table_oid(self.conn, step.schema, step.table)
        keys, special = catalog.unique_keys(self.conn, oid)
        self.report.unchecked += [f"{step.qualified}.{name}" for name in special]
        for key in keys:
            match = sql.SQL(" AND ").join(
                sql.SQL("t.{c} IS NOT DISTINCT FROM s.{c}" if key.nulls_not_distinct else "t.{c} = s.{c}").format(
                    c=sql.Identifier(c)
                )
                for c in key.columns
            )
            rows = self.raw.execute(
                sql.SQL("SELECT count(*) OVER (), {cols} FROM {staged} s JOIN {table} t ON {match} LIMIT {n}").format(
                    cols=sql.SQL(", ").join(sql.SQL("s.{}::text").format(sql.Identifier(c)) for c in key.columns),
                    staged=staged,
                    table=table,
                    match=match,
                    n=sql.Literal(MAX_SAMPLES),
                )
            ).fetchall()
            if rows:
                what = "primary key" if key.primary else "unique key"
                self.report.conflicts.append(
                    Conflict(
                        table=step.qualified,
                        constraint=key.name,
                        reason=f"{what} ({', '.join(key.columns)}) exists again",
                        count=int(rows[0][0]),
                        samples=tuple(_sample(r[1:]) for r in rows),
                    )
                )

    def _set_null_conflicts(self, step: ManifestStep, staged: sql.Composable, table: sql.Composable) -> None:
        join = sql.SQL(" AND ").join(sql.SQL("t.{c} = s.{c}").format(c=sql.Identifier(c)) for c in step.primary_key)
        pk = sql.SQL(", ").join(sql.SQL("s.{}::text").format(sql.Identifier(c)) for c in step.primary_key)
        missing = self.raw.execute(
            sql.SQL(
                "SELECT count(*) OVER (), {pk} FROM {staged} s WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE {join})"
                " LIMIT {n}"
            ).format(pk=pk, staged=staged, table=table, join=join, n=sql.Literal(MAX_SAMPLES))
        ).fetchall()
        if missing:
            self.report.conflicts.append(
                Conflict(
                    step.qualified,
                    "-",
                    "rows to un-null no longer exist",
                    int(missing[0][0]),
                    tuple(_sample(r[1:]) for r in missing),
                )
            )
        if step.action == "set_default":
            # What the default evaluated to is not recorded, so a value set again since can't be told apart.
            self.report.unchecked.append(f"{step.qualified}({', '.join(step.set_null_columns)}) changed since")
            return
        changed_cond = sql.SQL(" OR ").join(
            sql.SQL("t.{} IS NOT NULL").format(sql.Identifier(c)) for c in step.set_null_columns
        )
        changed = self.raw.execute(
            sql.SQL(
                "SELECT count(*) OVER (), {pk} FROM {staged} s JOIN {table} t ON {join} WHERE {cond} LIMIT {n}"
            ).format(pk=pk, staged=staged, table=table, join=join, cond=changed_cond, n=sql.Literal(MAX_SAMPLES))
        ).fetchall()
        if changed:
            self.report.conflicts.append(
                Conflict(
                    step.qualified,
                    ", ".join(step.set_null_columns),
                    "the nulled column was set again since",
                    int(changed[0][0]),
                    tuple(_sample(r[1:]) for r in changed),
                )
            )

    def apply(self, step: ManifestStep) -> int:
        staged = sql.Identifier(self.staged[step.order])
        table = _qualified(step.schema, step.table)
        if step.action == "delete":
            statement = sql.SQL(
                "INSERT INTO {table} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM {staged}"
            ).format(table=table, cols=_ident_list(step.columns), staged=staged)
        else:
            statement = sql.SQL("UPDATE {table} t SET {assign} FROM {staged} s WHERE {join}").format(
                table=table,
                assign=sql.SQL(", ").join(
                    sql.SQL("{c} = s.{c}").format(c=sql.Identifier(c)) for c in step.set_null_columns
                ),
                staged=staged,
                join=sql.SQL(" AND ").join(
                    sql.SQL("t.{c} = s.{c}").format(c=sql.Identifier(c)) for c in step.primary_key
                ),
            )
        with self.raw.cursor() as cursor:
            cursor.execute(statement)
            return cursor.rowcount


def _integrity_conflict(step: ManifestStep, exc: psycopg.errors.IntegrityError) -> Conflict:
    diag = exc.diag
    if isinstance(exc, psycopg.errors.ForeignKeyViolation):
        reason = "a restored row references a row that no longer exists"
    elif isinstance(exc, psycopg.errors.UniqueViolation):
        reason = "a unique value exists again"
    else:
        reason = "a constraint rejects a restored row"
    detail = scrub(diag.message_detail or "")[:200]
    return Conflict(step.qualified, diag.constraint_name or "-", reason, 1, (detail,) if detail else ())


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
    report = RestoreReport(
        backup_id=manifest.backup_id,
        request_id=manifest.request_id,
        stage=stage,
        slug=manifest.slug,
        dry_run=dry_run,
        tables=[(s.qualified, s.action, s.rows) for s in restore_order(manifest)],
    )
    order = restore_order(manifest)
    savepoint = conn.begin_nested()
    try:
        restorer = _Restorer(conn, store, manifest, report)
        clock = time.perf_counter()
        for step in order:
            restorer.stage(step)
        report.seconds["staging"] = time.perf_counter() - clock
        clock = time.perf_counter()
        for step in order:
            restorer.conflicts(step)
        report.seconds["checks"] = time.perf_counter() - clock
        clock = time.perf_counter()
        if not report.conflicts and not dry_run:
            for step in order:
                try:
                    with restorer.raw.transaction():  # a nested savepoint, so the error is reportable
                        written = restorer.apply(step)
                except psycopg.errors.IntegrityError as exc:
                    report.conflicts.append(_integrity_conflict(step, exc))
                    break
                if written != step.rows:
                    raise BackupCorrupt(
                        f"restoring {step.qualified} wrote {written:,} rows instead of {step.rows:,};"
                        " nothing was restored"
                    )
                report.seconds[step.qualified] = time.perf_counter() - clock
                clock = time.perf_counter()
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
