"""Drizzle migrations for tests: real-looking migration folders and an applier that does what drizzle-orm does.

drizzle-orm 0.x (`migrator.ts` readMigrationFiles, `pg-core/dialect.ts` migrate):
- the journal `<out>/meta/_journal.json` lists entries (`idx`, `when`, `tag`, `breakpoints`);
- each migration is `<out>/<tag>.sql`; its hash is sha256 (hex) of the whole file's text;
- `"drizzle"."__drizzle_migrations"` (`id serial`, `hash text not null`, `created_at bigint`) is created if missing;
- only the newest `created_at` is read, and every entry whose `when` is greater runs, split on
  `--> statement-breakpoint`, then a row (hash, when) is inserted; all of it in one transaction.
drizzle-orm 1.x (beta) reads `<out>/<YYYYMMDDHHMMSS_name>/migration.sql` (no journal), adds `name` and
`applied_at` columns, and runs every migration whose name has no row.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from bot.platform.migrate import BREAKPOINT, initial_sql


@dataclass(frozen=True)
class Migration:
    tag: str
    when: int  # milliseconds, as drizzle-kit generate writes it
    sql: str

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def platform_ddl() -> str:
    """The platform schema as drizzle-kit would write its first migration: statements and breakpoints."""
    return initial_sql()


# Migrations after the first, as a platform grows them (a trigger, an index, a column).
TOUCH_FUNCTION = """CREATE FUNCTION "support_requests_touch"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.created_at := coalesce(NEW.created_at, 0); RETURN NEW; END $$;
--> statement-breakpoint
CREATE TRIGGER "support_requests_touch" BEFORE INSERT ON "support_requests"
FOR EACH ROW EXECUTE FUNCTION "support_requests_touch"();
"""
SESSION_TITLE_INDEX = 'CREATE INDEX "mcp_server_session_title_idx" ON "mcp_server_session" USING btree ("title");\n'
SERVER_DESCRIPTION = 'ALTER TABLE "mcp_servers" ADD COLUMN "description" text;\n'
WALKTHROUGH_FLAG = 'ALTER TABLE "walkthroughs" ADD COLUMN "is_public" boolean DEFAULT false NOT NULL;\n'

BASE_WHEN = 1_735_689_600_000  # 2025-01-01T00:00:00Z


def platform_migrations() -> list[Migration]:
    day = 86_400_000
    return [
        Migration("0000_init_platform", BASE_WHEN, platform_ddl()),
        Migration("0001_support_touch_trigger", BASE_WHEN + day, TOUCH_FUNCTION),
        Migration("0002_session_title_index", BASE_WHEN + 2 * day, SESSION_TITLE_INDEX),
        Migration("0003_server_description", BASE_WHEN + 3 * day, SERVER_DESCRIPTION),
        Migration("0004_walkthrough_public", BASE_WHEN + 4 * day, WALKTHROUGH_FLAG),
    ]


def write_journal_folder(folder: Path, migrations: list[Migration]) -> Path:
    """A drizzle-kit 0.x `out` folder: meta/_journal.json plus one <tag>.sql per entry, byte for byte."""
    (folder / "meta").mkdir(parents=True, exist_ok=True)
    entries = [
        {"idx": i, "version": "7", "when": m.when, "tag": m.tag, "breakpoints": True} for i, m in enumerate(migrations)
    ]
    (folder / "meta" / "_journal.json").write_text(
        json.dumps({"version": "7", "dialect": "postgresql", "entries": entries})
    )
    for m in migrations:
        (folder / f"{m.tag}.sql").write_bytes(m.sql.encode())
    return folder


def v1_name(m: Migration) -> str:
    """drizzle-kit 1.x folder name: the UTC timestamp of `when` (to the second), then the name."""
    stamp = datetime.fromtimestamp(m.when / 1000, tz=UTC).strftime("%Y%m%d%H%M%S")
    return f"{stamp}_{m.tag.split('_', 1)[1]}"


def write_v1_folder(folder: Path, migrations: list[Migration]) -> Path:
    for m in migrations:
        (folder / v1_name(m)).mkdir(parents=True, exist_ok=True)
        (folder / v1_name(m) / "migration.sql").write_bytes(m.sql.encode())
    return folder


def _dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _table(schema: str, table: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))


V0_COLUMNS = "id SERIAL PRIMARY KEY, hash text NOT NULL, created_at bigint"
V1_COLUMNS = V0_COLUMNS + ", name text, applied_at timestamp with time zone DEFAULT now()"


def _migrations_table(conn: psycopg.Connection, schema: str, table: str, columns: str) -> sql.Composed:
    """CREATE SCHEMA/TABLE IF NOT EXISTS as the migrator does; returns the table's qualified name."""
    target = _table(schema, table)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (" + columns + ")").format(target))  # type: ignore[arg-type]
    return target


def _run(conn: psycopg.Connection, m: Migration, target: sql.Composed, **record: object) -> None:
    """The migration's statements (split on breakpoints), then its row: hash, created_at and `record`."""
    for statement in m.sql.split(BREAKPOINT):
        if statement.strip():
            conn.execute(statement)  # type: ignore[arg-type]
    values = {"hash": m.hash, "created_at": m.when, **record}
    conn.execute(
        sql.SQL("insert into {} ({}) values ({})").format(
            target,
            sql.SQL(", ").join(map(sql.Identifier, values)),
            sql.SQL(", ").join(sql.Placeholder() * len(values)),
        ),
        list(values.values()),
    )


def drizzle_migrate(
    url: str, migrations: list[Migration], *, schema: str = "drizzle", table: str = "__drizzle_migrations"
) -> list[str]:
    """drizzle-orm 0.x `migrate()`: returns the tags it ran."""
    with psycopg.connect(_dsn(url), autocommit=True) as conn:
        target = _migrations_table(conn, schema, table, V0_COLUMNS)
        last = conn.execute(
            sql.SQL("select id, hash, created_at from {} order by created_at desc limit 1").format(target)
        ).fetchone()
        ran: list[str] = []
        with conn.transaction():
            for m in migrations:
                if last is None or int(last[2] or 0) < m.when:  # Number(null) is 0
                    _run(conn, m, target)
                    ran.append(m.tag)
        return ran


def drizzle_v1_migrate(
    url: str, migrations: list[Migration], *, schema: str = "drizzle", table: str = "__drizzle_migrations"
) -> list[str]:
    """drizzle-orm 1.x `migrate()` on a new database: runs every migration whose name has no row.

    Its created_at is the folder name's timestamp (seconds), which is what 1.x records.
    """
    with psycopg.connect(_dsn(url), autocommit=True) as conn:
        target = _migrations_table(conn, schema, table, V1_COLUMNS)
        names = {r[0] for r in conn.execute(sql.SQL("select name from {}").format(target)) if r[0]}
        ran: list[str] = []
        with conn.transaction():
            for m in sorted(migrations, key=v1_name):
                name = v1_name(m)
                if name not in names:
                    seconds = datetime.strptime(name[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
                    _run(conn, replace(m, when=int(seconds.timestamp() * 1000)), target, name=name)
                    ran.append(name)
        return ran


def execute(url: str, statement: str) -> None:
    with psycopg.connect(_dsn(url), autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


def drizzle_v1_upgrade(
    url: str, migrations: list[Migration], *, schema: str = "drizzle", table: str = "__drizzle_migrations"
) -> dict[int, str]:
    """drizzle-orm 1.x's upgrade of a 0.x table (`up-migrations/pg.ts`), before its first migrate: each row is
    matched to a folder by `created_at` to the second (several folders in that second: by hash; none: by hash),
    then `name` and `applied_at` are added and the names backfilled with applied_at NULL. Returns id -> name."""
    local = sorted(migrations, key=lambda m: (v1_seconds(m), v1_name(m)))
    by_second: dict[int, list[Migration]] = {}
    for m in local:
        by_second.setdefault(v1_seconds(m), []).append(m)
    by_hash = {m.hash: m for m in local}
    with psycopg.connect(_dsn(url), autocommit=True) as conn:
        target = _table(schema, table)
        matched: dict[int, str] = {}
        for row_id, digest, created_at in conn.execute(
            sql.SQL("SELECT id, hash, created_at FROM {} ORDER BY id").format(target)
        ):
            candidates = by_second.get(int(str(created_at)[:-3] + "000"), [])
            found = (
                candidates[0]
                if len(candidates) == 1
                else next((c for c in candidates if c.hash == digest), None)
                if candidates
                else by_hash.get(digest)
            )
            if found is None:
                raise AssertionError(f"drizzle 1.x would refuse to upgrade: row {row_id} matches no local migration")
            matched[row_id] = v1_name(found)
        with conn.transaction():
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS name text").format(target))
            conn.execute(
                sql.SQL(
                    "ALTER TABLE {} ADD COLUMN IF NOT EXISTS applied_at timestamp with time zone DEFAULT now()"
                ).format(target)
            )
            for row_id, name in matched.items():
                conn.execute(
                    sql.SQL("UPDATE {} SET name = %s, applied_at = NULL WHERE id = %s").format(target), (name, row_id)
                )
        return matched


def v1_seconds(m: Migration) -> int:
    """The created_at drizzle-orm 1.x records for a migration: its folder name's timestamp, in milliseconds."""
    return m.when // 1000 * 1000
