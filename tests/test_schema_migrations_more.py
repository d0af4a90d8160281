"""`/mcp migrations` beyond the platform's own folder: a folder converted by `drizzle-kit up` (1.x layout) over
tables 0.x wrote, bytes that are not UTF-8, a matrix too long for a message, and the lag alert while the reference
stage can't be read."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from unittest.mock import patch

import psycopg
import pytest
from sqlalchemy import text

from bot.cli import main
from tests.conftest import CHANNEL, message_text
from tests.health_support import T0, health_factory
from tests.schema_support import (
    Migration,
    drizzle_migrate,
    drizzle_v1_migrate,
    drizzle_v1_upgrade,
    execute,
    platform_migrations,
    v1_name,
    write_journal_folder,
    write_v1_folder,
)


@pytest.fixture
def make_health(bot_db_url, fake_slack):
    yield from health_factory(bot_db_url, fake_slack)


WHEN = 1_740_000_000_000  # 2025-02-19T21:20:00Z
HOUR = 3_600_000


def billing_migrations() -> list[Migration]:
    """An app's migrations with drizzle-kit 0.x `when`s (milliseconds, never on a whole second)."""
    return [
        Migration(
            "0000_calm_wolverine",
            WHEN + 417,
            'CREATE TABLE "invoices" (\n\t"id" serial PRIMARY KEY NOT NULL,\n\t"total" integer NOT NULL\n);\n',
        ),
        Migration("0001_brave_storm", WHEN + HOUR + 88, 'ALTER TABLE "invoices" ADD COLUMN "paid_at" bigint;\n'),
        Migration(
            "0002_quiet_hulk", WHEN + 2 * HOUR + 951, 'CREATE INDEX "invoices_paid_idx" ON "invoices" ("paid_at");\n'
        ),
    ]


def test_a_folder_converted_to_the_1x_layout_over_a_0x_table(make_bot, make_empty_db, tmp_path):
    """After `drizzle-kit up` the folders carry `when` to the second; the table still holds 0.x's milliseconds.
    The next migrate is 1.x's: it matches rows to folders by the second, then runs every folder without a row."""
    base = billing_migrations()
    url = make_empty_db()
    assert drizzle_migrate(url, base) == [m.tag for m in base]
    edited = replace(base[1], sql=base[1].sql.replace("bigint", "bigint NOT NULL"))
    # Generated on a branch an hour before 0002 was, merged after it was applied.
    late = Migration("0003_late_branch", WHEN + HOUR + HOUR // 2, 'ALTER TABLE "invoices" ADD COLUMN "note" text;\n')
    folder = write_v1_folder(tmp_path / "drizzle", [base[0], edited, base[2], late])
    bot = make_bot({"dev": url}, MIGRATIONS_DIR=str(folder))

    before = message_text(bot.command("migrations --stage dev").message())
    assert f"`{v1_name(base[1])}` *edited*" in before, before
    assert f"`{v1_name(late)}` pending" in before and "skipped" not in before.lower()
    assert "unknown" not in before
    assert f"2 applied: `{v1_name(base[0])}`, `{v1_name(base[2])}`" in before

    # drizzle-orm 1.x upgrades the table (names backfilled, applied_at NULL), then runs what has no row.
    drizzle_v1_upgrade(url, [base[0], edited, base[2], late])
    upgraded = message_text(bot.command("migrations --stage dev").message())
    assert f"`{v1_name(base[1])}` *edited*" in upgraded and f"`{v1_name(late)}` pending" in upgraded
    assert f"newest `{v1_name(base[2])}` (generated 2025-02-19 23:20 UTC)" in upgraded
    assert drizzle_v1_migrate(url, [base[0], edited, base[2], late]) == [v1_name(late)]
    after = message_text(bot.command("migrations --stage dev").message())
    assert "pending" not in after and f"`{v1_name(base[1])}` *edited*" in after
    assert f"3 applied: `{v1_name(base[0])}`, `{v1_name(late)}`, `{v1_name(base[2])}`" in after


def test_a_journal_read_by_0x_skips_older_entries_even_on_a_1x_table(make_bot, make_empty_db, tmp_path):
    """The folder's layout says which migrator runs: a journal is drizzle-orm 0.x's, whatever columns the table has."""
    base = billing_migrations()
    url = make_empty_db()
    drizzle_migrate(url, base)
    drizzle_v1_upgrade(url, base)
    late = Migration("0003_late_branch", WHEN + HOUR + HOUR // 2, 'ALTER TABLE "invoices" ADD COLUMN "note" text;\n')
    write_journal_folder(tmp_path / "migrations", [*base, late])
    bot = make_bot({"dev": url}, MIGRATIONS_DIR=str(tmp_path / "migrations"))
    shown = message_text(bot.command("migrations --stage dev").message())
    assert "`0003_late_branch` *skipped*" in shown and "unknown" not in shown, shown
    assert drizzle_migrate(url, [*base, late]) == []  # as said: 0.x never runs it


def test_the_hash_is_of_the_text_node_reads(make_bot, make_empty_db, tmp_path):
    """drizzle hashes `readFileSync().toString()`: a byte that is not UTF-8 is read as U+FFFD."""
    raw = b'-- r\xe9sum\xe9 of invoices\nCREATE TABLE "resumes" ("id" integer);\n'
    as_read = raw.decode("utf-8", errors="replace")
    assert as_read.count("\ufffd") == 2
    url = make_empty_db()
    migration = Migration("0000_latin1_comment", WHEN, as_read)
    drizzle_migrate(url, [migration])  # records sha256 of the text as read
    folder = tmp_path / "migrations"
    write_journal_folder(folder, [migration])
    (folder / "0000_latin1_comment.sql").write_bytes(raw)  # the file as it is on disk
    assert migration.hash != hashlib.sha256(raw).hexdigest()
    bot = make_bot({"dev": url}, MIGRATIONS_DIR=str(folder))
    shown = message_text(bot.command("migrations --stage dev").message())
    assert "every migration in the folder is applied" in shown, shown


def many_migrations(count: int) -> list[Migration]:
    return [
        Migration(f"{i:04d}_table_{i}", WHEN + i * HOUR, f'CREATE TABLE "t_{i}" ("id" integer);\n')
        for i in range(count)
    ]


def test_a_long_matrix_and_a_long_stage_list_go_as_files(make_bot, make_empty_db, tmp_path):
    migrations = many_migrations(62)
    write_journal_folder(tmp_path / "migrations", migrations)
    staging, production = make_empty_db(), make_empty_db()
    drizzle_migrate(staging, migrations)
    drizzle_migrate(production, migrations[:5])
    bot = make_bot({"staging": staging, "production": production}, MIGRATIONS_DIR=str(tmp_path / "migrations"))

    matrix = bot.command("migrations").message()
    shown = message_text(matrix)
    assert "57 behind staging" in shown
    assert "… and 17 more: all 57 rows are in the attached `migrations-staging-production.txt`" in shown, shown
    attached = bot.slack.wait_for_file(lambda f: f.filename == "migrations-staging-production.txt")
    assert attached.channel == CHANNEL
    rows = [line.split() for line in attached.text.splitlines() if line.startswith(("00", "migration "))]
    assert rows[0] == ["migration", "staging", "production"]
    assert [r[0] for r in rows[1:]] == [m.tag for m in migrations[5:]]
    assert all(r[1:] == ["applied", "pending"] for r in rows[1:])

    one = bot.command("migrations --stage production").message()
    text_one = message_text(one)
    assert "57 pending" in text_one and "57 behind staging" in text_one
    assert "… and 28 more: every migration's state is in the attached `migrations-production.txt`" in text_one
    listing = bot.slack.wait_for_file(lambda f: f.filename == "migrations-production.txt").text
    states = {line.split()[0]: line.split()[1] for line in listing.splitlines() if line.startswith("00")}
    assert states == {m.tag: "applied" if i < 5 else "pending" for i, m in enumerate(migrations)}


def test_the_lag_alert_and_its_clock_hold_while_the_reference_cannot_be_read(make_health, make_empty_db, tmp_path):
    base = platform_migrations()
    write_journal_folder(tmp_path / "migrations", base)
    staging, production = make_empty_db(), make_empty_db()
    drizzle_migrate(staging, base)
    drizzle_migrate(production, base[:3])
    health = make_health(
        {"staging": staging, "production": production},
        MIGRATIONS_DIR=str(tmp_path / "migrations"),
        MIGRATION_LAG_ALERT_HOURS="1",
    )
    scheduler = health.runtime.scheduler
    assert scheduler.run_slot("schema:migrations", now=T0)
    with health.runtime.bot_engine.begin() as conn:
        conn.execute(text("UPDATE migration_lag SET first_seen_at = now() - interval '2 hours'"))
    assert scheduler.run_slot("schema:migrations", now=T0 + 86_400)
    health.deliver()
    assert ["production is 2 migrations behind staging" in str(p.payload) for p in health.posts()] == [True]

    def lag_rows() -> list[tuple[str, str]]:
        with health.runtime.bot_engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text("SELECT stage, migration FROM migration_lag ORDER BY 2"))]

    kept = lag_rows()
    # The reference's table can't be read for a while: no verdict on the lag, nothing resolves or restarts.
    execute(staging, "ALTER TABLE drizzle.__drizzle_migrations RENAME TO __drizzle_migrations_moved")
    assert scheduler.run_slot("schema:migrations", now=T0 + 2 * 86_400)
    health.sync()
    assert {(r.stage, r.object): r.state for r in health.alert_rows()} == {("production", "behind:staging"): "firing"}
    assert lag_rows() == kept and len(kept) == 2
    execute(staging, "ALTER TABLE drizzle.__drizzle_migrations_moved RENAME TO __drizzle_migrations")
    assert scheduler.run_slot("schema:migrations", now=T0 + 3 * 86_400)
    health.deliver()
    assert len(health.posts()) == 1
    assert {(r.stage, r.object): r.state for r in health.alert_rows()} == {("production", "behind:staging"): "firing"}


def test_the_app_folder_is_searched_and_a_folder_without_migrations_is_said(make_bot, make_empty_db, tmp_path):
    base = billing_migrations()
    url = make_empty_db()
    drizzle_migrate(url, base)
    app = tmp_path / "app"
    write_journal_folder(app / "drizzle", base)  # drizzle-kit's default `out`, beside the app's other folders
    (app / "src").mkdir()
    bot = make_bot({"dev": url}, MIGRATIONS_DIR=str(app))
    shown = message_text(bot.command("migrations --stage dev").message())
    assert "every migration in the folder is applied" in shown and "3 migrations in MIGRATIONS_DIR" in shown, shown

    empty = tmp_path / "empty"
    (empty / "meta").mkdir(parents=True)
    bot = make_bot({"dev": url}, MIGRATIONS_DIR=str(empty))
    reply = bot.command("migrations --stage dev").message()
    assert reply["response_type"] == "ephemeral"
    assert "MIGRATIONS_DIR holds no Drizzle migrations: no meta/_journal.json" in reply["text"], reply
    assert "Traceback" not in str(reply)

    # A journal listing a file that is not there, and a journal that is not JSON: one line each.
    gap = write_journal_folder(tmp_path / "gap", base)
    (gap / "0001_brave_storm.sql").unlink()
    broken = write_journal_folder(tmp_path / "broken", base)
    (broken / "meta" / "_journal.json").write_text('{"entries": [')
    for folder, expected in (
        (gap, "MIGRATIONS_DIR lists a migration whose file is missing: 0001_brave_storm.sql"),
        (broken, "MIGRATIONS_DIR could not be read (JSONDecodeError): expected drizzle-kit's out folder"),
    ):
        reply = make_bot({"dev": url}, MIGRATIONS_DIR=str(folder)).command("migrations").message()
        assert reply["response_type"] == "ephemeral" and expected in reply["text"], reply
        assert "Traceback" not in str(reply)


def test_a_migration_recorded_twice_by_concurrent_runs(make_bot, make_health, make_empty_db, tmp_path):
    """Two migrates started together both read the same newest row (Drizzle takes no lock); with idempotent
    statements both commit, and the table records the migration twice: not an unknown row, a repeat."""
    base = billing_migrations()
    write_journal_folder(tmp_path / "migrations", base)
    staging, production = make_empty_db(), make_empty_db()
    drizzle_migrate(staging, base)
    drizzle_migrate(production, base[:1])
    # The second run's row for 0001 and 0002, as its transaction commits after the first's.
    drizzle_migrate(production, base)
    execute(
        production,
        "INSERT INTO drizzle.__drizzle_migrations (hash, created_at)"
        " SELECT hash, created_at FROM drizzle.__drizzle_migrations WHERE id > 1 ORDER BY id",
    )
    env = {"MIGRATIONS_DIR": str(tmp_path / "migrations")}
    bot = make_bot({"staging": staging, "production": production}, **env)
    one = message_text(bot.command("migrations --stage production").message())
    assert "`0001_brave_storm` recorded 2 times (rows 2, 4): it ran more than once" in one, one
    assert "`0002_quiet_hulk` recorded 2 times (rows 3, 5)" in one
    assert "unknown" not in one and "2 applied more than once" in one
    matrix = message_text(bot.command("migrations").message())
    assert "0001_brave_storm  applied  applied x2" in matrix, matrix

    health = make_health({"staging": staging, "production": production}, **env)
    assert health.runtime.scheduler.run_slot("schema:migrations", now=T0)
    health.deliver()
    posted = sorted(str(p.payload["text"]) for p in health.posts())
    assert len(posted) == 2 and all("applied 2 times on production" in p for p in posted), posted


def test_a_row_without_created_at_makes_the_next_migrate_run_everything_again(make_bot, make_empty_db, tmp_path):
    base = billing_migrations()
    late = Migration("0003_late_branch", WHEN + HOUR + HOUR // 2, 'ALTER TABLE "invoices" ADD COLUMN "note" text;\n')
    write_journal_folder(tmp_path / "migrations", [*base, late])
    url = make_empty_db()
    drizzle_migrate(url, base)
    # The skipped migration applied by hand and recorded, but without its created_at.
    execute(url, late.sql)
    execute(url, f"INSERT INTO drizzle.__drizzle_migrations (hash) VALUES ('{late.hash}')")
    bot = make_bot({"dev": url}, MIGRATIONS_DIR=str(tmp_path / "migrations"))
    shown = message_text(bot.command("migrations --stage dev").message())
    assert "row 4 has no created_at" in shown and "runs all 4 migrations of the journal again" in shown, shown
    assert "the next migrate reruns every migration" in shown
    with pytest.raises(psycopg.errors.DuplicateTable):  # as said: 0000 runs again
        drizzle_migrate(url, [*base, late])


def test_a_table_of_another_shape_is_a_line_not_an_error(make_bot, make_empty_db):
    url = make_empty_db()
    execute(url, "CREATE SCHEMA drizzle; CREATE TABLE drizzle.__drizzle_migrations (version text PRIMARY KEY)")
    bot = make_bot({"dev": url})
    shown = message_text(bot.command("migrations --stage dev").message())
    assert "*dev*: :grey_question: drizzle.__drizzle_migrations is not a Drizzle migrations table" in shown, shown


def test_check_config_reads_the_migrations_folder(tmp_path, capsys):
    write_journal_folder(tmp_path / "app" / "migrations", billing_migrations())
    (tmp_path / "bare").mkdir()
    base = {"BOT_DATABASE_URL": "postgresql://u@h/bot", "DATABASE_URL_DEV": "postgresql://u@h/dev"}
    for folder, expected in (
        ("app", f"migrations: {tmp_path / 'app'} (3 migrations, journal); table drizzle.__drizzle_migrations"),
        ("bare", "warning: MIGRATIONS_DIR holds no Drizzle migrations"),
    ):
        with patch.dict(os.environ, {**base, "MIGRATIONS_DIR": str(tmp_path / folder)}, clear=True):
            assert main(["check-config", "--no-slack"]) == 0
        assert expected in capsys.readouterr().out
