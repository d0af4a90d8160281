"""Stage databases: one engine each, explicit transactions, errors worded for people.

Every connection carries `application_name`, `connect_timeout`, TCP keepalives with
`tcp_user_timeout` (a peer that vanished is noticed within about STAGE_CONNECT_TIMEOUT) and
session defaults for `statement_timeout`/`lock_timeout`; every transaction states whether it
may write.

Every transaction (`read`, `write` with its `after_commit`, hence `ping` and `is_running`) runs
under a client-side deadline (bot/deadline.py): a statement, commit or rollback left unanswered
for the session's statement_timeout plus STAGE_CONNECT_TIMEOUT has its socket shut down, and the
command gets "stage X is unreachable" instead of hanging on a frozen server or a dead network
path. The command engine has no `pool_pre_ping`, which waits on the socket with no limit: a
`checkout` listener runs the same `SELECT 1` under a deadline of STAGE_CONNECT_TIMEOUT and, on
failure, makes the pool discard its connections and reconnect (bounded by `connect_timeout`),
so a stage that froze between commands answers within about twice STAGE_CONNECT_TIMEOUT.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import NullPool

from bot import deadline
from bot.config import Settings, StageConfig
from bot.credentials import CredentialSource, DbCredentials, attach_credentials, credential_source
from bot.errors import StageError, StageUnavailable
from bot.stage_errors import describe_db_error

APPLICATION_NAME = "mcp-ops"


def _seconds(value: float | None) -> str:
    if value is None:
        return "too long"
    if value < 120:
        return f"{value:.1f}".removesuffix(".0") + " s"
    return f"{value / 60:.0f} min"


class Stage:
    """One stage database. Engines are created lazily so a dead stage never blocks startup."""

    def __init__(self, config: StageConfig, settings: Settings) -> None:
        self.config = config
        self.name = config.name
        self.protected = config.protected
        self._settings = settings
        self.credentials: CredentialSource = credential_source(config)
        self._engine: Engine | None = None
        self._component_engines: dict[str, Engine] = {}
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = self._create_engine()
            return self._engine

    @property
    def created_engine(self) -> Engine | None:
        """The engine if something has used the stage yet; metrics look without creating one."""
        return self._engine

    def component_engine(self, component: str, *, connect_args: Mapping[str, Any] | None = None) -> Engine:
        """A separate engine for a background component (health checks, backups).

        It has its own `application_name` (`mcp-ops/<component>/<stage>`), so its sessions are
        told apart from commands, and no pool: each use opens exactly one connection and
        closes it, so nothing idles on the stage between runs and a dead stage is noticed
        at once. `connect_args` (extra libpq parameters, e.g. TCP keepalives) apply when the
        engine is first created, so a component passes the same ones on every call.
        """
        with self._lock:
            engine = self._component_engines.get(component)
            if engine is None:
                engine = self._create_engine(
                    application_name=f"{APPLICATION_NAME}/{component}/{self.name}",
                    pooled=False,
                    extra_connect_args=connect_args,
                )
                self._component_engines[component] = engine
            return engine

    def _create_engine(
        self,
        *,
        application_name: str | None = None,
        pooled: bool = True,
        extra_connect_args: Mapping[str, Any] | None = None,
    ) -> Engine:
        settings = self._settings
        options = (
            f"-c statement_timeout={settings.read_statement_timeout_ms}"
            f" -c lock_timeout={settings.lock_timeout_ms}"
            " -c idle_in_transaction_session_timeout=600000"
            # Floats print exactly whatever the role or database sets: key values the engine reads as text
            # and binds back (bot/deletion/sqlext.as_type) must name the same row (0.1 + 0.2 is not 0.3).
            " -c extra_float_digits=3"
        )
        timeout_s = settings.connect_timeout_s
        connect_args: dict[str, Any] = {
            "application_name": application_name or f"{APPLICATION_NAME}/{self.name}",
            "connect_timeout": timeout_s,
            "options": options,
            # A peer that vanished (network drop, host gone) is noticed by TCP within seconds.
            "keepalives": 1,
            "keepalives_idle": timeout_s,
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "tcp_user_timeout": timeout_s * 1000,
            **(extra_connect_args or {}),
        }
        # A secret-backed stage has no URL: each new connection gets the secret's current credentials.
        url = self.config.url if self.config.url is not None else URL.create("postgresql+psycopg")
        if not pooled:
            engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
        else:
            engine = create_engine(
                url,
                pool_size=5,
                max_overflow=10,
                pool_timeout=10,
                pool_recycle=1800,
                connect_args=connect_args,
            )
        # Deadlines on every wait; pooled connections are checked on checkout under one (see the docstring).
        deadline.install(engine, ping_s=timeout_s if pooled else None)
        if self.credentials.refreshable:
            attach_credentials(engine, self.credentials)
        return engine

    def connection_credentials(self) -> DbCredentials:
        """Current credentials for tools that connect on their own (pg_dump); fetched or refreshed as needed."""
        with self._translated():
            self.ping()  # refreshes a rotated secret before a subprocess tries the stale one
        return self.credentials.current()

    @contextmanager
    def _translated(self, limit: deadline.Deadline | None = None, *, reading: bool = False) -> Iterator[None]:
        try:
            yield
        except (DBAPIError, PoolTimeout) as exc:
            if limit is not None and limit.expired and isinstance(exc, DBAPIError):
                raise StageUnavailable(
                    f"stage {self.name} is unreachable (it stopped answering: nothing for {_seconds(limit.waited_s)})"
                ) from exc
            friendly = describe_db_error(exc, self.name, reading=reading)
            if friendly is None:
                raise
            raise friendly from exc

    @contextmanager
    def _guarded(self, statement_timeout_ms: int, *, reading: bool = False) -> Iterator[deadline.Deadline]:
        """Errors worded for people, under a deadline for one transaction on one connection.

        A caller that entered a deadline of its own for this transaction (a health round) keeps
        it; otherwise waits get `statement_timeout_ms` plus STAGE_CONNECT_TIMEOUT.
        """
        settings = self._settings
        outer = deadline.current()
        if outer is not None and outer.awaiting_connection:
            limit, scope = outer, nullcontext(outer)
        else:
            limit = deadline.Deadline(
                statement_timeout_s=statement_timeout_ms / 1000,
                grace_s=settings.connect_timeout_s,
                session_timeout_s=settings.read_statement_timeout_ms / 1000,
            )
            scope = limit
        with self._translated(limit, reading=reading), scope:
            yield limit

    @contextmanager
    def read(self, *, statement_timeout_ms: int | None = None, component: str | None = None) -> Iterator[Connection]:
        """A read-only transaction; it can never write, whatever runs inside it.

        `component` runs it on that component's own connection (see `component_engine`).
        """
        engine = self.engine if component is None else self.component_engine(component)
        timeout_ms = (
            statement_timeout_ms if statement_timeout_ms is not None else self._settings.read_statement_timeout_ms
        )
        with self._guarded(timeout_ms, reading=True), engine.connect() as conn, conn.begin():
            conn.execute(text("SET TRANSACTION READ ONLY"))
            if statement_timeout_ms is not None:
                conn.execute(
                    text("SELECT set_config('statement_timeout', :ms, true)"),
                    {"ms": str(statement_timeout_ms)},
                )
            yield conn

    @contextmanager
    def write(
        self,
        *,
        statement_timeout_ms: int,
        lock_timeout_ms: int | None = None,
        isolation: str | None = None,
        after_commit: Callable[[Connection], None] | None = None,
        application_name: str | None = None,
    ) -> Iterator[Connection]:
        """One read-write transaction with explicit time budgets; it commits only if the block returns.

        `isolation` (e.g. "REPEATABLE READ") makes every statement see the transaction's snapshot.
        `application_name` names the session for the transaction's length (see `work_name`).
        `after_commit(conn)` runs on the same session once the commit succeeded (the session's
        temporary tables kept `ON COMMIT PRESERVE ROWS` are still there); it must leave no state
        behind, and if it fails the session is discarded rather than returned to the pool.
        """
        lock_ms = lock_timeout_ms if lock_timeout_ms is not None else self._settings.lock_timeout_ms
        with self._guarded(statement_timeout_ms) as limit, self.engine.connect() as raw:
            conn = raw.execution_options(isolation_level=isolation) if isolation else raw
            with conn.begin():
                conn.execute(
                    text("SELECT set_config('statement_timeout', :st, true), set_config('lock_timeout', :lt, true)"),
                    {"st": str(statement_timeout_ms), "lt": str(lock_ms)},
                )
                if application_name:
                    conn.execute(text("SELECT set_config('application_name', :n, true)"), {"n": application_name})
                yield conn
            limit.disarm()  # the commit was answered; `after_commit` arms it again for each statement
            if after_commit is not None:
                try:
                    after_commit(raw)
                except BaseException:
                    raw.invalidate()  # its temporary tables go with the session
                    raise

    @contextmanager
    def autocommit(
        self, *, statement_timeout_ms: int, lock_timeout_ms: int, application_name: str | None = None
    ) -> Iterator[Connection]:
        """One session outside any transaction, for what PostgreSQL forbids inside one (`CREATE INDEX
        CONCURRENTLY`, `DROP INDEX CONCURRENTLY`): every statement commits on its own, with these time
        budgets. Its own connection, closed afterwards, so nothing it sets outlives it."""
        engine = self.component_engine("autocommit")
        with self._guarded(statement_timeout_ms), engine.connect() as raw:
            conn = raw.execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(
                text("SELECT set_config('statement_timeout', :st, false), set_config('lock_timeout', :lt, false)"),
                {"st": str(statement_timeout_ms), "lt": str(lock_timeout_ms)},
            )
            if application_name:
                conn.execute(text("SELECT set_config('application_name', :n, false)"), {"n": application_name})
            yield conn

    def work_name(self, label: str) -> str:
        """The `application_name` a long write runs under, so another process can tell it is still going."""
        return f"{APPLICATION_NAME}/{self.name}/{label}"[:63]

    def is_running(self, work_name: str) -> bool:
        """Is a session of this database still working under `work_name` (a dead bot's transaction, say)?"""
        with self.read() as conn:
            return bool(
                conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = :n"
                        " AND datname = current_database() AND pid <> pg_backend_pid()"
                    ),
                    {"n": work_name},
                ).scalar_one()
            )

    def ping(self) -> float:
        """Round trip of `SELECT 1` in milliseconds; raises StageUnavailable."""
        started = time.perf_counter()
        with self.read() as conn:
            conn.execute(text("SELECT 1"))
        return (time.perf_counter() - started) * 1000

    def dispose(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
            for engine in self._component_engines.values():
                engine.dispose()
            self._component_engines.clear()


class StageRegistry:
    """Which stage a command means, and the Stage objects themselves."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stages: dict[str, Stage] = {name: Stage(cfg, settings) for name, cfg in sorted(settings.stages.items())}

    @property
    def names(self) -> list[str]:
        return list(self._stages)

    @property
    def all(self) -> Mapping[str, Stage]:
        return self._stages

    def get(self, name: str) -> Stage:
        stage = self._stages.get(name.lower())
        if stage is None:
            raise StageError(f"unknown stage `{name[:40]}`; known stages: {', '.join(self.names)}")
        return stage

    def resolve(self, explicit: str | None, channel_id: str | None) -> Stage:
        """The stage named with --stage, else the channel's binding; never a protected default."""
        if explicit:
            return self.get(explicit)
        bound = self._settings.channel_stages.get(channel_id or "")
        if bound:
            stage = self.get(bound)
            if not stage.protected:
                return stage
        raise StageError(f"name a stage with `--stage <name>`; known stages: {', '.join(self.names)}")

    def dispose(self) -> None:
        for stage in self._stages.values():
            stage.dispose()
