"""The bot's own database: engine, table metadata and start-up migration.

Each domain module declares its tables on `metadata`; `migrate` creates what is missing
and then applies numbered changes, under an advisory lock so replicas starting together
do not race.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    MetaData,
    Table,
    create_engine,
    func,
    select,
    text,
)
from sqlalchemy.engine import URL

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", BigInteger, primary_key=True),
    Column("applied_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Modules that declare tables on `metadata`; imported before create_all.
TABLE_MODULES = (
    "bot.audit",
    "bot.audit_coalesce",
    "bot.outbox",
    "bot.scheduler",
    "bot.health.alerts",
    "bot.health.statement_store",
    "bot.health.statement_history",
    "bot.health.history",
    "bot.ratelimit",
    "bot.home",
    "bot.backups.index",
    "bot.requests.store",
    "bot.schema.watch",
    "bot.erasure.ledger",
    "bot.deliveries",
)


def _request_kinds(conn: Connection) -> None:
    """Delete requests gained a kind (restores on protected stages are approved the same way) and options."""
    conn.execute(text("ALTER TABLE delete_requests ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'delete'"))
    conn.execute(text("ALTER TABLE delete_requests ADD COLUMN IF NOT EXISTS options jsonb NOT NULL DEFAULT '{}'"))


def _outbox_supersede_key(conn: Connection) -> None:
    """Calls that replace earlier ones (bot/outbox.py: superseded calls)."""
    conn.execute(text("ALTER TABLE outbox ADD COLUMN IF NOT EXISTS supersede_key text"))
    conn.execute(
        text(
            "CREATE INDEX IF NOT EXISTS outbox_supersede_idx ON outbox (supersede_key) WHERE supersede_key IS NOT NULL"
        )
    )


def _alert_clearing(conn: Connection) -> None:
    """Alerts count the runs they were missing (cleared after ALERT_CLEAR_AFTER_RUNS) and what was announced."""
    conn.execute(text("ALTER TABLE alerts ADD COLUMN IF NOT EXISTS absent integer NOT NULL DEFAULT 0"))
    conn.execute(text("ALTER TABLE alerts ADD COLUMN IF NOT EXISTS announced text"))


def _alert_attention(conn: Connection) -> None:
    """Alerts can be acknowledged and snoozed (bot/health/alerts.py); held: fired while snoozed."""
    columns = ("acknowledged_by text", "acknowledged_at timestamptz", "snoozed_until timestamptz", "snoozed_by text")
    for column in columns:
        conn.execute(text(f"ALTER TABLE alerts ADD COLUMN IF NOT EXISTS {column}"))
    conn.execute(text("ALTER TABLE alerts ADD COLUMN IF NOT EXISTS held boolean NOT NULL DEFAULT false"))


def _home_published_at(conn: Connection) -> None:
    """App Home publishes are spaced per person (bot/home.py)."""
    conn.execute(text("ALTER TABLE home_viewers ADD COLUMN IF NOT EXISTS published_at timestamptz"))


def _outbox_lanes(conn: Connection) -> None:
    """Outbox rows go by priority, and a 429 holds back one method on one channel (bot/outbox.py)."""
    conn.execute(text("ALTER TABLE outbox ADD COLUMN IF NOT EXISTS priority smallint NOT NULL DEFAULT 0"))
    conn.execute(text("ALTER TABLE outbox ADD COLUMN IF NOT EXISTS channel text NOT NULL DEFAULT ''"))
    conn.execute(text("UPDATE outbox SET channel = coalesce(payload->>'channel', '') WHERE delivered_at IS NULL"))
    conn.execute(
        text(
            "CREATE INDEX IF NOT EXISTS outbox_due_idx ON outbox (priority, id)"
            " WHERE delivered_at IS NULL AND dead_at IS NULL"
        )
    )


def _request_revoked(conn: Connection) -> None:
    """Requests can end `revoked`: a right lost before the request ran (bot/requests/store.py)."""
    from bot.requests.store import STATE_CHECK

    conn.execute(text("ALTER TABLE delete_requests DROP CONSTRAINT IF EXISTS delete_requests_state_check"))
    conn.execute(text(f"ALTER TABLE delete_requests ADD CONSTRAINT delete_requests_state_check CHECK ({STATE_CHECK})"))


def _alert_actions(conn: Connection) -> None:
    """Alerts keep their finding's operation buttons (Cancel query, Create index: handlers/render_operations.py)."""
    conn.execute(text("ALTER TABLE alerts ADD COLUMN IF NOT EXISTS actions jsonb NOT NULL DEFAULT '[]'"))


# Numbered changes to existing tables, applied once each, in order.
MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (1, _request_kinds),
    (2, _outbox_supersede_key),
    (3, _alert_clearing),
    (4, _alert_attention),
    (5, _home_published_at),
    (6, _outbox_lanes),
    (7, _request_revoked),
    (8, _alert_actions),
]

MIGRATION_LOCK_KEY = 0x6D63706F7073  # "mcpops"


def create_bot_engine(url: URL, *, application_name: str = "mcp-ops/bot") -> Engine:
    return create_engine(
        url,
        pool_size=10,
        max_overflow=20,
        pool_timeout=10,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={
            "application_name": application_name,
            "connect_timeout": 5,
            "options": "-c statement_timeout=30000 -c lock_timeout=5000",
        },
    )


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction on the bot database (`BEGIN READ ONLY`), for work that only reads it.

    The pool resets the connection to read-write when it is returned."""
    with engine.connect() as conn:
        conn.execution_options(postgresql_readonly=True)
        with conn.begin():
            yield conn


def migrate(engine: Engine) -> None:
    for module in TABLE_MODULES:
        importlib.import_module(module)
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        metadata.create_all(conn)
        applied = set(conn.execute(select(schema_version.c.version)).scalars())
        for version, change in MIGRATIONS:
            if version not in applied:
                change(conn)
                conn.execute(schema_version.insert().values(version=version))
