"""The deletion engine on rarer schemas still: a partitioned or uuid-keyed root, a root that nulls
or restricts other servers, slugs with LIKE and quote characters, rules instead of triggers, dropped
and later-added columns, partitions attached with another column order, dense webs of foreign keys.

As in test_engine_schemas.py: each case builds its own schema and `EngineHarness` compares the
bot's delete and restore with PostgreSQL's own, over every table of every user schema.
"""

from __future__ import annotations

import pytest

from bot.backups.restore import RestoreConflict
from tests.engine_harness import ROOT, checksums


def test_a_partitioned_root_keyed_by_uuid(h):
    out = h.check(
        """
        CREATE TABLE mcp_servers (id uuid, region text, slug text NOT NULL, PRIMARY KEY (id, region),
            UNIQUE (slug, region)) PARTITION BY LIST (region);
        CREATE TABLE mcp_servers_eu PARTITION OF mcp_servers FOR VALUES IN ('eu');
        CREATE TABLE mcp_servers_rest PARTITION OF mcp_servers DEFAULT;
        INSERT INTO mcp_servers VALUES ('00000000-0000-0000-0000-000000000001', 'eu', 's1'),
            ('00000000-0000-0000-0000-000000000002', 'us', 's2');
        CREATE TABLE uses (id int PRIMARY KEY, server uuid, region text,
            FOREIGN KEY (server, region) REFERENCES mcp_servers ON DELETE CASCADE);
        INSERT INTO uses VALUES (1, '00000000-0000-0000-0000-000000000001', 'eu'),
            (2, '00000000-0000-0000-0000-000000000002', 'us');
        """
    )
    assert out.report.snapshot["public.mcp_servers"] == 1 and out.report.snapshot["public.uses"] == 1


def test_other_servers_nulled_or_blocked_through_the_roots_own_keys(h):
    h.check(
        """
        CREATE TABLE mcp_servers (id text PRIMARY KEY, slug text NOT NULL UNIQUE,
            forked_from text REFERENCES mcp_servers ON DELETE SET NULL);
        INSERT INTO mcp_servers VALUES ('srv1', 's1', NULL), ('srv2', 's2', 'srv1'), ('srv3', 's3', 'srv2');
        CREATE TABLE sessions (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);
        INSERT INTO sessions VALUES (1, 'srv1'), (2, 'srv2');
        """
    )
    words, report = h.refuse(
        """
        CREATE TABLE mcp_servers (id text PRIMARY KEY, slug text NOT NULL UNIQUE,
            mirror_of text REFERENCES mcp_servers ON DELETE RESTRICT);
        INSERT INTO mcp_servers VALUES ('srv1', 's1', NULL), ('srv2', 's2', 'srv1');
        """
    )
    assert "1 row of mcp_servers outside the delete references rows of mcp_servers" in words
    assert report is not None and report.blockers[0].sample == [{"id": "srv2", "mirror_of": "srv1"}]


def test_a_slug_with_like_wildcards_quotes_and_backslashes(h):
    slug = "s_1%'\"\\é"
    literal = slug.replace("'", "''")
    out = h.check(
        f"""
        CREATE TABLE mcp_servers (id text PRIMARY KEY, slug text NOT NULL UNIQUE);
        INSERT INTO mcp_servers VALUES ('srv1', E'{literal.replace(chr(92), chr(92) * 2)}'), ('srv2', 'sx1x''"\\é'),
            ('srv3', 's_1%');
        CREATE TABLE sessions (id int PRIMARY KEY, server_slug text REFERENCES mcp_servers (slug) ON DELETE CASCADE);
        INSERT INTO sessions SELECT row_number() OVER (), slug FROM mcp_servers;
        """,
        slug=slug,
        reference="DELETE FROM mcp_servers WHERE id = 'srv1'",
    )
    assert out.report.snapshot["public.mcp_servers"] == 1 and out.report.snapshot["public.sessions"] == 1


def test_a_rule_that_turns_deletes_into_nothing_is_refused_with_nothing_changed(h):
    words, _ = h.refuse(
        ROOT
        + """
        CREATE TABLE ledger (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);
        CREATE RULE keep_ledger AS ON DELETE TO ledger DO INSTEAD NOTHING;
        INSERT INTO ledger VALUES (1, 'srv1'), (2, 'srv2');
        """,
        foreseen=False,
    )
    assert (
        "ledger: expected to delete 1 row, the database reported 0 (a rule ON DELETE DO INSTEAD replaces the"
        " statement: keep_ledger on ledger); nothing was changed (rolled back)"
    ) in words


def test_a_rule_that_also_writes_an_audit_row(h):
    h.check(
        ROOT
        + """
        CREATE TABLE keys (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);
        CREATE TABLE key_log (key_id int PRIMARY KEY);
        CREATE RULE log_key AS ON DELETE TO keys DO ALSO INSERT INTO key_log VALUES (OLD.id);
        INSERT INTO keys VALUES (1, 'srv1'), (2, 'srv1'), (3, 'srv2');
        """,
        exact_counts=False,
        lost=("public.key_log",),
    )


def test_dropped_and_later_added_columns_and_partitions_attached_in_another_column_order(h):
    h.check(
        ROOT
        + """
        CREATE TABLE notes (id int PRIMARY KEY, gone text, server_id text REFERENCES mcp_servers ON DELETE CASCADE,
            body text);
        INSERT INTO notes VALUES (1, 'x', 'srv1', 'a'), (2, 'y', 'srv2', 'b');
        ALTER TABLE notes DROP COLUMN gone;
        ALTER TABLE notes ADD COLUMN stars int NOT NULL DEFAULT 5, ADD COLUMN added timestamptz DEFAULT '2024-01-01';
        INSERT INTO notes (id, server_id, body, stars) VALUES (3, 'srv1', 'c', 1);
        CREATE TABLE events (id int, day date, server_id text REFERENCES mcp_servers ON DELETE CASCADE,
            PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
        CREATE TABLE events_old (server_id text, junk int, day date NOT NULL, id int NOT NULL);
        ALTER TABLE events_old DROP COLUMN junk;
        INSERT INTO events_old VALUES ('srv1', '2020-01-01', 1), ('srv2', '2020-02-01', 2);
        ALTER TABLE events ATTACH PARTITION events_old FOR VALUES FROM ('2000-01-01') TO ('2024-01-01');
        CREATE TABLE events_new PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2030-01-01');
        INSERT INTO events VALUES (3, '2024-05-05', 'srv1');
        """
    )


def test_a_dense_web_of_foreign_keys_between_forty_tables(h):
    # Every table references the three before it: the paths from the root number in the millions;
    # the scope is one union per table, so planning and counting stay linear in the edges.
    tables = ["CREATE TABLE w0 (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);"]
    rows = ["INSERT INTO w0 VALUES (1, 'srv1'), (2, 'srv2'), (3, NULL);"]
    for i in range(1, 40):
        refs = ", ".join(
            f"r{j} int REFERENCES w{j} ON DELETE {'CASCADE' if (i + j) % 4 else 'SET NULL'}"
            for j in range(max(0, i - 3), i)
        )
        tables.append(f"CREATE TABLE w{i} (id int PRIMARY KEY, {refs});")
        values = ", ".join(
            "(" + ", ".join([str(k)] + [str((k + j) % 3 + 1) for j in range(max(0, i - 3), i)]) + ")" for k in (1, 2, 3)
        )
        rows.append(f"INSERT INTO w{i} VALUES {values};")
    out = h.check(ROOT + "\n".join(tables + rows))
    assert len([t for t in out.report.tables if t.action == "delete"]) == 41


def test_virtual_generated_columns_where_the_server_has_them(h):
    # PostgreSQL 18 makes GENERATED columns VIRTUAL unless told STORED; on 15 the table gets a STORED one.
    h.check(
        ROOT
        + """
        CREATE TABLE prices (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE,
            net numeric NOT NULL);
        DO $$ BEGIN
            IF current_setting('server_version_num')::int >= 180000 THEN
                EXECUTE 'ALTER TABLE prices ADD COLUMN gross numeric GENERATED ALWAYS AS (net * 1.2) VIRTUAL';
            ELSE
                EXECUTE 'ALTER TABLE prices ADD COLUMN gross numeric GENERATED ALWAYS AS (net * 1.2) STORED';
            END IF;
        END $$;
        ALTER TABLE prices ADD COLUMN tail text DEFAULT 'x';
        INSERT INTO prices (id, server_id, net) VALUES (1, 'srv1', 10), (2, 'srv2', 20), (3, 'srv1', 0.5);
        """
    )


def test_a_schema_named_with_a_dot_holding_partitions_and_names_of_63_bytes(h):
    long_table = "ö" * 31 + "t"  # 63 bytes in UTF-8: the longest name PostgreSQL keeps
    long_column = "c" * 63
    out = h.check(
        ROOT
        + f"""
        CREATE SCHEMA "tenant.eu";
        CREATE TABLE "tenant.eu".events (id int, day date, server_id text REFERENCES mcp_servers ON DELETE CASCADE,
            PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
        CREATE TABLE "tenant.eu"."2024.q1" PARTITION OF "tenant.eu".events
            FOR VALUES FROM ('2024-01-01') TO ('2024-04-01');
        CREATE TABLE "tenant.eu"."{long_table}" ("{long_column}" int PRIMARY KEY, event int, day date,
            FOREIGN KEY (event, day) REFERENCES "tenant.eu"."2024.q1" ON DELETE CASCADE);
        INSERT INTO "tenant.eu".events VALUES (1, '2024-01-05', 'srv1'), (2, '2024-02-05', 'srv2');
        INSERT INTO "tenant.eu"."{long_table}" VALUES (1, 1, '2024-01-05'), (2, 2, '2024-02-05');
        """
    )
    assert out.report.snapshot["tenant.eu.events"] == 1 and out.report.snapshot[f"tenant.eu.{long_table}"] == 1


def test_a_self_reference_on_a_partitioned_table_across_partitions(h):
    h.check(
        ROOT
        + """
        CREATE TABLE events (id int, day date, server_id text REFERENCES mcp_servers ON DELETE CASCADE,
            parent_id int, parent_day date, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
        CREATE TABLE events_h1 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2024-07-01');
        CREATE TABLE events_h2 PARTITION OF events FOR VALUES FROM ('2024-07-01') TO ('2025-01-01');
        ALTER TABLE events ADD FOREIGN KEY (parent_id, parent_day) REFERENCES events ON DELETE CASCADE;
        INSERT INTO events VALUES (1, '2024-01-01', 'srv1', NULL, NULL), (2, '2024-08-01', NULL, 1, '2024-01-01'),
            (3, '2024-02-01', NULL, 2, '2024-08-01'), (4, '2024-02-01', 'srv2', NULL, NULL),
            (5, '2024-09-01', NULL, 4, '2024-02-01');
        """
    )


def test_a_counter_cache_kept_by_a_delete_trigger(h):
    h.check(
        ROOT
        + """
        CREATE TABLE threads (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE,
            posts int NOT NULL DEFAULT 0);
        CREATE TABLE posts (id int PRIMARY KEY, thread int NOT NULL REFERENCES threads ON DELETE CASCADE);
        CREATE FUNCTION uncount() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
            UPDATE threads SET posts = posts - 1 WHERE id = OLD.thread; RETURN OLD; END $$;
        CREATE TRIGGER uncount AFTER DELETE ON posts FOR EACH ROW EXECUTE FUNCTION uncount();
        INSERT INTO threads VALUES (1, 'srv1', 2), (2, 'srv2', 1);
        INSERT INTO posts VALUES (10, 1), (11, 1), (12, 2);
        """
    )


def test_a_trigger_that_deletes_rows_the_delete_would_delete_anyway(h):
    out = h.check(
        ROOT
        + """
        CREATE TABLE a (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);
        CREATE TABLE b (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE, a_ref int);
        CREATE TABLE c (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE, a_ref int);
        CREATE FUNCTION tidy() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
            DELETE FROM b WHERE a_ref = OLD.id; DELETE FROM c WHERE a_ref = OLD.id; RETURN OLD; END $$;
        CREATE TRIGGER tidy AFTER DELETE ON a FOR EACH ROW EXECUTE FUNCTION tidy();
        INSERT INTO a VALUES (1, 'srv1'), (2, 'srv2');
        INSERT INTO b VALUES (1, 'srv1', 1), (2, 'srv1', NULL), (3, 'srv2', 2);
        INSERT INTO c VALUES (1, 'srv1', 1), (2, 'srv1', NULL), (3, 'srv2', 2);
        """
    )
    # Whichever of a, b, c goes first, the counts were those the person confirmed, and every row is gone.
    assert out.report.snapshot["public.b"] == 2 and out.result.verified


def test_rows_a_not_valid_check_rejects_are_a_restore_conflict_in_the_dry_run_too(h):
    db = h.database(
        ROOT
        + """
        CREATE TABLE quotas (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE, n int);
        INSERT INTO quotas VALUES (1, 'srv1', -1), (2, 'srv1', 3), (3, 'srv2', -5);
        ALTER TABLE quotas ADD CONSTRAINT positive CHECK (n > 0) NOT VALID;
        """
    )
    _, _, _, backups, request_id = h.delete(db, "s1")
    deleted = checksums(db.dsn)
    for dry_run in (True, False):
        with pytest.raises(RestoreConflict) as caught:
            backups.restore(h.stage(db), request_id, actor="UTEST", dry_run=dry_run)
        assert (
            "• public.quotas: a CHECK constraint added NOT VALID since these rows were written rejects them"
            " [positive], 1 row; e.g. 1"
        ) in caught.value.message
        assert checksums(db.dsn) == deleted


def test_names_with_slashes_newlines_and_commas_and_tables_named_like_the_engines_own(h):
    h.check(
        ROOT
        + """
        CREATE TABLE "a/../b" ("line
break" int PRIMARY KEY, "x,y" text, "back\\slash" text, server_id text REFERENCES mcp_servers ON DELETE CASCADE);
        INSERT INTO "a/../b" VALUES (1, 'a', 'b', 'srv1'), (2, 'a', 'b', 'srv2');
        CREATE TABLE mcpops_scope_1 (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);
        CREATE TABLE mcpops_scope_2 (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);
        CREATE TABLE mcpops_set_1 (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE SET NULL);
        INSERT INTO mcpops_scope_1 VALUES (1, 'srv1'), (2, 'srv2');
        INSERT INTO mcpops_scope_2 VALUES (1, 'srv1'), (2, 'srv2'), (3, 'srv1');
        INSERT INTO mcpops_set_1 VALUES (1, 'srv1'), (2, 'srv2');
        """
    )


def test_keys_of_different_but_comparable_types_through_a_cycle(h):
    h.check(
        """
        CREATE TABLE mcp_servers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, slug varchar(40) NOT NULL UNIQUE);
        INSERT INTO mcp_servers (slug) VALUES ('s1'), ('s2');
        CREATE TABLE a (id smallint PRIMARY KEY, server_id int REFERENCES mcp_servers ON DELETE CASCADE,
            slug text REFERENCES mcp_servers (slug) ON DELETE CASCADE, parent numeric);
        CREATE TABLE b (id numeric PRIMARY KEY, a_id int REFERENCES a ON DELETE CASCADE);
        ALTER TABLE a ADD FOREIGN KEY (parent) REFERENCES b ON DELETE CASCADE;
        INSERT INTO a VALUES (1, 1, NULL, NULL), (2, 2, NULL, NULL), (3, NULL, 's1', NULL), (4, NULL, NULL, NULL);
        INSERT INTO b VALUES (1.5, 1), (2.5, 2), (3.5, 4);
        UPDATE a SET parent = 1.5 WHERE id = 4;
        """
    )


def test_set_null_and_cascade_keys_of_single_partitions_and_of_an_inheritance_child(h):
    h.check(
        ROOT
        + """
        CREATE TABLE events (id int, day date, server_id text, note_server text, PRIMARY KEY (id, day))
            PARTITION BY RANGE (day);
        CREATE TABLE events_h1 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2024-07-01');
        CREATE TABLE events_h2 PARTITION OF events FOR VALUES FROM ('2024-07-01') TO ('2025-01-01');
        ALTER TABLE events_h1 ADD FOREIGN KEY (note_server) REFERENCES mcp_servers ON DELETE SET NULL;
        ALTER TABLE events_h2 ADD FOREIGN KEY (server_id) REFERENCES mcp_servers ON DELETE CASCADE;
        INSERT INTO events VALUES (1, '2024-01-01', 'srv1', 'srv1'), (2, '2024-08-01', 'srv1', 'srv1'),
            (3, '2024-02-01', 'srv2', 'srv2'), (4, '2024-09-01', 'srv2', 'srv1');
        CREATE TABLE items (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE SET NULL);
        CREATE TABLE sub_items (PRIMARY KEY (id), FOREIGN KEY (server_id) REFERENCES mcp_servers ON DELETE SET NULL)
            INHERITS (items);
        INSERT INTO items VALUES (1, 'srv1'), (2, 'srv2');
        INSERT INTO sub_items VALUES (1, 'srv1'), (3, 'srv1');
        """
    )
