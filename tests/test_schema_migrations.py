"""`/mcp migrations`: stages migrated by a Drizzle applier (tests/schema_support.py), every state proved."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bot.config import ConfigError, load_settings
from tests.conftest import VIEWER, message_text, unique_name
from tests.schema_support import (
    BASE_WHEN,
    Migration,
    drizzle_migrate,
    drizzle_v1_migrate,
    execute,
    platform_migrations,
    v1_name,
    write_journal_folder,
    write_v1_folder,
)

DAY = 86_400_000


def branch_migration() -> Migration:
    """Generated on a branch before 0003 was, merged after 0004 was applied: an older `when` than applied ones."""
    return Migration(
        "0005_branch_support_index",
        BASE_WHEN + 2 * DAY + 3_600_000,
        'CREATE INDEX "sr_org" ON "support_requests" ("organization_id");\n',
    )


def hotfix_migration() -> Migration:
    return Migration(
        "0099_hotfix", BASE_WHEN + 2 * DAY + 60_000, 'ALTER TABLE "organization" ADD COLUMN "hotfix" int;\n'
    )


def test_every_state_per_stage_and_the_matrix(make_bot, make_empty_db, tmp_path):
    base = platform_migrations()  # 0000 .. 0004
    branch = branch_migration()
    # The folder as deployed today: the branch migration merged (journal order = generation order of merging),
    # 0001 edited after it was applied, 0002 saved with CRLF line endings.
    edited_0001 = replace(
        base[1], sql=base[1].sql.replace("coalesce(NEW.created_at, 0)", "coalesce(NEW.created_at, 1)")
    )
    crlf_0002 = replace(base[2], sql=base[2].sql.replace("\n", "\r\n"))
    folder_migrations = [base[0], edited_0001, crlf_0002, base[3], base[4], branch]
    write_journal_folder(tmp_path / "migrations", folder_migrations)

    dev, staging, production, qa = make_empty_db(), make_empty_db(), make_empty_db(), make_empty_db()
    # dev: a fresh database migrated from today's folder: everything applied.
    assert len(drizzle_migrate(dev, folder_migrations)) == 6
    # staging: migrated before the branch merged, with the original 0001 and LF 0002; then again from today's folder.
    assert len(drizzle_migrate(staging, base)) == 5
    assert drizzle_migrate(staging, folder_migrations) == []  # the branch migration is older: drizzle skips it
    # production: 0000-0002 only, plus a hotfix applied from a branch that never merged.
    assert len(drizzle_migrate(production, [*base[:3], hotfix_migration()])) == 4
    # qa: never migrated by Drizzle (drizzle-kit push).
    execute(qa, "CREATE TABLE t (id int)")

    bot = make_bot(
        {"dev": dev, "staging": staging, "production": production, "qa": qa},
        MIGRATIONS_DIR=str(tmp_path),  # the app's folder: its `migrations` folder is found
    )
    one = message_text(bot.command("migrations --stage production", user=VIEWER).message())
    assert "newest `0099_hotfix`" not in one  # the hotfix is unknown: named by its hash
    assert "`0003_server_description` pending" in one and "`0004_walkthrough_public` pending" in one
    assert "`0005_branch_support_index` pending" in one  # newer than production's newest: migrate runs it
    applied_hash, file_hash = base[1].hash[:12], edited_0001.hash[:12]
    assert (
        "`0001_support_touch_trigger` *edited*: the applied migration's hash differs from the file's "
        f"(applied `{applied_hash}`, file `{file_hash}`)" in one
    )
    assert "`0002_session_title_index` applied; the file differs only in line endings (CRLF)" in one
    assert f"unknown row 4: hash `{hotfix_migration().hash[:12]}`" in one
    assert "3 pending, 1 edited, 1 crlf-only" in one and "1 unknown" in one
    assert "2 behind staging" in one  # 0003 and 0004; the branch migration is not on staging either

    st = message_text(bot.command("migrations --stage staging").message())
    assert "`0005_branch_support_index` *skipped*" in st and "never run it" in st
    assert "newest `0004_walkthrough_public` (generated 2025-01-05 00:00 UTC)" in st

    ok = message_text(bot.command("migrations --stage dev").message())
    assert "every migration in the folder is applied" in ok and "newest `0004_walkthrough_public`" in ok

    matrix = bot.command("migrations").message()
    text = message_text(matrix)
    assert "*qa*: :grey_question: no table drizzle.__drizzle_migrations" in text
    table = next(b["text"]["text"] for b in matrix["blocks"] if b["text"]["text"].startswith("```"))
    rows = {line.split()[0]: line.split()[1:] for line in table.strip("`").splitlines()[1:]}
    header = table.strip("`").splitlines()[0].split()
    assert header == ["migration", "dev", "staging", "production"]
    assert rows["0001_support_touch_trigger"] == ["applied", "EDITED", "EDITED"]
    assert rows["0002_session_title_index"] == ["applied", "CRLF-only", "CRLF-only"]
    assert rows["0005_branch_support_index"] == ["applied", "SKIPPED", "pending"]
    assert rows["0003_server_description"] == ["applied", "applied", "pending"]
    assert "0000_init_platform" not in rows  # applied everywhere: no row
    assert rows["unknown"][1:] == ["-", "-", "UNKNOWN"]


def test_a_table_the_role_cannot_read_is_a_line_not_an_error(make_bot, make_empty_db, pg, tmp_path):
    url = make_empty_db()
    drizzle_migrate(url, platform_migrations()[:1])
    role = unique_name("reader")
    execute(url, f"CREATE ROLE {role} LOGIN")
    execute(url, f"GRANT USAGE ON SCHEMA drizzle TO {role}")  # the schema, not the table
    no_schema = unique_name("stranger")
    execute(url, f"CREATE ROLE {no_schema} LOGIN")
    reader_url = url.replace("postgres@", f"{role}@")
    stranger_url = url.replace("postgres@", f"{no_schema}@")
    bot = make_bot({"dev": reader_url, "qa": stranger_url})
    for stage in ("dev", "qa"):
        text = message_text(bot.command(f"migrations --stage {stage}").message())
        assert f"*{stage}*: :grey_question: the stage's role may not read drizzle.__drizzle_migrations" in text


def test_without_a_folder_the_stages_tables_are_compared(make_bot, make_empty_db):
    base = platform_migrations()
    staging, production = make_empty_db(), make_empty_db()
    drizzle_migrate(staging, base)
    drizzle_migrate(production, base[:3])
    bot = make_bot({"staging": staging, "production": production})
    matrix = bot.command("migrations").message()
    text = message_text(matrix)
    assert "no MIGRATIONS_DIR" in text and "2 behind staging" in text
    table = next(b["text"]["text"] for b in matrix["blocks"] if b["text"]["text"].startswith("```"))
    assert base[3].hash[:12] in table and base[4].hash[:12] in table and base[2].hash[:12] not in table
    assert f"*production* :lock:: newest hash `{base[2].hash[:12]}` (generated 2025-01-03 00:00 UTC)" in text


def test_drizzle_v1_layout_named_rows_and_custom_table(make_bot, make_empty_db, tmp_path):
    base = platform_migrations()
    folder = write_v1_folder(tmp_path / "drizzle", base[:4])
    url = make_empty_db()
    assert drizzle_v1_migrate(url, base[:4], schema="app_meta", table="migrations_log") == [
        v1_name(m) for m in base[:4]
    ]
    # Later: a migration generated earlier on a branch (older timestamp) and 0002's file edited.
    late = Migration(
        "0009_branch_late", BASE_WHEN + DAY + 7_200_000, 'ALTER TABLE "organization" ADD COLUMN "late" int;\n'
    )
    write_v1_folder(folder, [late, replace(base[2], sql=base[2].sql + "-- reviewed\n")])
    bot = make_bot(
        {"dev": url}, MIGRATIONS_DIR=str(folder), MIGRATIONS_SCHEMA="app_meta", MIGRATIONS_TABLE="migrations_log"
    )
    text = message_text(bot.command("migrations --stage dev").message())
    # drizzle-orm 1.x runs every migration it has no row for, by name: older is pending, never skipped.
    assert f"`{v1_name(late)}` pending" in text and "skipped" not in text
    assert f"`{v1_name(base[2])}` *edited*" in text
    assert f"newest `{v1_name(base[3])}` (applied 20" in text  # applied_at, not the generation time
    assert "5 migrations in MIGRATIONS_DIR (one folder each)" in text


def test_schema_settings_defaults_and_one_line_errors(tmp_path):

    base = {"BOT_DATABASE_URL": "postgresql://u@h/bot", "DATABASE_URL_DEV": "postgresql://u@h/dev"}
    plain = load_settings(base, require_slack=False).schema
    assert (plain.migrations_schema, plain.migrations_table, plain.lag_alert_hours) == (
        "drizzle",
        "__drizzle_migrations",
        72,
    )
    assert plain.reference_stage is None and plain.migrations_dir is None  # no staging configured here
    with_staging = load_settings({**base, "DATABASE_URL_STAGING": "postgresql://u@h/s"}, require_slack=False)
    assert with_staging.schema.reference_stage == "staging"
    cases = [
        ({"MIGRATIONS_DIR": str(tmp_path / "nope")}, "MIGRATIONS_DIR is not a directory"),
        ({"MIGRATIONS_SCHEMA": 'drizzle"; drop'}, "MIGRATIONS_SCHEMA is malformed"),
        ({"MIGRATIONS_TABLE": "a b"}, "MIGRATIONS_TABLE is malformed"),
        ({"MIGRATION_REFERENCE_STAGE": "qa"}, "MIGRATION_REFERENCE_STAGE names stage 'qa'"),
        ({"MIGRATION_LAG_ALERT_HOURS": "soon"}, "MIGRATION_LAG_ALERT_HOURS is malformed"),
        ({"DRIFT_IGNORE": "public.x;y"}, "DRIFT_IGNORE is malformed"),
    ]
    for env, expected in cases:
        with pytest.raises(ConfigError) as caught:
            load_settings({**base, **env}, require_slack=False)
        assert str(caught.value).startswith(expected), (env, caught.value)
