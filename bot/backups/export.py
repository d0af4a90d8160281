"""Writing a scoped backup inside the delete's own transaction: exactly the rows the plan will change.

The deletion engine materialises each table's scope as a temporary table of primary keys, maps
its plan onto `BackupStep`s (bot/backups/delete_hook.py) and calls, before deleting anything:

    backup.write(conn, steps)

In full, the engine's side is: `snapshot = runtime.backups.snapshot(stage, actor=...)` before
its transaction (None unless the stage has an RDS target; raises SnapshotFailed), then
`backup = runtime.backups.scoped(BackupContext(stage, request_id, requested_by, server_id,
slug, approved_by, snapshot))`, `record = backup.write(conn, steps)` after materialising the
scopes, and once the transaction has ended `runtime.backups.index.mark_delete(record.backup_id,
committed=...)`.

Each table is exported with `COPY (SELECT ... FROM [ONLY] t JOIN scope USING (pk)) TO STDOUT`
under pinned settings (DateStyle, IntervalStyle, extra_float_digits, ... as pg_dump pins them),
streamed through sha256 and gzip into the store (one file per table), then a `manifest.json`
(bot/backups/manifest.py). The exported row counts are verified against the scope and the plan.
Anything that goes wrong raises `BackupFailed`; the exception leaves the delete's transaction,
which therefore rolls back: there is no way to delete without a backup once one is asked for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Connection, text

from bot.audit import AuditEntry, AuditLog
from bot.backups import catalog
from bot.backups.index import BackupIndex, new_backup_id
from bot.backups.manifest import (
    COLUMN_ACTIONS,
    COMPRESSION_LEVEL,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    BackupContext,
    BackupRecord,
    BackupStep,
    copy_settings,
    driver,
    ident_list,
    manifest_from_json,
    pinned,
    qualified,
    sanitize,
)
from bot.backups.store import BackupStore, BackupStoreError
from bot.deletion import dberrors
from bot.errors import UserFacingError
from bot.pii import scrub
from bot.slacktext.words import plural

log = logging.getLogger(__name__)

BUFFER_BYTES = 1024 * 1024


class BackupFailed(UserFacingError):
    """The backup could not be written or verified; the delete that asked for it must not run."""

    outcome = "error"


class BackupMismatch(BackupFailed):
    """The exported rows are not the rows the plan says it deletes."""


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

    def write(self, conn: Connection, steps: Sequence[BackupStep], *, triggers: Sequence[str] = ()) -> BackupRecord:
        """Export every step's rows and the manifest; raise BackupFailed (so the caller rolls back) on any doubt.

        `triggers`: the user triggers that fire during the delete, recorded in the manifest (a restore says
        their effects are not in the backup).
        """
        self._validate(steps)
        ctx = self.context
        backup_id = new_backup_id()
        prefix = f"{sanitize(ctx.stage)}/scoped/{sanitize(ctx.request_id)}/{backup_id}/"
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
            record = self._write(conn, steps, backup_id, prefix, written, triggers)
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
        self,
        conn: Connection,
        steps: Sequence[BackupStep],
        backup_id: str,
        prefix: str,
        written: list[str],
        triggers: Sequence[str],
    ) -> BackupRecord:
        raw = driver(conn)
        fingerprint = catalog.schema_fingerprint(conn, [(s.schema, s.table) for s in steps])
        settings = copy_settings(conn)
        manifest_steps: list[dict[str, Any]] = []
        with pinned(conn, settings):
            for order, step in enumerate(steps):
                manifest_steps.append(self._export(conn, raw, order, step, prefix, written))
        return self._manifest(conn, backup_id, prefix, written, fingerprint, settings, manifest_steps, triggers)

    def _export(
        self,
        conn: Connection,
        raw: psycopg.Connection[Any],
        order: int,
        step: BackupStep,
        prefix: str,
        written: list[str],
    ) -> dict[str, Any]:
        """One table's file: COPY under the pinned settings, streamed, counted, checked, stored."""
        oid = catalog.table_oid(conn, step.schema, step.table)
        if step.action == "delete":
            cols = catalog.insertable_columns(conn, oid)
        else:
            cols = list(dict.fromkeys([*step.primary_key, *step.set_null_columns]))
        statement = sql.SQL("COPY (SELECT {cols} FROM {table} JOIN {scope} USING ({pk})) TO STDOUT").format(
            cols=ident_list(cols),
            table=qualified(step.schema, step.table, only=step.only),
            scope=sql.Identifier(step.scope_table),
            pk=ident_list(step.primary_key),
        )
        name = f"{order:02d}-{sanitize(step.schema)}.{sanitize(step.table)}.{step.action}.copy.gz"
        key = prefix + name
        export = _Export(raw, statement)
        progress = self._progress_for(step.qualified)
        written.append(key)
        try:
            stored = self.store.upload(key, export, content_type="application/gzip", on_progress=progress)
        except psycopg.Error as exc:
            raise BackupFailed(
                f"the backup failed, so nothing was deleted: exporting {step.qualified} failed:"
                f" {dberrors.describe(exc)}"
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
                f" {plural(export.rows, 'row')}, the plan says {expected:,} (scope holds {scope_rows:,})"
            )
        size = self.store.size(key)
        if size != stored.size:
            raise BackupFailed(
                f"the backup failed, so nothing was deleted: {step.qualified} was stored incompletely"
                f" ({size} of {stored.size} bytes)"
            )
        return {
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
            "only": step.only,
        }

    def _manifest(
        self,
        conn: Connection,
        backup_id: str,
        prefix: str,
        written: list[str],
        fingerprint: dict[str, Any],
        settings: dict[str, str],
        manifest_steps: list[dict[str, Any]],
        triggers: Sequence[str],
    ) -> BackupRecord:
        """The manifest, stored and read back intact."""
        ctx = self.context
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
            "format": {
                "data": "PostgreSQL COPY text format, gzip",
                "checksum": "sha256 of the uncompressed data",
                "settings": settings,
            },
            "triggers_on_delete": list(triggers),
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
        manifest = manifest_from_json(document, manifest_key)
        return BackupRecord(
            backup_id=backup_id,
            manifest_key=manifest_key,
            location=self.store.location(manifest_key),
            row_counts=manifest.row_counts,
            stored_bytes=sum(s["stored_bytes"] for s in manifest_steps) + len(body),
            manifest=manifest,
        )


# -- restore ------------------------------------------------------------------------------
