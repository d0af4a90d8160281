"""The catalog checks of issue 17 on schemas shaped unlike the platform's: sequences fed through a DEFAULT
from another schema and descending ones, duplicate-index rules (covering, partitioned, operator classes,
collations, expressions, predicates), NOT VALID constraints of partitioned and inherited tables and of domains, the
holder of the vacuum horizon among sessions of the same xid age, autovacuum turned off in any spelling of false. Each
condition gives exactly one alert, which resolves when the condition is removed.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import eventually
from tests.health_support import posted_texts
from tests.test_health_checks import firing, make_health, plain_db, run

__all__ = ["make_health", "plain_db"]  # fixtures used below


def by_object(health: Any, check: str) -> dict[str, str]:
    """Firing alerts of `check`: object -> the text of its post."""
    posts = {p.payload["text"]: p for p in health.posts()}
    rows = [r for r in firing(health) if r.check_name == check]
    return {r.object: next(posted_texts([p])[0] for t, p in posts.items() if r.title in t) for r in rows}


def resolves_at_once(health: Any, group: str, check: str, obj: str) -> None:
    """One more run of `group`: the alert of (`check`, `obj`) resolves, and says so in its thread."""
    health.run(group)
    health.sync()
    [row] = [r for r in health.alert_rows() if (r.check_name, r.object) == (check, obj)]
    assert row.state == "resolved"
    [reply] = [r for r in health.replies() if r.payload["thread_ts"] == row.ts]
    assert "Resolved after" in reply.payload["text"]


def test_sequences_fed_through_a_default_or_counting_down_are_measured_against_their_column(make_health, plain_db):
    run(
        plain_db,
        "CREATE SCHEMA ids",
        "CREATE SEQUENCE ids.order_numbers",  # bigint, in another schema than the column it feeds
        "CREATE TABLE orders (number int DEFAULT nextval('ids.order_numbers'), note text)",
        "SELECT setval('ids.order_numbers', 2040109465)",  # 95% of the column's integer
        "CREATE TABLE refunds (id int GENERATED ALWAYS AS IDENTITY (INCREMENT BY -1), note text)",
        "SELECT setval(pg_get_serial_sequence('refunds', 'id'), -1717986918)",  # 80% of integer, downwards
        "CREATE SEQUENCE ids.roomy",  # bigint, fed to nothing: far from its end
        "SELECT setval('ids.roomy', 2040109465)",
    )
    health = make_health({"dev": plain_db})
    health.run("maintenance")
    health.run("maintenance")
    posted = by_object(health, "sequences")
    assert set(posted) == {"ids.order_numbers", "public.refunds_id_seq"}
    assert "public.orders.number (integer) has used 95% of its values" in posted["ids.order_numbers"]
    assert "the limit set by the column's type integer" in posted["ids.order_numbers"]
    assert "ALTER TABLE public.orders ALTER COLUMN number TYPE bigint;" in posted["ids.order_numbers"]
    refunds = posted["public.refunds_id_seq"]
    assert "public.refunds.id (integer, identity) has used 80% of its values" in refunds
    assert "at -1,717,986,918 of -2,147,483,648" in refunds and "reached minimum value of sequence" in refunds
    assert len(health.posts()) == 2

    run(plain_db, "ALTER TABLE orders ALTER COLUMN number TYPE bigint")  # the sequence is bigint already
    resolves_at_once(health, "maintenance", "sequences", "ids.order_numbers")
    assert [r.object for r in firing(health)] == ["public.refunds_id_seq"]
    assert len(health.posts()) == 2


def test_duplicate_index_rules_on_covering_partitioned_and_lookalike_indexes(make_health, plain_db):
    run(
        plain_db,
        'CREATE TABLE docs (a int, b text, c text COLLATE "C", d int)',
        "CREATE INDEX docs_a ON docs (a)",
        "CREATE INDEX docs_a_cover ON docs (a) INCLUDE (d)",  # newer, and covers more: docs_a goes
        "CREATE INDEX docs_b ON docs (b)",
        "CREATE INDEX docs_b_pattern ON docs (b text_pattern_ops)",  # another operator class: kept
        'CREATE INDEX docs_c_posix ON docs (c COLLATE "POSIX")',  # another collation than docs_c: kept
        "CREATE INDEX docs_c ON docs (c)",
        "CREATE INDEX docs_lower_b ON docs (lower(b))",
        "CREATE INDEX docs_upper_b ON docs (upper(b))",  # another expression: kept
        "CREATE INDEX docs_d_pos ON docs (d) WHERE d > 0",
        "CREATE INDEX docs_d_big ON docs (d) WHERE d > 100",  # another predicate: kept
        "CREATE UNIQUE INDEX docs_d_uq ON docs (d)",
        "CREATE INDEX docs_d_a ON docs (d, a)",  # a unique index is never made redundant by a longer one
        "CREATE TABLE events (at date, kind int) PARTITION BY RANGE (at)",
        "CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
        "CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
        "CREATE INDEX events_at ON events (at)",
        "CREATE INDEX events_at_kind ON events (at, kind)",  # one alert for the partitioned index, not one each
    )
    health = make_health({"dev": plain_db})
    health.run("fk_indexes")
    posted = by_object(health, "duplicate_index")
    assert set(posted) == {"public.docs_a", "public.events_at"}
    assert "index public.docs_a is made redundant by public.docs_a_cover" in posted["public.docs_a"]
    assert "DROP INDEX CONCURRENTLY public.docs_a;" in posted["public.docs_a"]
    partitioned = posted["public.events_at"]
    assert "index public.events_at is made redundant by public.events_at_kind" in partitioned
    assert "`DROP INDEX public.events_at;`" in partitioned and "cannot be dropped CONCURRENTLY" in partitioned
    [events] = [p for p in health.posts() if "public.events_at " in p.payload["text"]]
    assert "Drop index" not in str(events.payload.get("blocks"))  # its button would drop CONCURRENTLY: refused
    [docs] = [p for p in health.posts() if "public.docs_a " in p.payload["text"]]
    assert "Drop index" in str(docs.payload.get("blocks"))

    run(plain_db, "DROP INDEX events_at")
    resolves_at_once(health, "fk_indexes", "duplicate_index", "public.events_at")
    assert [r.object for r in firing(health)] == ["public.docs_a"]


def test_a_not_valid_constraint_of_a_partitioned_or_inherited_table_alerts_once(make_health, plain_db):
    run(
        plain_db,
        "CREATE TABLE readings (at date, value int) PARTITION BY RANGE (at)",
        "CREATE TABLE readings_2024 PARTITION OF readings FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
        "CREATE TABLE readings_2025 PARTITION OF readings FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
        "ALTER TABLE readings ADD CONSTRAINT value_positive CHECK (value > 0) NOT VALID",
        "CREATE TABLE shapes (sides int)",
        "CREATE TABLE squares () INHERITS (shapes)",
        "ALTER TABLE shapes ADD CONSTRAINT sides_positive CHECK (sides > 0) NOT VALID",
    )
    health = make_health({"dev": plain_db})
    health.run("fk_indexes")
    posted = by_object(health, "not_valid_constraint")
    assert set(posted) == {"public.readings.value_positive", "public.shapes.sides_positive"}
    assert "ALTER TABLE public.readings VALIDATE CONSTRAINT value_positive;" in posted["public.readings.value_positive"]
    assert len(health.posts()) == 2

    run(plain_db, "ALTER TABLE readings VALIDATE CONSTRAINT value_positive")  # validates the partitions' too
    resolves_at_once(health, "fk_indexes", "not_valid_constraint", "public.readings.value_positive")
    assert [r.object for r in firing(health)] == ["public.shapes.sides_positive"]


def test_the_horizon_is_held_by_the_writer_not_by_an_older_session_whose_snapshot_waits_on_it(make_health, plain_db):
    import psycopg

    run(plain_db, "CREATE TABLE ledger (id int)")
    reader = psycopg.connect(plain_db, application_name="report")
    writer = psycopg.connect(plain_db, application_name="importer")
    try:
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # its transaction starts first
        writer.execute("INSERT INTO ledger VALUES (1)")  # holds an xid, idle in transaction
        reader.execute("SELECT count(*) FROM ledger")  # its snapshot's xmin is the writer's xid: the same age
        health = make_health({"dev": plain_db}, XMIN_HORIZON_SECONDS="0")
        for _ in range(3):
            health.run("activity")
        [row] = [r for r in firing(health) if r.check_name == "vacuum_horizon"]
        assert row.object.startswith(f"backend pid {writer.info.backend_pid} since ")
        assert f"vacuum held back by session pid {writer.info.backend_pid}" in posted_texts(health.posts())[0]
        assert len(health.posts()) == 1
    finally:
        writer.close()
        reader.close()
    resolves_at_once(health, "activity", "vacuum_horizon", row.object)


def test_a_not_valid_check_of_a_domain_alerts_once_and_resolves_when_validated(make_health, plain_db):
    run(
        plain_db,
        "CREATE DOMAIN quantity AS int",
        "CREATE TABLE stock (item text, on_hand quantity)",
        "INSERT INTO stock VALUES ('bolt', -3)",
        "ALTER DOMAIN quantity ADD CONSTRAINT quantity_not_negative CHECK (VALUE >= 0) NOT VALID",
    )
    health = make_health({"dev": plain_db})
    health.run("fk_indexes")
    posted = by_object(health, "not_valid_constraint")
    assert list(posted) == ["public.quantity.quantity_not_negative"]
    text = posted["public.quantity.quantity_not_negative"]
    assert "check constraint quantity_not_negative of domain public.quantity is NOT VALID" in text
    assert "ALTER DOMAIN public.quantity VALIDATE CONSTRAINT quantity_not_negative;" in text
    run(plain_db, "UPDATE stock SET on_hand = 0", "ALTER DOMAIN quantity VALIDATE CONSTRAINT quantity_not_negative")
    resolves_at_once(health, "fk_indexes", "not_valid_constraint", "public.quantity.quantity_not_negative")
    assert len(health.posts()) == 1


def test_autovacuum_turned_off_in_any_spelling_of_false_is_named_as_the_cause(make_health, plain_db):
    """PostgreSQL keeps a reloption as written: `off`, `0`, `no` (and `f`, `of`) are all false."""
    spellings = {"jobs_off": "off", "jobs_zero": "0", "jobs_no": "no"}
    for table, value in spellings.items():
        run(
            plain_db,
            f"CREATE TABLE {table} (id int PRIMARY KEY) WITH (autovacuum_enabled = {value})",
            f"INSERT INTO {table} SELECT generate_series(1, 400)",
            f"DELETE FROM {table} WHERE id <= 200",
        )
    run(plain_db, "SELECT pg_stat_force_next_flush()")
    health = make_health({"dev": plain_db})
    stage = health.runtime.stages.get("dev")

    def findings() -> list[Any]:
        [report] = [r for r in health.runtime.health.run_now(stage).round.reports if r.check == "stale_vacuum"]
        return report.findings

    found = eventually(lambda: len(findings()) == 3 and findings(), timeout=30)
    assert {f.object for f in found} == {f"public.{t}" for t in spellings}
    for finding in found:
        assert "Autovacuum is turned off for this table" in finding.advice, finding
        assert f"ALTER TABLE {finding.object} RESET (autovacuum_enabled);" in finding.advice
