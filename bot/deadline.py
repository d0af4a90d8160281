"""Client-side deadlines on stage connections: a statement nobody answers is cut off.

A live server answers every statement within its `statement_timeout` (it cancels the
statement then), so a statement still unanswered after that plus a grace period
(STAGE_CONNECT_TIMEOUT) means a frozen server or a network path that dropped silently.
Nothing else ends that wait: the server's own timeout cannot fire, and TCP keepalives are
answered by the kernel of a host whose database process is stuck. A watchdog shuts the
connection's socket down, the blocked read fails at once, and the caller sees a lost
connection (`Stage` words it "stage X is unreachable").

How it is wired (`install`, on every stage engine):

* A `Deadline` is entered around one transaction (`Stage.read`/`Stage.write`, a health
  round) and made current through a context variable; `engine_connect` binds it to the
  connection opened inside it, and it keeps a duplicate of that connection's socket.
* Each wait on the server is armed: `before_cursor_execute` (every statement, savepoints
  included), `commit` and `rollback`. `after_cursor_execute` and `handle_error` disarm it, so
  time spent between statements (streaming a backup, posting progress) never counts. Events
  only arm the deadline bound to their own connection, so nested transactions, or worker
  threads that copied the context, never cut the wrong socket.
* The allowance follows the session: a statement that mentions `statement_timeout` (a
  `set_config`, a `SET LOCAL`) is followed by reading the setting back, and a commit or
  rollback returns it to the session default, so a long delete's budget (or the deletion
  engine's verification after its commit) is never cut short.
* One daemon thread watches every active deadline, sleeping until the earliest is due.

Statements sent through the raw driver connection (the backups' `COPY` streams) bypass the
events and are not watched; TCP keepalives and `tcp_user_timeout` still end them when the
network path dies.

Pre-ping: `pool_pre_ping` waits on the socket like any statement, so a pooled connection to a
frozen server would hang there before the command's transaction even starts. `install(...,
ping_s=...)` replaces it with a `checkout` listener that runs the same `SELECT 1` (the
dialect's `do_ping`) under a deadline of `ping_s` (STAGE_CONNECT_TIMEOUT) and raises
`InvalidatePoolError` on any failure, exactly what `pool_pre_ping` does on a lost connection:
the pool drops every connection older than now and opens a new one, bounded by libpq's
`connect_timeout`. A command on a stage that froze between commands is therefore answered
within about twice STAGE_CONNECT_TIMEOUT. Connections the pool has just opened are not pinged
(as with `pool_pre_ping`).
"""

from __future__ import annotations

import contextvars
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

TIMEOUT_SETTING = "statement_timeout"
READ_BACK = "SELECT setting FROM pg_settings WHERE name = 'statement_timeout'"  # milliseconds
_FRESH = "mcp_ops_fresh"  # pool record info: opened by this checkout, nothing to ping

_current: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("stage_deadline", default=None)


def current() -> Deadline | None:
    """The deadline entered around the work running now, if any."""
    return _current.get()


class _Watcher:
    """One thread for every active deadline: it sleeps until the earliest is due."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self._active: set[Deadline] = set()
        self._thread: threading.Thread | None = None
        self._wake_at: float | None = None  # when the thread looks next; None: only when told

    def add(self, limit: Deadline) -> None:
        with self.cond:
            self._active.add(limit)
            if self._thread is None or not self._thread.is_alive():  # first use, or a forked process
                self._thread = threading.Thread(target=self._run, name="stage-deadlines", daemon=True)
                self._thread.start()

    def remove(self, limit: Deadline) -> None:
        with self.cond:
            self._active.discard(limit)
            limit._release()

    def due(self, at: float) -> None:
        """A deadline was armed (caller holds `cond`): wake the thread if it would sleep past it."""
        if self._wake_at is None or at < self._wake_at:
            self.cond.notify()

    def _run(self) -> None:
        with self.cond:
            while True:
                now = time.monotonic()
                wake: float | None = None
                for limit in list(self._active):
                    at = limit._due
                    if at is None or limit._sock is None:
                        continue  # disarmed, or still connecting: the driver's connect_timeout ends that
                    if at <= now:
                        limit._fire()
                    else:
                        wake = at if wake is None else min(wake, at)
                self._wake_at = wake
                self.cond.wait(None if wake is None else wake - now)


_watcher = _Watcher()


class Deadline:
    """Every wait on the server must end within the session's `statement_timeout` plus `grace_s`.

    `statement_timeout_s` is the allowance until a statement says otherwise (None or 0: none),
    `session_timeout_s` what the session returns to after a commit or rollback (None: unchanged).
    `expired` tells afterwards that the socket was shut down; `waited_s` how long that wait was.
    """

    def __init__(
        self, *, statement_timeout_s: float | None, grace_s: float, session_timeout_s: float | None = None
    ) -> None:
        self.statement_timeout_s = statement_timeout_s
        self.grace_s = grace_s
        self.session_timeout_s = session_timeout_s
        self.expired = False
        self.waited_s: float | None = None
        self._conn: Connection | None = None
        self._dbapi: Any = None
        self._sock: socket.socket | None = None
        self._due: float | None = None
        self._armed_for: float | None = None
        self._parent: Deadline | None = None
        self._thread: int | None = None  # the thread that entered it, while it is entered
        self._token: contextvars.Token[Deadline | None] | None = None

    # -- scope ---------------------------------------------------------------------------------

    def __enter__(self) -> Deadline:
        self._parent = _current.get()
        self._thread = threading.get_ident()
        self._token = _current.set(self)
        _watcher.add(self)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _watcher.remove(self)
        self._thread = None
        if self._token is not None:
            _current.reset(self._token)
            self._token = None

    @contextmanager
    def _watched(self) -> Iterator[Deadline]:
        """Watched but not current: for a wait outside any transaction (the checkout ping)."""
        _watcher.add(self)
        try:
            yield self
        finally:
            _watcher.remove(self)

    @property
    def attached(self) -> bool:
        """Bound to a connection already (a transaction on another connection needs its own)."""
        return self._conn is not None

    @property
    def awaiting_connection(self) -> bool:
        """Entered on this thread and not yet bound: the next connection opened here is its own.

        (A worker thread that copied the context sees the deadline too, but never takes it.)
        """
        return self._thread == threading.get_ident() and self._conn is None

    @property
    def budget_s(self) -> float | None:
        """How long the next wait may take, or None when the session has no statement_timeout."""
        if not self.statement_timeout_s:
            return None
        return self.statement_timeout_s + self.grace_s

    # -- the connection --------------------------------------------------------------------------

    def attach(self, conn: Connection) -> None:
        """`conn` was opened inside this deadline: watch its socket."""
        self._conn = conn
        self._watch_socket(conn.connection.dbapi_connection)

    def _watch_socket(self, dbapi_connection: Any) -> None:
        fileno = getattr(dbapi_connection, "fileno", None)  # psycopg: the libpq socket
        if fileno is None:
            return
        duplicate = socket.socket(fileno=os.dup(fileno()))
        with _watcher.cond:
            if self._sock is not None:
                self._sock.close()
            self._sock = duplicate
            self._dbapi = dbapi_connection
            if self._due is not None:
                _watcher.due(self._due)

    def _release(self) -> None:
        """Close our duplicate (caller holds the watcher's lock); the driver keeps its own."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._conn = None
        self._dbapi = None
        self._due = None

    def _fire(self) -> None:
        """Due and unanswered (caller holds the watcher's lock): fail the blocked read."""
        self.expired = True
        self.waited_s = self._armed_for
        self._due = None
        if self._sock is not None:
            with suppress(OSError):  # already closed by the peer
                self._sock.shutdown(socket.SHUT_RDWR)

    # -- arming --------------------------------------------------------------------------------

    def arm(self, seconds: float | None = None) -> None:
        """A wait on the server begins: it has `seconds` (default `budget_s`) to end."""
        allowance = self.budget_s if seconds is None else seconds
        with _watcher.cond:
            self._armed_for = allowance
            if allowance is None:
                self._due = None
                return
            self._due = time.monotonic() + allowance
            _watcher.due(self._due)

    def disarm(self) -> None:
        """The server answered: nothing is awaited until the next statement."""
        with _watcher.cond:
            self._due = None

    def _session_reset(self) -> None:
        """A commit or rollback: transaction-local settings return to the session's."""
        if self.session_timeout_s is not None:
            self.statement_timeout_s = self.session_timeout_s

    def _read_back(self) -> None:
        """The statement changed `statement_timeout`, maybe: follow what the server now uses."""
        with self._dbapi.cursor() as cursor:
            cursor.execute(READ_BACK)
            row = cursor.fetchone()
        if row is not None:
            self.statement_timeout_s = int(row[0]) / 1000


def _for(conn: Connection | None) -> Deadline | None:
    """The deadline bound to `conn`: the current one or one it is nested in."""
    if conn is None:
        return None
    limit = _current.get()
    while limit is not None:
        if limit._conn is conn:
            return limit
        limit = limit._parent
    return None


def _mentions_timeout(statement: str, parameters: Any) -> bool:
    if TIMEOUT_SETTING in statement:
        return True
    if isinstance(parameters, Mapping):
        return any(value == TIMEOUT_SETTING for value in parameters.values())
    if isinstance(parameters, tuple | list):
        return any(value == TIMEOUT_SETTING for value in parameters)
    return False


# -- engine events ----------------------------------------------------------------------------------


def _on_engine_connect(conn: Connection) -> None:
    limit = _current.get()
    if limit is not None and limit.awaiting_connection:
        limit.attach(conn)


def _on_before_execute(conn: Connection, cursor: Any, *_: Any) -> None:
    limit = _for(conn)
    if limit is not None:
        dbapi_connection = getattr(cursor, "connection", None)
        if dbapi_connection is not None and dbapi_connection is not limit._dbapi:
            limit._watch_socket(dbapi_connection)  # the Connection reconnected since
        limit.arm()


def _on_after_execute(conn: Connection, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
    limit = _for(conn)
    if limit is not None:
        if _mentions_timeout(statement, parameters):
            limit._read_back()  # still armed: one more short wait on the same server
        limit.disarm()


def _on_error(context: ExceptionContext) -> None:
    limit = _for(context.connection)
    if limit is not None:
        limit.disarm()


def _on_transaction_end(conn: Connection) -> None:
    limit = _for(conn)
    if limit is not None:
        limit.arm()
        limit._session_reset()


def _on_pool_connect(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info[_FRESH] = True


def _pinger(engine: Engine, seconds: float) -> Callable[[Any, ConnectionPoolEntry, PoolProxiedConnection], None]:
    dialect = engine.dialect

    def ping(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection) -> None:
        if record.info.pop(_FRESH, False):
            return
        limit = Deadline(statement_timeout_s=seconds, grace_s=0.0)
        with limit._watched():
            limit._watch_socket(dbapi_connection)
            limit.arm()
            try:
                dialect.do_ping(dbapi_connection)
            except dialect.loaded_dbapi.Error as exc:
                # What pool_pre_ping does on a lost connection: drop the pool's older connections, reconnect.
                raise InvalidatePoolError(f"pre-ping failed ({'no answer' if limit.expired else 'error'})") from exc

    return ping


_install_lock = threading.Lock()


def install(engine: Engine, *, ping_s: float | None = None) -> None:
    """Let deadlines cut off waits on `engine`'s connections (idempotent, safe from several threads).

    `ping_s`: check each pooled connection on checkout with `SELECT 1` answered within that many
    seconds (instead of `pool_pre_ping`, which could wait forever); only on the first call.
    """
    with _install_lock:
        if event.contains(engine, "engine_connect", _on_engine_connect):
            return
        event.listen(engine, "engine_connect", _on_engine_connect)
        event.listen(engine, "before_cursor_execute", _on_before_execute)
        event.listen(engine, "after_cursor_execute", _on_after_execute)
        event.listen(engine, "handle_error", _on_error)
        event.listen(engine, "commit", _on_transaction_end)
        event.listen(engine, "rollback", _on_transaction_end)
        if ping_s is not None:
            event.listen(engine, "connect", _on_pool_connect)
            event.listen(engine, "checkout", _pinger(engine, ping_s))
