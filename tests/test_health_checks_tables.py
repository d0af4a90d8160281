"""The DBA's checks (issue 17) on tables and indexes of a database on the shared cluster: duplicate, redundant
and unused indexes, NOT VALID constraints, tables full of dead rows, size growth. Each condition is induced on
real PostgreSQL: one alert, then its resolution.
"""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy import text

from tests.conftest import eventually
from tests.health_support import Health, posted_texts
from tests.test_health_checks import firing, make_health, plain_db, resolves, run

__all__ = ["make_health", "plain_db"]  # fixtures used below


# -- indexes and constraints ------------------------------------------------------------------------------


def test_a_duplicate_index_alerts_once_and_resolves_when_dropped_and_ignored_schemas_are_not_checked(
    make_health, plain_db
):
    run(
        plain_db,
        "CREATE TABLE orders (id int PRIMARY KEY, customer int, placed date, note text)",
        "CREATE INDEX orders_customer_placed ON orders (customer, placed)",
        "CREATE INDEX orders_customer ON orders (customer)",  # a prefix of the one above: redundant
        "CREATE INDEX orders_placed_desc ON orders (placed DESC)",  # another ordering: kept
        "CREATE UNIQUE INDEX orders_note_uq ON orders (note)",
        "CREATE INDEX orders_note ON orders (note) WHERE note IS NOT NULL",  # partial: kept
        "CREATE SCHEMA inngest",
        "CREATE TABLE inngest.runs (id int, fn text)",
        "CREATE INDEX runs_fn ON inngest.runs (fn)",
        "CREATE INDEX runs_fn_again ON inngest.runs (fn)",
    )
    health = make_health({"dev": plain_db}, HEALTH_IGNORE="inngest")
    health.run("fk_indexes")
    [post] = health.posts()
    [row] = firing(health)
    assert (row.check_name, row.object) == ("duplicate_index", "public.orders_customer")
    posted = posted_texts([post])[0]
    assert "index public.orders_customer is made redundant by public.orders_customer_placed" in posted
    assert "DROP INDEX CONCURRENTLY public.orders_customer;" in posted

    run(plain_db, "DROP INDEX orders_customer")
    resolves(health, "fk_indexes", "duplicate_index", runs=1)
    assert len(health.posts()) == 1


def test_duplicate_indexes_of_the_platform_schema(make_health, stage_db):
    health = make_health({"dev": stage_db.url})
    stage = health.runtime.stages.get("dev")
    from bot.health.checks import checks_in

    result = health.runtime.health.round(stage, [s for s in checks_in("fk_indexes") if s.name == "duplicate_index"])
    [report] = result.reports
    [finding] = report.findings  # the unique constraint on (user, walkthrough, step) leads with the index's columns
    assert finding.object == "public.wsc_user_walkthrough_idx"
    assert finding.title == (
        "index public.wsc_user_walkthrough_idx is made redundant by public.walkthrough_step_completions_uq"
    )


def test_a_not_valid_constraint_alerts_once_and_resolves_when_validated(make_health, plain_db):
    run(
        plain_db,
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int)",
        "INSERT INTO accounts VALUES (1, 10), (2, 20)",
        "ALTER TABLE accounts ADD CONSTRAINT balance_positive CHECK (balance > 0) NOT VALID",
    )
    health = make_health({"dev": plain_db})
    health.run("fk_indexes")
    health.run("fk_indexes")
    [post] = health.posts()
    [row] = firing(health)
    assert (row.check_name, row.object) == ("not_valid_constraint", "public.accounts.balance_positive")
    assert "ALTER TABLE public.accounts VALIDATE CONSTRAINT balance_positive;" in posted_texts([post])[0]
    run(plain_db, "ALTER TABLE accounts VALIDATE CONSTRAINT balance_positive")
    resolves(health, "fk_indexes", "not_valid_constraint", runs=1)


def _statistics_age(health: Health, days: int, *objects: tuple[str, str]) -> None:
    """Pretend the bot has watched these (kind, object) for `days` days."""
    with health.runtime.bot_engine.begin() as conn:
        for kind, obj in objects:
            conn.execute(
                text(
                    "INSERT INTO health_samples (stage, kind, object, taken_at, value)"
                    " VALUES ('dev', :kind, :obj, now() - make_interval(days => :days), 0)"
                ),
                {"kind": kind, "obj": obj, "days": days},
            )


def test_unused_indexes_are_suggested_only_on_old_statistics_and_never_for_foreign_keys(make_health, plain_db):
    run(
        plain_db,
        "CREATE TABLE customers (id int PRIMARY KEY)",
        "CREATE TABLE invoices (id int PRIMARY KEY, customer int REFERENCES customers, status text)",
        "INSERT INTO customers SELECT generate_series(1, 100)",
        "INSERT INTO invoices SELECT i, i % 100 + 1, 'open' FROM generate_series(1, 20000) i",
        "CREATE INDEX invoices_status ON invoices (status)",
        "CREATE INDEX invoices_customer ON invoices (customer)",  # serves the foreign key
    )
    health = make_health({"dev": plain_db}, UNUSED_INDEX_MIN_MB="0")
    stage = health.runtime.stages.get("dev")

    def unused() -> Any:
        summary = health.runtime.health.run_now(stage)
        [report] = [r for r in summary.round.reports if r.check == "unused_index"]
        return report

    young = unused()
    assert young.findings == [] and "(1 more on statistics younger than 7 days)" in young.summary
    _statistics_age(health, 8, ("stats_epoch", "never reset"), ("index_seen", "public.invoices_status"))
    [finding] = unused().findings
    assert finding.object == "public.invoices_status"
    assert "has not been used in 8 days" in finding.title
    assert "DROP INDEX CONCURRENTLY public.invoices_status;" in finding.advice


# -- tables not vacuumed -------------------------------------------------------------------------------


def test_a_table_full_of_dead_rows_with_autovacuum_off_alerts_once_and_resolves_after_vacuum(make_health, plain_db):
    run(
        plain_db,
        "CREATE TABLE jobs (id int PRIMARY KEY, payload text) WITH (autovacuum_enabled = false)",
        "INSERT INTO jobs SELECT i, 'x' FROM generate_series(1, 2000) i",
    )
    run(plain_db, "SELECT pg_stat_force_next_flush()", "DELETE FROM jobs WHERE id <= 1000")
    dead = "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'jobs'"
    assert eventually(lambda: psycopg.connect(plain_db, autocommit=True).execute(dead).fetchone()[0] >= 1000)
    health = make_health({"dev": plain_db})
    health.run("maintenance")
    health.run("maintenance")
    [post] = health.posts()
    [row] = firing(health)
    assert (row.check_name, row.object) == ("stale_vacuum", "public.jobs")
    posted = posted_texts([post])[0]
    assert "public.jobs: 50% dead rows, never vacuumed" in posted
    assert "ALTER TABLE public.jobs RESET (autovacuum_enabled);" in posted and "VACUUM (ANALYZE, VERBOSE)" in posted
    run(plain_db, "VACUUM jobs")
    resolves(health, "maintenance", "stale_vacuum", runs=1)
    assert len(health.posts()) == 1


# -- size growth -----------------------------------------------------------------------------


def test_growth_is_measured_against_the_oldest_kept_sample_in_the_window(make_health, plain_db):
    run(
        plain_db,
        "CREATE TABLE logs (id int, line text)",
        "INSERT INTO logs SELECT i, 'x' FROM generate_series(1, 5000) i",
    )
    health = make_health({"dev": plain_db}, GROWTH_MIN_MB="0")
    health.run("fk_indexes")
    assert health.posts() == []  # the first sample: nothing to compare with yet
    with health.runtime.bot_engine.begin() as conn:
        conn.execute(text("UPDATE health_samples SET taken_at = now() - interval '6 days', value = value / 2"))
    health.run("fk_indexes")
    [post] = health.posts()
    posted = posted_texts([post])[0]
    assert "database grew 100% in 6 days" in posted  # over the span the kept samples cover
    assert "public.logs" in posted and "(+100%)" in posted
