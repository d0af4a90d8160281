"""The platform's Drizzle migrations as the demo ships them, applied the way drizzle-orm's migrator applies them.

`bot/platform/drizzle/` is a drizzle-kit 0.x `out` folder: `meta/_journal.json` (entries `idx`, `when`, `tag`,
`breakpoints`) and one `<tag>.sql` per entry, statements separated by `--> statement-breakpoint`.

- `0000_init_platform.sql` is the schema of `bot/platform/schema.py` (`metadata`) compiled by `initial_sql()`:
  the one schema definition, which the tests' template databases are built from (`create_platform_schema`);
  tests/test_demo_migrations.py checks that the file still builds exactly that schema.
- Later files are the changes the platform made since, as drizzle-kit writes them; the demo's stages apply them
  (production one migration behind: a pending migration for `/mcp migrations`, a difference for `/mcp drift`).

`apply_migrations` does what drizzle-orm 0.x `migrate()` does (`pg-core/dialect.ts`), in the caller's transaction:
create `"drizzle"."__drizzle_migrations"` if missing, read the newest `created_at`, run every journal entry whose
`when` is greater, and record each as (sha256 of the file's text, the entry's `when`).
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Integer,
    MetaData,
    Table,
    Text,
    create_mock_engine,
    insert,
    select,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateSchema

from bot.platform.schema import metadata as platform_metadata
from bot.schema.drizzle import read_folder

FOLDER = Path(__file__).resolve().parent / "drizzle"
BREAKPOINT = "--> statement-breakpoint"
MIGRATIONS_SCHEMA = "drizzle"
MIGRATIONS_TABLE = "__drizzle_migrations"


def initial_sql() -> str:
    """The platform schema (`metadata`) as drizzle-kit writes a first migration: statements and breakpoints."""
    statements: list[str] = []

    def collect(clause: object, *_args: object, **_kw: object) -> None:
        compiled = str(clause.compile(dialect=postgresql.dialect())).strip()  # type: ignore[attr-defined]
        statements.append(re.sub(r"\s+\n", "\n", compiled) + ";")

    engine = create_mock_engine("postgresql+psycopg://", collect)  # type: ignore[arg-type]
    platform_metadata.create_all(engine, checkfirst=False)  # type: ignore[arg-type]
    return f"{BREAKPOINT}\n".join(s + "\n" for s in statements)


def migrations_table(schema: str = MIGRATIONS_SCHEMA, table: str = MIGRATIONS_TABLE) -> Table:
    """drizzle-orm 0.x's bookkeeping table: `id serial primary key, hash text not null, created_at bigint`."""
    return Table(
        table,
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("hash", Text, nullable=False),
        Column("created_at", BigInteger),
        schema=schema,
    )


def apply_migrations(conn: Connection, folder: Path = FOLDER, *, leave_pending: int = 0) -> list[str]:
    """Migrate as drizzle-orm 0.x does, leaving the newest `leave_pending` entries unapplied; returns the tags run.

    Runs in the caller's transaction (drizzle-orm runs all pending migrations in one transaction too).
    """
    layout, local = read_folder(folder)
    if layout != "journal":
        raise ValueError(f"{folder}: expected a drizzle-kit 0.x folder with meta/_journal.json")
    target = migrations_table()
    conn.execute(CreateSchema(MIGRATIONS_SCHEMA, if_not_exists=True))
    target.create(conn, checkfirst=True)
    newest = conn.execute(select(target.c.created_at).order_by(target.c.created_at.desc()).limit(1)).first()
    last = int(newest.created_at or 0) if newest else None  # drizzle: Number(null) is 0
    ran: list[str] = []
    for migration in local[: len(local) - leave_pending]:
        if last is not None and last >= migration.when:
            continue
        body = (folder / f"{migration.name}.sql").read_bytes().decode("utf-8", errors="replace")
        for statement in body.split(BREAKPOINT):
            if statement.strip():
                conn.exec_driver_sql(statement)
        conn.execute(insert(target).values(hash=migration.hash, created_at=migration.when))
        ran.append(migration.name)
    return ran
