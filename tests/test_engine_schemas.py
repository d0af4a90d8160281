"""The deletion engine, its backup and its restore on PostgreSQL features real schemas use.

Each case builds its own schema (a `mcp_servers` root, which is what the engine deletes by slug,
and tables no code in bot/ names), then `EngineHarness.check` compares, over every table of every
user schema: the bot's delete with PostgreSQL's own correct delete on a clone, and delete + restore
with the database before. Where the right answer is a refusal, `refuse` returns its words and
checks that nothing changed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.botdb import create_bot_engine, migrate
from bot.config import parse_database_url
from bot.deletion.scope import Rules
from bot.localpg import LocalPostgres
from tests.conftest import unique_name
from tests.engine_harness import EngineHarness, harness_for

ROOT = """
CREATE TABLE mcp_servers (id text PRIMARY KEY, slug text NOT NULL UNIQUE, name text);
INSERT INTO mcp_servers VALUES ('srv1', 's1', 'one'), ('srv2', 's2', 'two');
"""


@pytest.fixture(scope="module")
def engine_harness(pg: LocalPostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineHarness]:
    name = unique_name("enginebot")
    url = pg.create_database(name)
    engine = create_bot_engine(parse_database_url("BOT_DATABASE_URL", url))
    migrate(engine)
    backup_dir: Path = tmp_path_factory.mktemp("engine-backups")
    yield from harness_for(pg, url, engine, backup_dir)
    engine.dispose()
    pg.drop_database(name)


@pytest.fixture
def h(engine_harness: EngineHarness) -> EngineHarness:
    return engine_harness


# -- which rows are in scope ------------------------------------------------------------------


def test_cascade_chain_composite_key_and_quoted_identifiers_in_a_second_schema(h):
    out = h.check(
        ROOT
        + """
        CREATE SCHEMA "App Data";
        CREATE TABLE "App Data"."Deploys" ("ID" text PRIMARY KEY, "select" text REFERENCES mcp_servers(id)
            ON DELETE CASCADE, "order" int);
        CREATE TABLE "App Data"."Deploy Steps" ("Deploy" text REFERENCES "App Data"."Deploys" ON DELETE CASCADE,
            "n" int, PRIMARY KEY ("Deploy", "n"));
        CREATE TABLE "App Data"."Log Lines" (id int PRIMARY KEY, d text, n int, line text,
            FOREIGN KEY (d, n) REFERENCES "App Data"."Deploy Steps" ON DELETE CASCADE);
        INSERT INTO "App Data"."Deploys" VALUES ('d1', 'srv1', 1), ('d2', 'srv1', 2), ('d3', 'srv2', 1);
        INSERT INTO "App Data"."Deploy Steps" SELECT "ID", g FROM "App Data"."Deploys", generate_series(1, 3) g;
        INSERT INTO "App Data"."Log Lines" SELECT row_number() OVER (), "Deploy", n, 'x' FROM "App Data"."Deploy Steps";
        """
    )
    assert out.report.snapshot["App Data.Log Lines"] == 6


def test_no_action_rows_are_deleted_with_the_server_and_say_so(h):
    out = h.check(
        ROOT
        + """
        CREATE TABLE server_pins (id int PRIMARY KEY, server_slug text NOT NULL REFERENCES mcp_servers(slug));
        CREATE TABLE pin_notes (id int PRIMARY KEY, pin int REFERENCES server_pins);
        INSERT INTO server_pins VALUES (1, 's1'), (2, 's1'), (3, 's2');
        INSERT INTO pin_notes VALUES (10, 1), (11, 2), (12, 3);
        """,
        reference="DELETE FROM pin_notes WHERE pin IN (1, 2); DELETE FROM server_pins WHERE server_slug = 's1';"
        " DELETE FROM mcp_servers WHERE slug = 's1'",
    )
    pins = next(t for t in out.report.tables if t.table == "server_pins")
    assert pins.rows == 2 and pins.via == ["no ON DELETE rule: deleted with the server (server_slug → mcp_servers)"]
    assert out.report.snapshot["public.pin_notes"] == 2


def test_no_action_edges_block_when_the_team_says_so(h):
    words, report = h.refuse(
        ROOT
        + """
        CREATE TABLE server_pins (id int PRIMARY KEY, server_slug text NOT NULL REFERENCES mcp_servers(slug));
        INSERT INTO server_pins VALUES (1, 's1'), (2, 's1'), (3, 's2');
        """,
        rules=Rules(no_action="block"),
    )
    assert "2 rows of server_pins outside the delete" in words and "NO_ACTION_EDGES=block" in words
    assert [r["id"] for r in report.blockers[0].sample] == ["1", "2"]


def test_restrict_from_outside_blocks_with_the_rows_shown(h):
    words, report = h.refuse(
        ROOT
        + """
        CREATE TABLE legal_holds (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE RESTRICT);
        INSERT INTO legal_holds VALUES (7, 'srv1'), (8, 'srv2');
        """
    )
    assert "1 row of legal_holds outside the delete references rows of mcp_servers" in words
    assert report.blockers[0].sample == [{"id": "7", "server_id": "srv1"}]


def test_a_self_reference_on_the_root_is_a_fixed_point(h):
    out = h.check(
        """
        CREATE TABLE mcp_servers (id text PRIMARY KEY, slug text NOT NULL UNIQUE,
            parent_id text REFERENCES mcp_servers ON DELETE CASCADE);
        INSERT INTO mcp_servers VALUES ('srv1', 's1', NULL), ('srv1a', 's1a', 'srv1'), ('srv1b', 's1b', 'srv1a'),
            ('srv2', 's2', NULL);
        CREATE TABLE sessions (id int PRIMARY KEY, server_slug text REFERENCES mcp_servers(slug) ON DELETE CASCADE);
        CREATE TABLE billing (id int PRIMARY KEY, server_id text NOT NULL REFERENCES mcp_servers);
        INSERT INTO sessions VALUES (1, 's1'), (2, 's1a'), (3, 's1b'), (4, 's2');
        INSERT INTO billing VALUES (1, 'srv1'), (2, 'srv1b'), (3, 'srv2');
        """,
        reference="DELETE FROM billing WHERE server_id IN ('srv1', 'srv1b'); DELETE FROM mcp_servers WHERE slug = 's1'",
    )
    assert out.report.snapshot["public.mcp_servers"] == 3
    assert out.report.snapshot["public.sessions"] == 3 and out.report.snapshot["public.billing"] == 2


def test_cycles_of_scope_edges_between_tables_are_one_fixed_point(h):
    h.check(
        ROOT
        + """
        CREATE TABLE a (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE, b_id int);
        CREATE TABLE b (id int PRIMARY KEY, a_id int REFERENCES a ON DELETE CASCADE);
        ALTER TABLE a ADD FOREIGN KEY (b_id) REFERENCES b ON DELETE CASCADE;
        INSERT INTO a VALUES (1, 'srv1', NULL), (2, 'srv2', NULL), (3, NULL, NULL), (4, NULL, NULL);
        INSERT INTO b VALUES (10, 1), (11, 3), (12, 2);
        UPDATE a SET b_id = 10 WHERE id = 3;  -- a1 -> b10 -> a3 -> b11 -> a4
        UPDATE a SET b_id = 11 WHERE id = 4;
        """
    )


def test_no_action_both_ways_inside_the_scope_deletes_in_one_statement(h):
    h.check(
        ROOT
        + """
        CREATE TABLE walkthroughs (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE,
            first_step int);
        CREATE TABLE steps (id int PRIMARY KEY, walkthrough int NOT NULL REFERENCES walkthroughs ON DELETE CASCADE);
        ALTER TABLE walkthroughs ADD FOREIGN KEY (first_step) REFERENCES steps;  -- NO ACTION, not deferrable
        INSERT INTO walkthroughs VALUES (1, 'srv1', NULL), (2, 'srv2', NULL);
        INSERT INTO steps VALUES (10, 1), (11, 1), (20, 2);
        UPDATE walkthroughs SET first_step = 10 WHERE id = 1;
        UPDATE walkthroughs SET first_step = 20 WHERE id = 2;
        """
    )


def test_self_referencing_rows_in_a_cycle(h):
    h.check(
        ROOT
        + """
        CREATE TABLE notes (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE,
            next int, prev int);
        ALTER TABLE notes ADD FOREIGN KEY (next) REFERENCES notes ON DELETE CASCADE;
        ALTER TABLE notes ADD FOREIGN KEY (prev) REFERENCES notes ON DELETE CASCADE;
        INSERT INTO notes VALUES (1, 'srv1', NULL, NULL), (2, NULL, NULL, NULL), (3, NULL, NULL, NULL),
            (4, 'srv2', NULL, NULL), (5, NULL, NULL, NULL);
        UPDATE notes SET next = 1 WHERE id = 2;  -- 2 -> 1 -> (3 -> 2 -> ...) a cycle through next and prev
        UPDATE notes SET prev = 2 WHERE id = 3;
        UPDATE notes SET next = 3 WHERE id = 1;
        UPDATE notes SET next = 4 WHERE id = 5;
        """
    )


def test_set_null_and_deferrable_back_edges_are_not_cycles(h):
    out = h.check(
        """
        CREATE TABLE mcp_servers (id text PRIMARY KEY, slug text NOT NULL UNIQUE, default_registration_id int,
            pinned_registration_id int, fallback_registration_id int);
        CREATE TABLE registrations (id int PRIMARY KEY, server_id text NOT NULL REFERENCES mcp_servers
            ON DELETE CASCADE);
        CREATE TABLE tokens (id int PRIMARY KEY, registration int NOT NULL REFERENCES registrations ON DELETE CASCADE);
        ALTER TABLE mcp_servers ADD FOREIGN KEY (default_registration_id) REFERENCES registrations ON DELETE SET NULL;
        ALTER TABLE mcp_servers ADD FOREIGN KEY (pinned_registration_id) REFERENCES registrations
            DEFERRABLE INITIALLY IMMEDIATE;
        ALTER TABLE mcp_servers ADD FOREIGN KEY (fallback_registration_id) REFERENCES registrations;  -- NO ACTION
        INSERT INTO mcp_servers VALUES ('srv1', 's1', NULL, NULL, NULL), ('srv2', 's2', NULL, NULL, NULL);
        INSERT INTO registrations VALUES (1, 'srv1'), (2, 'srv1'), (3, 'srv2');
        INSERT INTO tokens VALUES (10, 1), (11, 2), (12, 3);
        UPDATE mcp_servers SET default_registration_id = 1, pinned_registration_id = 2, fallback_registration_id = 1
            WHERE id = 'srv1';
        UPDATE mcp_servers SET default_registration_id = 3 WHERE id = 'srv2';
        """
    )
    assert out.report.snapshot["public.tokens"] == 2 and not out.report.blockers


def test_another_server_pointing_into_the_scope_without_a_rule_blocks(h):
    words, report = h.refuse(
        """
        CREATE TABLE mcp_servers (id text PRIMARY KEY, slug text NOT NULL UNIQUE,
            parent_id text REFERENCES mcp_servers, registration int);
        CREATE TABLE registrations (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);
        ALTER TABLE mcp_servers ADD FOREIGN KEY (registration) REFERENCES registrations;
        INSERT INTO mcp_servers VALUES ('srv1', 's1', NULL, NULL), ('srv2', 's2', 'srv1', NULL),
            ('srv3', 's3', NULL, NULL);
        INSERT INTO registrations VALUES (1, 'srv1');
        UPDATE mcp_servers SET registration = 1 WHERE id IN ('srv1', 'srv3');
        """
    )
    # Never another server because it points at this one (or at its rows) with no rule: those block.
    assert "1 row of mcp_servers outside the delete references rows of mcp_servers" in words
    assert "1 row of mcp_servers outside the delete references rows of registrations" in words
    assert {r["id"] for b in report.blockers for r in b.sample} == {"srv2", "srv3"}


def test_two_foreign_keys_to_the_root_with_different_rules(h):
    h.check(
        ROOT
        + """
        CREATE TABLE handovers (id int PRIMARY KEY,
            from_server text NOT NULL REFERENCES mcp_servers ON DELETE CASCADE,
            to_server text REFERENCES mcp_servers ON DELETE SET NULL,
            witness text REFERENCES mcp_servers ON DELETE RESTRICT);
        INSERT INTO handovers VALUES (1, 'srv1', 'srv2', NULL), (2, 'srv2', 'srv1', NULL), (3, 'srv1', 'srv1', 'srv1'),
            (4, 'srv2', NULL, 'srv2');
        """,
        reference="DELETE FROM handovers WHERE from_server = 'srv1'; DELETE FROM mcp_servers WHERE slug = 's1'",
    )


def test_composite_keys_with_partial_nulls_match_simple_and_full(h):
    h.check(
        """
        CREATE TABLE mcp_servers (id text, region text, slug text NOT NULL UNIQUE, PRIMARY KEY (id, region));
        INSERT INTO mcp_servers VALUES ('srv1', 'eu', 's1'), ('srv1', 'us', 's2');
        CREATE TABLE simple_refs (id int PRIMARY KEY, sid text, region text,
            FOREIGN KEY (sid, region) REFERENCES mcp_servers ON DELETE CASCADE);
        CREATE TABLE full_refs (id int PRIMARY KEY, sid text, region text,
            FOREIGN KEY (sid, region) REFERENCES mcp_servers MATCH FULL ON DELETE SET NULL);
        INSERT INTO simple_refs VALUES (1, 'srv1', 'eu'), (2, 'srv1', NULL), (3, NULL, 'eu'), (4, 'srv1', 'us');
        INSERT INTO full_refs VALUES (1, 'srv1', 'eu'), (2, NULL, NULL), (3, 'srv1', 'us');
        """
    )


def test_foreign_keys_to_a_unique_index_not_null_unique_keys_and_not_valid_keys(h):
    h.check(
        ROOT
        + """
        CREATE UNIQUE INDEX servers_name_idx ON mcp_servers (name);
        CREATE TABLE by_name (code text NOT NULL UNIQUE, server_name text REFERENCES mcp_servers(name)
            ON DELETE CASCADE, note text);
        CREATE TABLE loose (id int PRIMARY KEY, server_id text, other text);
        INSERT INTO by_name VALUES ('a', 'one', 'x'), ('b', 'two', 'y'), ('c', 'one', NULL);
        INSERT INTO loose VALUES (1, 'srv1', 'gone'), (2, 'srv9', 'dangling, allowed by NOT VALID'), (3, 'srv2', 'k');
        ALTER TABLE loose ADD FOREIGN KEY (server_id) REFERENCES mcp_servers ON DELETE CASCADE NOT VALID;
        """
    )


def test_deferrable_edges_inside_the_scope(h):
    h.check(
        ROOT
        + """
        CREATE TABLE a (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE
            DEFERRABLE INITIALLY DEFERRED);
        CREATE TABLE b (id int PRIMARY KEY, a_id int REFERENCES a DEFERRABLE INITIALLY IMMEDIATE);
        INSERT INTO a VALUES (1, 'srv1'), (2, 'srv2');
        INSERT INTO b VALUES (10, 1), (11, 2);
        """,
        reference="DELETE FROM b WHERE a_id = 1; DELETE FROM mcp_servers WHERE slug = 's1'",
    )


def test_set_default_to_an_existing_row_and_set_null(h):
    h.check(
        ROOT
        + """
        INSERT INTO mcp_servers VALUES ('srv0', 's0', 'fallback');
        CREATE TABLE tags (id int PRIMARY KEY, server_id text NOT NULL DEFAULT 'srv0'
            REFERENCES mcp_servers ON DELETE SET DEFAULT, tag text);
        CREATE TABLE bookmarks (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE SET NULL);
        INSERT INTO tags VALUES (1, 'srv1', 'vip'), (2, 'srv2', 'x'), (3, 'srv1', 'beta');
        INSERT INTO bookmarks VALUES (1, 'srv1'), (2, 'srv2');
        """
    )


def test_a_table_without_any_key_is_refused_clearly(h):
    words, _ = h.refuse(
        ROOT
        + """
        CREATE TABLE keyless (server_id text REFERENCES mcp_servers ON DELETE CASCADE, note text);
        INSERT INTO keyless VALUES ('srv1', 'x');
        """
    )
    assert "table keyless has no primary key (nor a NOT NULL unique key)" in words


# -- partitions and inheritance -----------------------------------------------------------------

PARTITIONED = (
    ROOT
    + """
    CREATE TABLE events (id int, created date, server_id text REFERENCES mcp_servers ON DELETE CASCADE,
        owner_slug text, body text, PRIMARY KEY (id, created)) PARTITION BY RANGE (created);
    CREATE TABLE events_2023 PARTITION OF events FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
    CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
    INSERT INTO events VALUES (1, '2023-05-01', 'srv1', 's2', 'a'), (2, '2024-05-01', 'srv1', 's2', 'b'),
        (3, '2023-06-01', 'srv2', 's1', 'c'), (4, '2024-06-01', 'srv2', 's2', 'd'),
        (5, '2024-07-01', 'srv2', 's1', 'e');
    """
)


def test_a_partitioned_table_referencing_and_referenced_as_a_whole(h):
    out = h.check(
        PARTITIONED
        + """
        CREATE TABLE attachments (id int PRIMARY KEY, event_id int, created date,
            FOREIGN KEY (event_id, created) REFERENCES events ON DELETE CASCADE);
        INSERT INTO attachments VALUES (1, 1, '2023-05-01'), (2, 2, '2024-05-01'), (3, 4, '2024-06-01');
        """
    )
    assert out.report.snapshot["public.events"] == 2 and out.report.snapshot["public.attachments"] == 2


def test_a_foreign_key_to_one_partition_and_a_partitions_own_foreign_key(h):
    out = h.check(
        PARTITIONED
        + """
        CREATE TABLE notes_2024 (id int PRIMARY KEY, event_id int, created date,
            FOREIGN KEY (event_id, created) REFERENCES events_2024 ON DELETE CASCADE);
        INSERT INTO notes_2024 VALUES (1, 2, '2024-05-01'), (2, 4, '2024-06-01'), (3, 5, '2024-07-01');
        ALTER TABLE events_2024 ADD FOREIGN KEY (owner_slug) REFERENCES mcp_servers (slug) ON DELETE CASCADE;
        """
    )
    # Event 5 (server 2) goes through the partition's own key to server 1's slug, and its note with it.
    assert out.report.snapshot["public.events"] == 3 and out.report.snapshot["public.notes_2024"] == 2
    assert any("of partition events_2024" in v for t in out.report.tables for v in t.via)


def test_inheritance_children_are_tables_of_their_own(h):
    h.check(
        ROOT
        + """
        CREATE TABLE items (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE, v text);
        CREATE TABLE drafts (note text) INHERITS (items);  -- the columns, not the key nor the foreign key
        CREATE TABLE archived (PRIMARY KEY (id), FOREIGN KEY (server_id) REFERENCES mcp_servers ON DELETE CASCADE)
            INHERITS (items);
        INSERT INTO items VALUES (1, 'srv1', 'a'), (2, 'srv2', 'b');
        INSERT INTO drafts VALUES (1, 'srv1', 'kept: no foreign key', 'x'), (3, 'srv1', 'kept', 'y');
        INSERT INTO archived VALUES (5, 'srv1', 'own key: deleted'), (6, 'srv2', 'kept');
        """
    )


# -- row-level security and privileges ----------------------------------------------------------


def _role(name: str, *extra: str) -> str:
    options = " ".join(extra)
    return f"""DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN CREATE ROLE {name} LOGIN {options}; END IF;
    END $$;"""


RLS = (
    ROOT
    + _role("engine_reader")
    + _role("engine_owner")
    + """
    CREATE TABLE secrets (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE, tenant text);
    INSERT INTO secrets VALUES (1, 'srv1', 'a'), (2, 'srv1', 'b'), (3, 'srv2', 'a');
    ALTER TABLE secrets ENABLE ROW LEVEL SECURITY;
    CREATE POLICY tenant_a ON secrets USING (tenant = 'a');
    GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO engine_reader, engine_owner;
    """
)


def test_row_level_security_that_hides_rows_is_refused_naming_the_table(h):
    words, _ = h.refuse(RLS, role="engine_reader")
    assert "row-level security on secrets hides rows from the role `engine_reader`" in words
    words, _ = h.refuse(
        RLS + "ALTER TABLE secrets OWNER TO engine_owner; ALTER TABLE secrets FORCE ROW LEVEL SECURITY;",
        role="engine_owner",
    )
    assert "row-level security on secrets hides rows from the role `engine_owner`" in words


def test_row_level_security_the_role_is_not_subject_to_counts_every_row(h):
    out = h.check(
        RLS + "ALTER TABLE secrets OWNER TO engine_owner; ALTER TABLE mcp_servers OWNER TO engine_owner;",
        role="engine_owner",
    )
    assert out.report.snapshot["public.secrets"] == 2


def test_a_missing_privilege_names_the_table_and_the_privilege(h):
    schema = (
        ROOT
        + _role("engine_reader")
        + """
        CREATE SCHEMA audit;
        CREATE TABLE audit.events (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);
        CREATE TABLE marks (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);
        INSERT INTO audit.events VALUES (1, 'srv1'); INSERT INTO marks VALUES (1, 'srv1');
        GRANT SELECT, DELETE ON ALL TABLES IN SCHEMA public TO engine_reader;
        GRANT USAGE ON SCHEMA audit TO engine_reader;
        """
    )
    words, report = h.refuse(schema, role="engine_reader")
    assert (
        report is None and "the role `engine_reader` may not read audit.events (it lacks the SELECT privilege" in words
    )
    words, report = h.refuse(
        schema + "GRANT SELECT ON audit.events TO engine_reader; REVOKE DELETE ON marks FROM engine_reader;",
        role="engine_reader",
    )
    assert "the role `engine_reader` lacks the DELETE privilege on marks" in words
    assert report is not None and report.snapshot["public.marks"] == 1  # the counts are still right


# -- blockers the database would raise ------------------------------------------------------------


def test_set_default_without_a_parent_row_and_set_null_into_a_not_null_domain_are_blockers(h):
    words, report = h.refuse(
        ROOT
        + """
        CREATE TABLE tags (id int PRIMARY KEY, server_id text DEFAULT 'srv_gone'
            REFERENCES mcp_servers ON DELETE SET DEFAULT);
        CREATE TABLE own_default (id int PRIMARY KEY, server_id text DEFAULT 'srv1'
            REFERENCES mcp_servers ON DELETE SET DEFAULT);
        CREATE DOMAIN server_ref AS text NOT NULL;
        CREATE TABLE pins (id int PRIMARY KEY, server_id server_ref REFERENCES mcp_servers ON DELETE SET NULL);
        INSERT INTO tags VALUES (1, 'srv1'); INSERT INTO own_default VALUES (1, 'srv1');
        INSERT INTO pins VALUES (1, 'srv1'), (2, 'srv2');
        """
    )
    assert "ON DELETE SET DEFAULT would set tags(server_id=srv_gone), but no mcp_servers row" in words
    assert "ON DELETE SET DEFAULT would set own_default(server_id=srv1)" in words  # its default is deleted too
    assert "pins(server_id) is NOT NULL (the column or its domain)" in words
    assert report is not None and len(report.blockers) == 3


def test_the_proposed_index_for_a_column_named_with_a_percent_sign(h):
    out = h.check(
        ROOT
        + """
        CREATE TABLE hits ("Server %ID" text REFERENCES mcp_servers ON DELETE CASCADE, "key ""q"" no" int PRIMARY KEY,
            "100%" text);
        INSERT INTO hits SELECT CASE WHEN g % 2 = 0 THEN 'srv1' ELSE 'srv2' END, g, g || '%s'
            FROM generate_series(1, 50) g;
        ANALYZE;
        """
    )
    [slow] = out.report.slow_keys
    assert slow.create_index == (
        'CREATE INDEX CONCURRENTLY IF NOT EXISTS "hits_Server %ID_idx" ON public.hits ("Server %ID");'
    )


# -- triggers and byte-exact restores -------------------------------------------------------------

COUNTERS = (
    ROOT
    + """
    CREATE TABLE threads (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE,
        posts int NOT NULL DEFAULT 0, revision int NOT NULL DEFAULT 0);
    CREATE TABLE posts (id int PRIMARY KEY, thread int NOT NULL REFERENCES threads ON DELETE CASCADE, body text);
    CREATE FUNCTION count_posts() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
        UPDATE threads SET posts = posts + 1 WHERE id = NEW.thread; RETURN NEW; END $$;
    CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
        NEW.revision := NEW.revision + 1; RETURN NEW; END $$;
    CREATE TRIGGER count_posts AFTER INSERT ON posts FOR EACH ROW EXECUTE FUNCTION count_posts();
    CREATE TRIGGER stamp BEFORE INSERT ON threads FOR EACH ROW EXECUTE FUNCTION stamp();
    ALTER TABLE threads ENABLE ALWAYS TRIGGER stamp;
    INSERT INTO threads (id, server_id) VALUES (1, 'srv1'), (2, 'srv2');
    INSERT INTO posts VALUES (10, 1, 'a'), (11, 1, 'b'), (12, 2, 'c');
    """
)


def test_restore_turns_user_triggers_off_so_counters_and_stamps_do_not_move(h):
    out = h.check(COUNTERS)
    # They fire on INSERT, not on delete: the impact says a restore would turn them off.
    assert {(t.trigger, t.on_delete, t.on_restore) for t in out.report.triggers} == {
        ("count_posts", False, "disabled"),
        ("stamp", False, "disabled"),
    }
    assert sorted(d.split(" (")[0] for d in out.restored.triggers_disabled) == [
        "trigger count_posts on posts",
        "trigger stamp on threads",
    ]
    assert out.restored.triggers_fire == [] and out.restored.not_restored == []
    # Each trigger is back in its own mode afterwards (O: origin, A: always).
    modes = out.db.scalar(
        "SELECT string_agg(tgname || '=' || tgenabled::text, ',' ORDER BY tgname)"
        " FROM pg_trigger WHERE NOT tgisinternal"
    )
    assert modes == "count_posts=O,stamp=A"


def test_a_role_that_may_not_turn_triggers_off_is_told_which_fire_before_anyone_approves(h):
    db = h.database(COUNTERS + _role("engine_writer") + "GRANT ALL ON ALL TABLES IN SCHEMA public TO engine_writer;")
    _, report, _, backups, request_id = h.delete(db, "s1", role="engine_writer")
    checked = backups.restore(h.stage(db, "engine_writer"), request_id, actor="UTEST", dry_run=True)
    assert [d.split(" (")[0] for d in checked.triggers_fire] == [
        "trigger count_posts on posts",
        "trigger stamp on threads",
    ]
    assert checked.triggers_disabled == [] and not checked.restored
    assert {(t.trigger, t.on_restore) for t in report.triggers} == {("count_posts", "fires"), ("stamp", "fires")}
    assert db.scalar("SELECT tgenabled FROM pg_trigger WHERE tgname = 'stamp'") == "A"


def test_triggers_that_fire_on_delete_are_listed_and_what_they_removed_is_named_at_restore(h):
    out = h.check(
        ROOT
        + """
        CREATE TABLE items (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);
        CREATE TABLE item_cache (item int, payload text);  -- no foreign key: only the trigger ties it
        CREATE FUNCTION drop_cache() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
            DELETE FROM item_cache WHERE item = OLD.id; RETURN OLD; END $$;
        CREATE TRIGGER drop_cache AFTER DELETE ON items FOR EACH ROW EXECUTE FUNCTION drop_cache();
        INSERT INTO items VALUES (1, 'srv1'), (2, 'srv2');
        INSERT INTO item_cache VALUES (1, 'one'), (2, 'two');
        """,
        exact_counts=False,
        lost=("public.item_cache",),
    )
    [note] = out.report.triggers
    assert (note.table, note.trigger, note.on_delete, note.on_restore) == ("items", "drop_cache", True, "")
    assert note.definition == "AFTER DELETE FOR EACH ROW, drop_cache()"
    assert out.restored.not_restored == ["drop_cache on items (AFTER DELETE FOR EACH ROW, drop_cache())"]


def test_copy_settings_are_pinned_whatever_the_roles_datestyle(h):
    h.check(
        ROOT
        + _role("engine_dmy")
        + """
        ALTER ROLE engine_dmy SET DateStyle = 'SQL, DMY';
        ALTER ROLE engine_dmy SET IntervalStyle = 'sql_standard';
        ALTER ROLE engine_dmy SET extra_float_digits = -3;
        ALTER ROLE engine_dmy SET TimeZone = 'Pacific/Chatham';
        CREATE TABLE visits (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE,
            day date, at timestamptz, local timestamp, took interval, score float8, ratio real);
        INSERT INTO visits VALUES
            (1, 'srv1', '2024-11-03', '2024-11-13 23:30:00+00', '2024-02-29 10:11:12.345678',
             '1 year 2 mons 3 days 04:05:06.7', 0.1, 1.0000001),
            (2, 'srv1', '2024-03-11', '1999-12-31 23:59:59.999999-08', '2024-11-13 00:00:00', '-1 days +02:00',
             1e-300, 3.4e38),
            (3, 'srv2', '2024-12-25', now(), now(), '0', 2.0, 2.0);
        ALTER TABLE mcp_servers OWNER TO engine_dmy; ALTER TABLE visits OWNER TO engine_dmy;
        """,
        role="engine_dmy",
    )


def test_a_unique_stored_generated_column_restores(h):
    h.check(
        ROOT
        + """
        CREATE TABLE members (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE,
            email text NOT NULL, email_key text GENERATED ALWAYS AS (lower(email)) STORED UNIQUE,
            n int GENERATED ALWAYS AS IDENTITY);
        INSERT INTO members (id, server_id, email) VALUES (1, 'srv1', 'Ann@Example.com'), (2, 'srv2', 'bo@x.io'),
            (3, 'srv1', 'CY@x.io');
        """
    )


def test_every_kind_of_value_comes_back_byte_for_byte(h):
    h.check(
        ROOT
        + """
        CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
        CREATE TYPE point3 AS (x float8, y float8, label text);
        CREATE DOMAIN percent AS numeric(5, 2) CHECK (VALUE BETWEEN 0 AND 100);
        CREATE TABLE samples (m mood, n int, id uuid NOT NULL UNIQUE,
            server_id text REFERENCES mcp_servers ON DELETE CASCADE,
            tags text[], grid int[][], p point3, pct percent, span int4range, during tstzrange,
            doc json, docb jsonb, f8 float8, f4 real, num numeric, blob bytea, note text, PRIMARY KEY (m, n));
        INSERT INTO samples VALUES
            ('happy', 1, '00000000-0000-0000-0000-000000000001', 'srv1', ARRAY['a', 'b,c', NULL, 'd"e', ''],
             '{{1,2},{3,4}}', ROW(1.5, 'NaN', 'tab	and
newline'), 12.50, '[1,10)', '[2024-01-01,infinity)', '{"b": 1,  "a": [1, 2.50]}', '{"b": 1, "a": [1, 2.50]}',
             'NaN', '-0', 'Infinity', decode(repeat('00ff10', 400000), 'hex'), E'back\\\\slash \\u00e9'),
            ('sad', 2, '00000000-0000-0000-0000-000000000002', 'srv1', '{}', NULL, NULL, 0, 'empty', NULL, 'null',
             '[]', '-Infinity', 'NaN', '-0.000', '\\x', NULL),
            ('ok', 3, '00000000-0000-0000-0000-000000000003', 'srv2', NULL, NULL, NULL, 100, NULL, NULL, NULL, NULL,
             0, 0, 0, NULL, NULL);
        """
    )


# -- failures in words, nothing changed -----------------------------------------------------------


def test_a_lock_held_by_another_session_fails_cleanly(h):
    import psycopg

    from bot.deletion.execute import execute_delete
    from bot.errors import QueryTimeout
    from tests.engine_harness import checksums

    db = h.database(
        ROOT + "CREATE TABLE jobs (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);"
        "INSERT INTO jobs VALUES (1, 'srv1'), (2, 'srv1');"
    )
    before = checksums(db.dsn)
    with psycopg.connect(db.dsn) as holder:
        holder.execute("SELECT * FROM jobs WHERE id = 2 FOR UPDATE")
        with pytest.raises(QueryTimeout, match="a lock could not be taken in time"):
            execute_delete(h.stage(db), "s1", expected=None, budget_s=60)
    assert checksums(db.dsn) == before


def test_a_triggers_raise_text_reaches_the_person(h):
    words, _ = h.refuse(
        ROOT
        + """
        CREATE TABLE ledgers (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);
        CREATE FUNCTION keep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
            RAISE EXCEPTION 'ledgers are kept for 7 years (row %)', OLD.id; END $$;
        CREATE TRIGGER keep BEFORE DELETE ON ledgers FOR EACH ROW EXECUTE FUNCTION keep();
        INSERT INTO ledgers VALUES (1, 'srv1');
        """,
        foreseen=False,
    )
    assert "a trigger or function refused: ledgers are kept for 7 years (row 1)" in words
    assert "PL/pgSQL function keep()" in words


def test_deferred_violations_are_reported_with_their_meaning_in_delete_and_dry_run(h):
    from bot.deletion.execute import DeleteFailed, execute_delete
    from tests.engine_harness import checksums

    db = h.database(
        ROOT
        + """
        CREATE TABLE pins (id int PRIMARY KEY, server_id text REFERENCES mcp_servers DEFERRABLE INITIALLY DEFERRED);
        CREATE TABLE audits (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);
        CREATE FUNCTION audit_guard() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
            RAISE EXCEPTION 'audit rows of % must be archived first', OLD.server_id; END $$;
        CREATE CONSTRAINT TRIGGER audit_guard AFTER DELETE ON audits DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION audit_guard();
        INSERT INTO pins VALUES (1, 'srv1');
        """
    )
    before = checksums(db.dsn)
    stage = h.stage(db)
    rules = Rules(no_action="block")  # the pin blocks: here the database, at the end, says so
    for dry_run in (False, True):
        with pytest.raises(DeleteFailed) as caught:
            execute_delete(stage, "s1", expected=None, budget_s=60, rules=rules, dry_run=dry_run)
        assert "foreign key `pins_server_id_fkey` on `pins` would be violated" in caught.value.message
    assert checksums(db.dsn) == before
    db.execute("DELETE FROM pins; INSERT INTO audits VALUES (1, 'srv1')")
    before = checksums(db.dsn)
    for dry_run in (False, True):
        with pytest.raises(DeleteFailed, match="audit rows of srv1 must be archived first"):
            execute_delete(stage, "s1", expected=None, budget_s=60, rules=rules, dry_run=dry_run)
    assert checksums(db.dsn) == before
