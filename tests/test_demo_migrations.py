"""The demo's Drizzle migrations (bot/platform/drizzle): the first builds the one platform schema, and applying
them records what drizzle-orm's migrator records."""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import text

from bot.demo import build_platform_database, demo_data_engine
from bot.platform.migrate import FOLDER, apply_migrations
from tests.conftest import TEST_SPEC, VIEWER


def test_the_first_demo_migration_builds_the_schema_the_tests_use_and_the_rest_apply_once(
    make_bot, stage_db, make_empty_db
):
    journal = json.loads((FOLDER / "meta" / "_journal.json").read_text())["entries"]
    assert [e["idx"] for e in journal] == list(range(len(journal))) and len(journal) >= 2
    url = make_empty_db()
    build_platform_database(url, TEST_SPEC, pending_migrations=len(journal) - 1)  # the first migration only

    # The template the tests clone is made from bot/platform/schema.py's metadata; the first migration was
    # generated from it and must still build exactly that schema.
    bot = make_bot({"staging": stage_db.url, "production": url})
    reply = bot.command("drift staging production", user=VIEWER).message()
    assert "identical" in reply["text"], str(reply["blocks"])[:3000]

    engine = demo_data_engine(url)
    try:
        with engine.begin() as conn:
            assert apply_migrations(conn) == [e["tag"] for e in journal[1:]]
        with engine.begin() as conn:
            assert apply_migrations(conn) == []  # nothing newer than the newest created_at
            rows = conn.execute(text("SELECT hash, created_at FROM drizzle.__drizzle_migrations ORDER BY id")).all()
    finally:
        engine.dispose()
    # drizzle-orm's bookkeeping: sha256 of the whole file, and the journal entry's `when`.
    expected = [(hashlib.sha256((FOLDER / f"{e['tag']}.sql").read_bytes()).hexdigest(), e["when"]) for e in journal]
    assert [tuple(r) for r in rows] == expected
    drift = bot.command("drift staging production", user=VIEWER).message()
    assert "only on production: index `mcp_tool_calls_created_idx`" in str(drift["blocks"]), drift
