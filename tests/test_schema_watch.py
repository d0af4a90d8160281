"""The scheduled migration check: skipped, edited and unknown migrations and a protected stage behind the
reference raise alerts through the health alert lifecycle, once, and resolve when fixed."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import text

from bot.schema.watch import DAILY_JOB
from tests.health_support import T0, health_factory
from tests.schema_support import BREAKPOINT, drizzle_migrate, execute, platform_migrations, write_journal_folder
from tests.test_schema_migrations import branch_migration, hotfix_migration


@pytest.fixture
def make_health(bot_db_url, fake_slack):
    yield from health_factory(bot_db_url, fake_slack)


def test_skipped_and_lagging_stages_alert_once_and_resolve(make_health, make_empty_db, tmp_path):
    base, branch = platform_migrations(), branch_migration()
    folder = [*base, branch]
    write_journal_folder(tmp_path / "migrations", folder)
    staging, production, dev = make_empty_db(), make_empty_db(), make_empty_db()
    drizzle_migrate(staging, base)
    drizzle_migrate(staging, folder)  # the branch migration is older than 0004: skipped on staging
    drizzle_migrate(production, base[:3])  # production lacks 0003 and 0004, which staging has
    drizzle_migrate(dev, base[:3])  # so does dev, which is not protected: no lag alert, no clock

    health = make_health(
        {"staging": staging, "production": production, "dev": dev},
        MIGRATIONS_DIR=str(tmp_path / "migrations"),
        MIGRATION_LAG_ALERT_HOURS="1",
    )
    scheduler = health.runtime.scheduler
    assert scheduler.jobs[DAILY_JOB].interval_s == 86_400
    startup = [name for name in scheduler.jobs if name.startswith(f"{DAILY_JOB}:start:")]
    assert len(startup) == 1  # this process's run after start

    assert scheduler.run_slot(startup[0], now=T0)
    health.deliver()
    posts = health.posts()
    assert len(posts) == 1, [p.payload["text"] for p in posts]
    skipped = str(posts[0].payload["blocks"])
    assert "migration 0005_branch_support_index was skipped on staging" in skipped and "CRITICAL" in skipped
    # Behind for less than MIGRATION_LAG_ALERT_HOURS: not yet an alert.
    with health.runtime.bot_engine.begin() as conn:
        rows = conn.execute(text("SELECT stage, migration FROM migration_lag ORDER BY migration")).all()
        assert [tuple(r) for r in rows] == [
            ("production", "0003_server_description"),
            ("production", "0004_walkthrough_public"),
        ]
        conn.execute(text("UPDATE migration_lag SET first_seen_at = now() - interval '2 hours'"))

    assert scheduler.run_slot(DAILY_JOB, now=T0 + 86_400)
    health.deliver()
    posts = health.posts()
    assert len(posts) == 2
    lag = str(posts[1].payload["blocks"])
    assert "production is 2 migrations behind staging" in lag
    assert "0003_server_description, 0004_walkthrough_public" in lag

    # The same findings again (the next day, or another replica's start): nothing new is posted.
    assert scheduler.run_slot(DAILY_JOB, now=T0 + 2 * 86_400)
    health.deliver()
    assert len(health.posts()) == 2

    assert {r.stage for r in health.alert_rows()} == {"staging", "production"}

    # Fixed: production migrated (the branch migration is newer than its newest, so it runs there too);
    # on staging the skipped migration is applied by hand and recorded as Drizzle would.
    assert drizzle_migrate(production, folder) == [base[3].tag, base[4].tag, branch.tag]
    for statement in branch.sql.split(BREAKPOINT):
        execute(staging, statement)
    execute(
        staging,
        f"INSERT INTO drizzle.__drizzle_migrations (hash, created_at) VALUES ('{branch.hash}', {branch.when})",
    )
    assert scheduler.run_slot(DAILY_JOB, now=T0 + 3 * 86_400)
    health.sync()
    states = {(r.stage, r.object): r.state for r in health.alert_rows()}
    assert states == {
        ("staging", "skipped:0005_branch_support_index"): "resolved",
        ("production", "behind:staging"): "resolved",
    }
    assert len(health.posts()) == 2  # resolving edits the messages and replies in their threads
    updates = health.updates()
    assert len(updates) == 2 and all("RESOLVED" in str(u.payload["blocks"]) for u in updates)
    assert sum("resolved" in r.payload["text"].lower() for r in health.replies()) == 2
    with health.runtime.bot_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM migration_lag")).scalar_one() == 0
    assert [a.outcome for a in health.audit()] == ["firing", "firing", "resolved", "resolved"]


def test_edited_and_unknown_migrations_alert_once_and_resolve(make_health, make_empty_db, tmp_path):
    base = platform_migrations()
    url = make_empty_db()
    drizzle_migrate(url, [*base[:3], hotfix_migration()])  # a hotfix applied from a branch that never merged
    edited = replace(base[1], sql=base[1].sql.replace("coalesce(NEW.created_at, 0)", "coalesce(NEW.created_at, 1)"))
    folder = write_journal_folder(tmp_path / "migrations", [base[0], edited, base[2]])
    health = make_health({"dev": url}, MIGRATIONS_DIR=str(folder))
    scheduler = health.runtime.scheduler
    [startup] = [name for name in scheduler.jobs if name.startswith(f"{DAILY_JOB}:start:")]

    assert scheduler.run_slot(startup, now=T0)
    health.deliver()
    posted = sorted(str(p.payload["blocks"]) for p in health.posts())
    assert len(posted) == 2, posted
    assert "applied migration 0001_support_touch_trigger was edited" in posted[0] and "WARNING" in posted[0]
    assert "unknown migration recorded on dev" in posted[1]
    assert f"hash {hotfix_migration().hash[:16]}" in posted[1]
    states = {r.object: r.state for r in health.alert_rows()}
    assert states == {
        "edited:0001_support_touch_trigger": "firing",
        f"unknown:{hotfix_migration().hash[:16]}": "firing",
    }

    # The next day, the same findings: nothing new is posted.
    assert scheduler.run_slot(DAILY_JOB, now=T0 + 86_400)
    health.deliver()
    assert len(health.posts()) == 2

    # Fixed: the applied text put back in the file, the hotfix added to the folder as the migration it is.
    write_journal_folder(folder, [*base[:3], hotfix_migration()])
    assert scheduler.run_slot(DAILY_JOB, now=T0 + 2 * 86_400)
    health.sync()
    assert {r.object: r.state for r in health.alert_rows()} == {
        "edited:0001_support_touch_trigger": "resolved",
        f"unknown:{hotfix_migration().hash[:16]}": "resolved",
    }
    assert len(health.posts()) == 2
    assert len(health.updates()) == 2 and all("RESOLVED" in str(u.payload["blocks"]) for u in health.updates())


def test_a_folder_that_cannot_be_read_is_one_alert_and_the_stages_alerts_stay(make_health, make_empty_db, tmp_path):
    base = platform_migrations()
    staging, production = make_empty_db(), make_empty_db()
    drizzle_migrate(staging, [*base, hotfix_migration()])  # an unknown row on staging
    drizzle_migrate(production, base)
    folder = write_journal_folder(tmp_path / "migrations", base)
    health = make_health({"staging": staging, "production": production}, MIGRATIONS_DIR=str(folder))
    scheduler = health.runtime.scheduler
    [startup] = [name for name in scheduler.jobs if name.startswith(f"{DAILY_JOB}:start:")]
    assert scheduler.run_slot(startup, now=T0)
    health.deliver()
    assert len(health.posts()) == 1  # the unknown row

    # A deploy that ships the journal without one of its files: one alert, on the reference stage.
    kept = (folder / f"{base[1].tag}.sql").read_bytes()
    (folder / f"{base[1].tag}.sql").unlink()
    for day in (1, 2):
        assert scheduler.run_slot(DAILY_JOB, now=T0 + day * 86_400)
        health.deliver()
    posts = health.posts()
    assert len(posts) == 2, [p.payload["text"] for p in posts]
    posted = str(posts[1].payload["blocks"])
    assert "the migration check cannot read MIGRATIONS_DIR" in posted
    assert f"MIGRATIONS_DIR lists a migration whose file is missing: {base[1].tag}.sql" in posted
    states = {(r.stage, r.check_name): r.state for r in health.alert_rows()}
    assert states == {("staging", "migrations"): "firing", ("staging", "migrations_folder"): "firing"}

    (folder / f"{base[1].tag}.sql").write_bytes(kept)
    assert scheduler.run_slot(DAILY_JOB, now=T0 + 3 * 86_400)
    health.sync()
    states = {(r.stage, r.check_name): r.state for r in health.alert_rows()}
    assert states == {("staging", "migrations"): "firing", ("staging", "migrations_folder"): "resolved"}
    assert len(health.posts()) == 2
