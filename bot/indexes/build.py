"""`CREATE INDEX CONCURRENTLY` and `DROP INDEX CONCURRENTLY`, outside any transaction (PostgreSQL forbids
one), each on a session of its own with `lock_timeout` and `statement_timeout`.

A concurrent build commits the index's catalog entry first and fills it afterwards, so a build that
fails or is cancelled half way leaves an INVALID index behind: maintained on every write, never
used. After a failure the bot looks for the index it named and drops it (`DROP INDEX CONCURRENTLY`,
retried for a while if a transaction still holds the table), and says which happened. While a build
runs, `pg_stat_progress_create_index` (phase, blocks done/total) is read every second for progress.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError

from bot.errors import UserFacingError
from bot.indexes.catalog import IndexNow, index_now
from bot.pii import scrub
from bot.stages import Stage

PROGRESS_INTERVAL_S = 1.0
CLEANUP_WAIT_S = 30.0
LOCK_NOT_AVAILABLE = "55P03"
QUERY_CANCELED = "57014"
# Identifiers in statements sent without parameters: quoted as PostgreSQL reads them (no `%` doubling).
_QUOTE = postgresql.dialect(paramstyle="named").identifier_preparer.quote

_PROGRESS = text(
    "SELECT phase, blocks_done, blocks_total, tuples_done, tuples_total"
    " FROM pg_stat_progress_create_index WHERE pid = :pid"
)


@dataclass(frozen=True)
class BuildProgress:
    phase: str
    blocks_done: int
    blocks_total: int
    tuples_done: int
    tuples_total: int
    elapsed_s: float


@dataclass(frozen=True)
class Built:
    name: str
    definition: str
    bytes: int
    seconds: float


class BuildFailed(UserFacingError):
    outcome = "failed"


def create_statement(schema: str, table: str, columns: Sequence[str], name: str) -> str:
    """The statement as shown and run, every identifier quoted by SQLAlchemy's PostgreSQL preparer where
    PostgreSQL needs it (`%`, `:`, spaces and capitals are plain characters in it: it is sent without parameters)."""
    return (
        f"CREATE INDEX CONCURRENTLY {_QUOTE(name)} ON {_qualified(schema, table)} ({', '.join(map(_QUOTE, columns))})"
    )


def drop_statement(schema: str, name: str) -> str:
    return f"DROP INDEX CONCURRENTLY IF EXISTS {_qualified(schema, name)}"


def _qualified(schema: str, name: str) -> str:
    return f"{_QUOTE(schema)}.{_QUOTE(name)}"


def _run(conn: Connection, statement: str) -> None:
    """Sent as it is: no parameters, so nothing in it is read as a placeholder."""
    conn.execution_options(no_parameters=True).exec_driver_sql(statement)


def describe(exc: DBAPIError) -> str:
    """What went wrong, in words: the lock it waited for, a cancel, or the database's own message."""
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate == LOCK_NOT_AVAILABLE:
        return "a lock could not be taken within lock_timeout (a transaction that uses the table is still open)"
    if sqlstate == QUERY_CANCELED:
        return "it was cancelled (its statement_timeout, or someone cancelled it)"
    diag = getattr(orig, "diag", None)
    message = getattr(diag, "message_primary", None) or type(orig).__name__
    return f"the database said: {scrub(str(message))[:200]}"


class _Poller:
    """Reads the build's progress every PROGRESS_INTERVAL_S on another connection, until stopped."""

    def __init__(self, stage: Stage, report: Callable[[BuildProgress], None], started: float) -> None:
        self.stage = stage
        self.report = report
        self.started = started
        self.pid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="index-progress", daemon=True)

    def start(self, pid: int) -> None:
        self.pid = pid
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(PROGRESS_INTERVAL_S):
            try:
                with self.stage.read() as conn:
                    row = conn.execute(_PROGRESS, {"pid": self.pid}).first()
            except UserFacingError:
                continue  # progress is best effort
            if row is not None:
                self.report(
                    BuildProgress(
                        phase=row.phase,
                        blocks_done=int(row.blocks_done or 0),
                        blocks_total=int(row.blocks_total or 0),
                        tuples_done=int(row.tuples_done or 0),
                        tuples_total=int(row.tuples_total or 0),
                        elapsed_s=time.monotonic() - self.started,
                    )
                )


def build(
    stage: Stage,
    schema: str,
    table: str,
    columns: Sequence[str],
    name: str,
    *,
    lock_timeout_ms: int,
    statement_timeout_ms: int,
    work_name: str | None,
    progress: Callable[[BuildProgress], None],
) -> Built:
    """Build the index, or raise BuildFailed saying why and what became of the INVALID index it left."""
    started = time.monotonic()
    poller = _Poller(stage, progress, started)
    failure: str | None = None
    try:
        with stage.autocommit(
            statement_timeout_ms=statement_timeout_ms, lock_timeout_ms=lock_timeout_ms, application_name=work_name
        ) as conn:
            poller.start(int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one()))
            try:
                _run(conn, create_statement(schema, table, columns, name))
            except DBAPIError as exc:
                failure = describe(exc)
    except UserFacingError as exc:  # the stage went away: the session, and the build with it, ended
        failure = exc.message
    finally:
        poller.stop()
    if failure is not None:
        raise BuildFailed(f"the build of `{name}` failed: {failure}; {_cleaned(stage, schema, name, lock_timeout_ms)}")
    with stage.read() as conn:
        made = index_now(conn, schema, name)
    if made is None or not made.valid:
        cleaned = _cleaned(stage, schema, name, lock_timeout_ms)
        raise BuildFailed(f"the build of `{name}` ended but the index is not valid; {cleaned}")
    return Built(name=name, definition=made.definition, bytes=made.bytes, seconds=time.monotonic() - started)


def _cleaned(stage: Stage, schema: str, name: str, lock_timeout_ms: int) -> str:
    """`drop_leftover` after a failed build, in words even when the stage can't be reached to look."""
    try:
        return drop_leftover(stage, schema, name, lock_timeout_ms)
    except UserFacingError as exc:
        return (
            f"whether it left an INVALID index `{name}` could not be checked ({exc.message}): "
            "`/mcp indexes` lists one with Drop index"
        )


def drop_leftover(stage: Stage, schema: str, name: str, lock_timeout_ms: int, wait_s: float = CLEANUP_WAIT_S) -> str:
    """Drop the INVALID index a failed build of `name` left; what happened, in words."""
    deadline = time.monotonic() + wait_s
    while True:
        with stage.read() as conn:
            left = index_now(conn, schema, name)
        if left is None:
            return "no index was left behind"
        if left.valid:
            return f"the index `{name}` is there and valid after all"
        if not left.building:
            try:
                drop(stage, schema, name, lock_timeout_ms=lock_timeout_ms, statement_timeout_ms=lock_timeout_ms * 10)
                return f"it left an INVALID index `{name}`, which was dropped (DROP INDEX CONCURRENTLY)"
            except BuildFailed:
                pass  # a transaction still holds the table: try again in a moment
        if time.monotonic() >= deadline:
            return (
                f"it left an INVALID index `{name}` that could not be dropped yet (a transaction still uses the "
                "table): `/mcp indexes` lists it with Drop index"
            )
        time.sleep(1.0)


def drop(stage: Stage, schema: str, name: str, *, lock_timeout_ms: int, statement_timeout_ms: int) -> IndexNow | None:
    """`DROP INDEX CONCURRENTLY`; raises BuildFailed with the reason. Returns what is there afterwards."""
    try:
        with stage.autocommit(statement_timeout_ms=statement_timeout_ms, lock_timeout_ms=lock_timeout_ms) as conn:
            try:
                _run(conn, drop_statement(schema, name))
            except DBAPIError as exc:
                raise BuildFailed(f"the drop of `{name}` failed: {describe(exc)}") from None
    except UserFacingError as exc:
        if isinstance(exc, BuildFailed):
            raise
        raise BuildFailed(f"the drop of `{name}` failed: {exc.message}") from None
    with stage.read() as conn:
        return index_now(conn, schema, name)
