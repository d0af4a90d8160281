"""The deletion engine, its backup and its restore on PostgreSQL features real schemas use: which rows are
in scope (rules, cycles, keys, identifiers, partitions, inheritance).

Each case builds its own schema (a `mcp_servers` root, which is what the engine deletes by slug,
and tables no code in bot/ names), then `EngineHarness.check` compares, over every table of every
user schema: the bot's delete with PostgreSQL's own correct delete on a clone, and delete + restore
with the database before. Where the right answer is a refusal, `refuse` returns its words and
checks that nothing changed. Rights, blockers, triggers and byte-exact restores: test_engine_schemas_more.py.
"""

from __future__ import annotations

from bot.deletion.scope import Rules
from tests.engine_harness import ROOT

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
        CREATE TABLE tours (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE,
            first_step int);
        CREATE TABLE steps (id int PRIMARY KEY, tour int NOT NULL REFERENCES tours ON DELETE CASCADE);
        ALTER TABLE tours ADD FOREIGN KEY (first_step) REFERENCES steps;  -- NO ACTION, not deferrable
        INSERT INTO tours VALUES (1, 'srv1', NULL), (2, 'srv2', NULL);
        INSERT INTO steps VALUES (10, 1), (11, 1), (20, 2);
        UPDATE tours SET first_step = 10 WHERE id = 1;
        UPDATE tours SET first_step = 20 WHERE id = 2;
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


def test_sub_partitions_and_keys_to_a_partition_at_each_level(h):
    out = h.check(
        ROOT
        + """
        CREATE TABLE events (id int, created date, kind text, server_id text REFERENCES mcp_servers ON DELETE CASCADE,
            PRIMARY KEY (id, created, kind)) PARTITION BY RANGE (created);
        CREATE TABLE events_2023 PARTITION OF events FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
        CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')
            PARTITION BY LIST (kind);
        CREATE TABLE events_2024_a PARTITION OF events_2024 FOR VALUES IN ('a');
        CREATE TABLE events_2024_b PARTITION OF events_2024 FOR VALUES IN ('b');
        INSERT INTO events VALUES (1, '2023-05-01', 'a', 'srv1'), (2, '2024-05-01', 'a', 'srv1'),
            (3, '2024-05-01', 'b', 'srv1'), (4, '2024-06-01', 'b', 'srv2'), (5, '2023-06-01', 'a', 'srv2');
        CREATE TABLE leaf_notes (id int PRIMARY KEY, event_id int, created date, kind text,
            FOREIGN KEY (event_id, created, kind) REFERENCES events_2024_a ON DELETE CASCADE);
        CREATE TABLE year_notes (id int PRIMARY KEY, event_id int, created date, kind text,
            FOREIGN KEY (event_id, created, kind) REFERENCES events_2024 ON DELETE CASCADE);
        INSERT INTO leaf_notes VALUES (1, 2, '2024-05-01', 'a');
        INSERT INTO year_notes VALUES (1, 3, '2024-05-01', 'b'), (2, 4, '2024-06-01', 'b');
        """
    )
    assert out.report.snapshot["public.events"] == 3
    assert out.report.snapshot["public.leaf_notes"] == 1 and out.report.snapshot["public.year_notes"] == 1


def test_a_foreign_key_to_an_inheritance_parent_sees_only_the_parents_rows(h):
    out = h.check(
        ROOT
        + """
        CREATE TABLE items (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);
        CREATE TABLE drafts (PRIMARY KEY (id)) INHERITS (items);
        CREATE TABLE comments (id int PRIMARY KEY, item int REFERENCES items ON DELETE CASCADE);
        INSERT INTO items VALUES (1, 'srv1'), (2, 'srv2');
        INSERT INTO drafts VALUES (3, 'srv1');  -- a child's row: no foreign key of its own, kept
        INSERT INTO comments VALUES (10, 1), (11, 2);
        """
    )
    assert out.report.snapshot["public.items"] == 1 and out.report.snapshot["public.comments"] == 1
