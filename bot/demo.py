"""The embedded default: a local PostgreSQL with three stages of demo data, and the console."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import psycopg
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from bot.config import parse_database_url
from bot.localpg import LocalPostgres, can_reach, cluster_owner, shared_cache
from bot.platform.demo_data import DatasetSpec, load_demo_data
from bot.platform.migrate import FOLDER as DEMO_MIGRATIONS
from bot.platform.migrate import MIGRATIONS_SCHEMA, MIGRATIONS_TABLE, apply_migrations
from bot.platform.schema import create_platform_schema

DEMO_OPERATOR = "UDEMOOPS1"
DEMO_APPROVER = "UDEMOAPPR1"
DEMO_VIEWER = "UDEMOVIEW1"
DEMO_AUDIT_CHANNEL = "CDEMOAUDIT"
DEMO_ALERT_CHANNEL = "CDEMOALERTS"
DEMO_SLUG = DatasetSpec().big_slug
BOT_DATABASE = "mcp_ops_bot"
STAGES = {
    "dev": DatasetSpec(),
    "staging": DatasetSpec(big_tool_calls=5_000, big_sessions=500, big_users=200, big_completions=300, small_servers=9),
    "production": DatasetSpec(
        big_tool_calls=8_000, big_sessions=800, big_users=300, big_completions=500, small_servers=14
    ),
}
# Migrated as the platform is (Drizzle, bot/platform/drizzle): production one migration behind the others, so
# `/mcp migrations` has a pending migration to show and `/mcp drift staging production` a difference.
PENDING_MIGRATIONS = {"production": 1}


# Loading the bench dataset (1,000,000 tool calls) takes one long statement per table: a generous limit, but a limit.
DEMO_DATA_STATEMENT_TIMEOUT_MS = 30 * 60 * 1000
DEMO_DATA_LOCK_TIMEOUT_MS = 5000


def demo_data_engine(url: str) -> Engine:
    """The engine that loads demo data: named (`mcp-ops/demo-data`), and under a statement and a lock timeout."""
    return create_engine(
        parse_database_url("database", url),
        poolclass=NullPool,
        connect_args={
            "application_name": "mcp-ops/demo-data",
            "options": f"-c statement_timeout={DEMO_DATA_STATEMENT_TIMEOUT_MS}"
            f" -c lock_timeout={DEMO_DATA_LOCK_TIMEOUT_MS}",
        },
    )


def build_platform_database(url: str, spec: DatasetSpec, *, pending_migrations: int | None = None) -> None:
    """Create the platform schema and load `spec` into an empty database, in one transaction.

    With `pending_migrations`, the schema is made by the demo's Drizzle migrations instead (recorded in
    drizzle.__drizzle_migrations as drizzle-orm records them), the newest `pending_migrations` of them left out.
    """
    engine = demo_data_engine(url)
    try:
        with engine.begin() as conn:
            available = conn.execute(
                text("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements'")
            ).first()
            if available:  # a bundled server without contrib still makes a working demo
                conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
            if pending_migrations is None:
                create_platform_schema(conn)
            else:
                apply_migrations(conn, DEMO_MIGRATIONS, leave_pending=pending_migrations)
            load_demo_data(conn, spec)
    finally:
        engine.dispose()


def _loaded(cluster: LocalPostgres, name: str) -> bool:
    """Whether the stage database `name` holds the demo data (loaded in one transaction with its migrations).

    A first start interrupted while loading (Ctrl-C) leaves the database created but empty: it is loaded again;
    so is a stage an older version of the demo made without Drizzle's migrations table.
    """
    if not cluster.database_exists(name):
        return False
    migrations = f'"{MIGRATIONS_SCHEMA}"."{MIGRATIONS_TABLE}"'
    with psycopg.connect(cluster.dsn(name), autocommit=True) as conn:
        found = conn.execute(
            "SELECT to_regclass('public.mcp_servers') IS NOT NULL AND to_regclass(%s) IS NOT NULL", (migrations,)
        ).fetchone()
    return bool(found and found[0])


def _in_use(cluster: LocalPostgres, name: str) -> bool:
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_stat_activity WHERE datname = %s LIMIT 1", (name,)).fetchone()
    return found is not None


def stop_demo(cluster: LocalPostgres) -> None:
    """Stop the demo's cluster on leaving, unless another demo session of this checkout still uses it."""
    try:
        busy = _in_use(cluster, BOT_DATABASE)
    except psycopg.Error:
        busy = False
    if not busy:
        cluster.stop()


def demo_cluster_dir(base_dir: Path) -> Path:
    """Where the demo cluster of `base_dir` lives: in it, unless the cluster's OS user cannot enter it.

    As root the cluster belongs to an unprivileged user (initdb refuses root); a checkout in root's home
    directory or in a mode-700 folder is closed to that user, so the cluster then lives under the shared
    cache, keyed by the checkout's path (one cluster per checkout, found again on the next start).
    """
    base_dir = base_dir.resolve()
    base_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or can_reach(cluster_owner("postgres"), base_dir):
        return base_dir / "pg"
    key = hashlib.sha256(str(base_dir).encode()).hexdigest()[:12]
    outside = shared_cache() / f"demo-{key}"
    outside.mkdir(mode=0o755, exist_ok=True)
    return outside / "pg"


def prepare_demo(
    base_dir: Path, *, reset: bool = False, log: Callable[[str], None] = print
) -> tuple[LocalPostgres, dict[str, str]]:
    """Start (or reuse) the demo cluster and return it with the environment the bot needs."""
    cluster_dir = demo_cluster_dir(base_dir)
    cluster = LocalPostgres(cluster_dir)
    if reset:
        cluster.destroy()
        cluster = LocalPostgres(cluster_dir)
    cluster.start()
    install = cluster.install
    log(f"PostgreSQL {install.version} ({install.source}) in {cluster.base_dir}, port {cluster.port}")
    env: dict[str, str] = {}
    for stage, spec in STAGES.items():
        name = f"mcp_{stage}"
        if not _loaded(cluster, name):
            log(f"creating stage {stage} with demo data ...")
            pending = PENDING_MIGRATIONS.get(stage, 0)
            build_platform_database(cluster.create_database(name, drop=True), spec, pending_migrations=pending)
        env[f"DATABASE_URL_{stage.upper()}"] = cluster.url(name)
    # The bot's own state starts afresh each time, as the console's local Slack does: alerts, requests and
    # their messages from an earlier session name messages that no longer exist anywhere. Not while another
    # demo session of this checkout is using it.
    if not _in_use(cluster, BOT_DATABASE):
        cluster.create_database(BOT_DATABASE, drop=True)
    env.update(
        {
            "BOT_DATABASE_URL": cluster.url(BOT_DATABASE),
            "OPERATORS": DEMO_OPERATOR,
            "APPROVERS": DEMO_APPROVER,
            "AUDIT_CHANNEL": DEMO_AUDIT_CHANNEL,
            "ALERT_CHANNEL": DEMO_ALERT_CHANNEL,
            "PROTECTED_STAGES": "production",
            "BACKUP_DIR": str(base_dir / "backups"),
            "MIGRATIONS_DIR": str(DEMO_MIGRATIONS),
        }
    )
    return cluster, env
