"""`/mcp drift`: two stages' catalogs compared, on databases built by real-looking Drizzle migrations."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event

from bot.config import parse_database_url
from bot.localpg import LocalPostgres, installations
from bot.pgcatalog import read_snapshot
from bot.slacktext.blocks import block_chars
from tests.conftest import CHANNEL, OPERATOR, TEST_SPEC, VIEWER, dead_database_url, message_text, unique_name
from tests.schema_support import Migration, drizzle_migrate, execute, platform_migrations
from tests.test_schema_drift_more import SHOP


@pytest.fixture(scope="module")
def migrated_template(pg: LocalPostgres) -> Iterator[str]:
    """A database built by the platform's migrations, as drizzle-orm's migrator applies them."""
    name = unique_name("drift_template")
    url = pg.create_database(name)
    drizzle_migrate(url, platform_migrations())
    yield name
    pg.drop_database(name)


@pytest.fixture
def migrated_db(pg: LocalPostgres, migrated_template: str) -> Iterator[Callable[[], str]]:
    made: list[str] = []

    def make() -> str:
        name = unique_name("drift")
        made.append(name)
        return pg.create_database(name, template=migrated_template)

    yield make
    for name in made:
        pg.drop_database(name)


def test_two_databases_built_by_the_same_migrations_are_identical(make_bot, pg, migrated_db):
    # Built separately (other OIDs, other order of creation in the catalog), not cloned.
    fresh = unique_name("drift_fresh")
    fresh_url = pg.create_database(fresh)
    try:
        drizzle_migrate(fresh_url, platform_migrations())
        other = migrated_db()
        # Noise that is not the app's schema: another migrations row, an Inngest table (DRIFT_IGNORE).
        execute(other, "INSERT INTO drizzle.__drizzle_migrations (hash, created_at) VALUES ('x', 1)")
        execute(other, "CREATE TABLE inngest_function_runs (run_id text PRIMARY KEY, status int NOT NULL)")
        execute(other, "CREATE INDEX inngest_runs_status ON inngest_function_runs (status)")
        bot = make_bot({"staging": fresh_url, "production": other}, DRIFT_IGNORE="public.inngest_*")
        reply = bot.command("drift staging production", user=VIEWER).message()
        text = reply["text"]
        assert "identical" in text, text
        blocks = str(reply["blocks"])
        assert "drizzle.__drizzle_migrations" in blocks and "public.inngest_*" in blocks

        # Without the pattern, the Inngest table is the one difference, named once (not once per column).
        plain = make_bot({"staging": fresh_url, "production": other})
        diff = plain.command("drift staging production").message()
        assert "1 schema difference" in diff["text"]
        assert "only on production: table `inngest_function_runs`" in str(diff["blocks"])
    finally:
        pg.drop_database(fresh)


def test_drift_finds_each_kind_of_change_grouped_by_table(make_bot, migrated_db):
    staging, production = migrated_db(), migrated_db()
    execute(staging, "CREATE INDEX mcp_tool_calls_user_idx ON mcp_tool_calls (mcp_server_user_id)")
    execute(production, "ALTER TABLE support_requests ALTER COLUMN priority SET DEFAULT 'low'")
    execute(production, "ALTER TABLE mcp_servers ALTER COLUMN name DROP NOT NULL")
    execute(
        production,
        "ALTER TABLE support_requests DROP CONSTRAINT support_requests_assignee_id_fkey,"
        ' ADD CONSTRAINT support_requests_assignee_id_fkey FOREIGN KEY (assignee_id) REFERENCES "user"(id)'
        " ON DELETE CASCADE NOT VALID",
    )
    execute(staging, "ALTER TYPE support_request_priority ADD VALUE 'critical'")
    execute(production, "ALTER TABLE support_requests DISABLE TRIGGER support_requests_touch")

    bot = make_bot({"staging": staging, "production": production})
    reply = bot.command("drift staging production", user=OPERATOR).message()
    assert reply["response_type"] == "in_channel"
    body = "\n".join(block["text"]["text"] for block in reply["blocks"] if block["type"] == "section")
    expected = [
        "*table mcp_tool_calls*\n• only on staging: index `mcp_tool_calls_user_idx`",
        "`support_requests.priority`: default `'medium'::support_request_priority` on staging, "
        "`'low'::support_request_priority` on production",
        "`mcp_servers.name`: `NOT NULL` on staging, `nullable` on production",
        "foreign key `support_requests_assignee_id_fkey`: ON DELETE `SET NULL` on staging, `CASCADE` on production",
        "foreign key `support_requests_assignee_id_fkey`: `valid` on staging, `NOT VALID` on production",
        "enum `support_request_priority`: 'critical' only on staging",
        "trigger `support_requests_touch`: `enabled` on staging, `disabled` on production",
    ]
    for line in expected:
        assert line in body, (line, body)
    assert "7 differences in 4 places" in body
    # Nothing else differs: the summary counts exactly these.
    assert reply["text"] == "staging vs production: 7 schema differences"

    # Same stage twice, or a stage that does not exist: a short answer, only for the person.
    same = bot.command("drift staging staging").message()
    assert same["response_type"] == "ephemeral" and "two different stages" in same["text"]
    unknown = bot.command("drift staging qa").message()
    assert unknown["response_type"] == "ephemeral" and "unknown stage `qa`" in unknown["text"]
    missing = bot.command("drift staging").message()
    assert missing["response_type"] == "ephemeral" and "missing &lt;stage-b&gt;" in missing["text"]


def test_the_snapshot_takes_the_same_number_of_queries_whatever_the_number_of_tables(migrated_db):
    url = migrated_db()
    engine = create_engine(parse_database_url("test", url))
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    try:
        with engine.connect() as conn:
            small = read_snapshot(conn)
        before = len(statements)
        execute(url, "CREATE EXTENSION pg_stat_statements")
        execute(
            url,
            "DO $$ BEGIN FOR i IN 1..60 LOOP EXECUTE format("
            "'CREATE TABLE pad_%s (id text PRIMARY KEY, server_id text REFERENCES mcp_servers(id), note text)', i);"
            " EXECUTE format('CREATE INDEX pad_%s_server ON pad_%s (server_id)', i, i); END LOOP; END $$",
        )
        with engine.connect() as conn:
            big = read_snapshot(conn)
        assert len(statements) - before == before == small.queries == big.queries
        assert len(big.groups()) == len(small.groups()) + 60
        # Extension-owned objects are not the app's: the pg_stat_statements views never appear.
        assert not [g for g in big.groups() if "pg_stat_statements" in g]
        assert big.objects[("", "extension", "pg_stat_statements")].attr("version")
    finally:
        engine.dispose()


def test_the_impact_report_warns_when_tables_in_scope_differ_from_the_reference(make_bot, make_stage_db):
    staging, production = make_stage_db(), make_stage_db()
    production.execute("ALTER TABLE support_requests ALTER COLUMN priority SET DEFAULT 'low'")
    production.execute("CREATE INDEX mcp_tool_calls_user_idx ON mcp_tool_calls (mcp_server_user_id)")
    production.execute("ALTER TABLE \"user\" ALTER COLUMN name SET DEFAULT 'x'")  # not in the delete's scope
    bot = make_bot({"staging": staging.url, "production": production.url})

    text = message_text(bot.command(f"impact {TEST_SPEC.big_slug} --stage production").message(timeout=60))
    assert "The schema differs from staging (MIGRATION_REFERENCE_STAGE) in 2 tables in scope" in text, text
    assert "only on production: index `mcp_tool_calls_user_idx`" in text
    assert "`support_requests.priority`: default `'low'::support_request_priority` on production" in text
    assert "user.name" not in text and "`user`" not in text.split("in scope", 1)[1].split("\n")[0]
    # The reference itself, and a stage identical to it: no warning.
    same = message_text(bot.command(f"impact {TEST_SPEC.big_slug} --stage staging").message(timeout=60))
    assert "schema differs" not in same and "not compared" not in same

    # A reference that cannot be reached is said, and the report is still made.
    gone = make_bot({"staging": dead_database_url(), "production": production.url})
    text = message_text(gone.command(f"impact {TEST_SPEC.big_slug} --stage production").message(timeout=60))
    assert "The schema was not compared with staging (MIGRATION_REFERENCE_STAGE): stage staging is unreachable" in text
    assert "Expected duration" in text


def test_the_same_migrations_on_the_oldest_and_newest_installed_server_compare_identical(make_bot, pg):
    """PostgreSQL 18 also lists NOT NULL constraints in pg_constraint: nullability must not read as drift."""
    newest = max(installations(), key=lambda i: i.major)
    base = Path(tempfile.mkdtemp(prefix="mcp-ops-test-drift18-"))
    base.chmod(0o755)
    other = LocalPostgres(base / "pg", fast_unsafe=True, install=newest)
    other.start()
    try:
        here = pg.create_database(unique_name("drift_here"))
        there = other.create_database("drift_there")
        # Another app's migration too: a view, which 16+ prints without the table qualifiers 15 prints.
        shop = Migration("0009_shop", 1_800_000_000_000, SHOP)
        for url in (here, there):
            drizzle_migrate(url, [*platform_migrations(), shop])
        bot = make_bot({"staging": here, "production": there})
        reply = bot.command("drift staging production").message()
        assert "identical" in reply["text"], message_text(reply)
        # What the view selects still counts.
        execute(
            there, "CREATE OR REPLACE VIEW pro_accounts AS SELECT id, email, credits FROM accounts WHERE plan = 'pro'"
        )
        changed = bot.command("drift staging production").message()
        assert changed["text"] == "staging vs production: 1 schema difference", message_text(changed)
        assert "view `pro_accounts`: definition" in message_text(changed)
        pg.drop_database(here.rsplit("/", 1)[1])
    finally:
        other.destroy()
        shutil.rmtree(base, ignore_errors=True)


def test_a_long_diff_is_summarised_with_the_whole_of_it_attached(make_bot, migrated_db):
    staging, production = migrated_db(), migrated_db()
    execute(
        staging,
        "DO $$ BEGIN FOR i IN 1..40 LOOP EXECUTE format('CREATE TABLE audit_shadow_%s (id int PRIMARY KEY)', i);"
        " END LOOP; END $$",
    )
    bot = make_bot({"staging": staging, "production": production})
    reply = bot.command("drift staging production").message()
    shown = message_text(reply)
    assert block_chars(reply["blocks"]) < 12_000
    assert "… and 15 more: all 40 are in the attached `drift-staging-production.txt`" in shown
    attached = bot.slack.wait_for_file(lambda f: f.filename == "drift-staging-production.txt")
    assert attached.channel == CHANNEL
    assert attached.text.startswith("Schema drift: staging vs production")
    for i in range(1, 41):
        assert f"only on staging: table `audit_shadow_{i}`" in attached.text


def test_a_line_cut_short_in_the_message_is_whole_in_the_attached_file(make_bot, migrated_db):
    staging, production = migrated_db(), migrated_db()
    names = ", ".join(f"'organization_{i:03d}'" for i in range(40))
    execute(staging, "CREATE VIEW named_orgs AS SELECT id, name FROM organization WHERE name = 'x'")
    execute(production, f"CREATE VIEW named_orgs AS SELECT id, name FROM organization WHERE name IN ({names})")
    bot = make_bot({"staging": staging, "production": production})
    reply = bot.command("drift staging production").message()
    assert reply["text"] == "staging vs production: 1 schema difference", message_text(reply)
    shown = message_text(reply)
    assert "'organization_039'" not in shown and "…" in shown
    assert "1 line cut short here: the whole diff is in the attached `drift-staging-production.txt`" in shown
    attached = bot.slack.wait_for_file(lambda f: f.filename == "drift-staging-production.txt")
    assert "'organization_039'" in attached.text and "view `named_orgs`: definition" in attached.text


def test_a_stage_that_cannot_be_reached_is_one_short_line(make_bot, migrated_db):
    bot = make_bot({"staging": migrated_db(), "production": dead_database_url()})
    reply = bot.command("drift staging production").message()
    assert "stage production is unreachable" in reply["text"], reply
    assert "Traceback" not in str(reply) and len(reply["text"]) < 400
