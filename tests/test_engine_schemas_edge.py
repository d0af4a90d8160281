"""The deletion engine on schemas the other case files do not build: a root table outside `public`,
composite and doubled foreign keys, long chains of mixed rules, partition-wise keys and default
partitions, triggers that skip or add rows, identity columns, rare types and names, deferrable and
exclusion constraints, views, wide tables and hundreds of tables in scope.

As in test_engine_schemas.py: each case builds its own schema and `EngineHarness` compares the
bot's delete and restore with PostgreSQL's own, over every table of every user schema.
"""

from __future__ import annotations

import pytest

from bot.backups.restore import RestoreConflict
from tests.engine_harness import ROOT, checksums

# -- where the root is, and how rows reach it ------------------------------------------------------


def test_a_root_table_in_a_quoted_schema_found_on_the_search_path(h):
    out = h.check(
        """
        CREATE SCHEMA "Ops Core";
        DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET search_path = "Ops Core", public',
            current_database()); END $$;
        CREATE TABLE "Ops Core".mcp_servers ("Id" text PRIMARY KEY, slug text NOT NULL UNIQUE);
        CREATE TABLE "Ops Core"."Server Keys" ("Key" int PRIMARY KEY,
            "Server" text REFERENCES "Ops Core".mcp_servers ON DELETE CASCADE);
        CREATE TABLE public.mcp_servers (id text PRIMARY KEY, slug text NOT NULL UNIQUE);  -- a decoy
        INSERT INTO "Ops Core".mcp_servers VALUES ('srv1', 's1'), ('srv2', 's2');
        INSERT INTO public.mcp_servers VALUES ('p1', 's1');
        INSERT INTO "Ops Core"."Server Keys" VALUES (1, 'srv1'), (2, 'srv2'), (3, 'srv1');
        """,
        reference="""DELETE FROM "Ops Core".mcp_servers WHERE slug = 's1'""",
    )
    assert out.report.snapshot["Ops Core.mcp_servers"] == 1 and out.report.snapshot["Ops Core.Server Keys"] == 2
    assert "public.mcp_servers" not in out.report.snapshot


def test_a_composite_foreign_key_of_slug_and_organisation(h):
    h.check(
        """
        CREATE TABLE mcp_servers (id text PRIMARY KEY, org_id int NOT NULL, slug text NOT NULL UNIQUE,
            UNIQUE (org_id, slug));
        INSERT INTO mcp_servers VALUES ('srv1', 1, 's1'), ('srv2', 2, 's2'), ('srv3', 1, 's3');
        CREATE TABLE installs (id int PRIMARY KEY, org_id int, server_slug text,
            FOREIGN KEY (org_id, server_slug) REFERENCES mcp_servers (org_id, slug) ON DELETE CASCADE);
        CREATE TABLE install_notes (id int PRIMARY KEY, org_id int, server_slug text,
            FOREIGN KEY (server_slug, org_id) REFERENCES mcp_servers (slug, org_id) ON DELETE SET NULL);
        INSERT INTO installs VALUES (1, 1, 's1'), (2, 2, 's2'), (3, 1, 's3'), (4, NULL, 's1');
        INSERT INTO install_notes VALUES (1, 1, 's1'), (2, 1, 's3'), (3, 2, 's2'), (4, NULL, 's1');
        """
    )


def test_two_foreign_keys_to_one_parent_in_scope_cascade_and_set_null(h):
    out = h.check(
        ROOT
        + """
        CREATE TABLE items (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);
        CREATE TABLE links (id int PRIMARY KEY, owner int REFERENCES items ON DELETE CASCADE,
            target int REFERENCES items ON DELETE SET NULL);
        INSERT INTO items VALUES (1, 'srv1'), (2, 'srv1'), (3, 'srv2'), (4, 'srv2');
        INSERT INTO links VALUES (10, 1, 2), (11, 3, 1), (12, 3, 4), (13, 2, NULL), (14, 4, 2), (15, 1, 1);
        """
    )
    assert out.report.snapshot["public.links"] == 3


def test_a_chain_of_six_tables_with_mixed_rules(h):
    h.check(
        ROOT
        + """
        CREATE TABLE t1 (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);
        CREATE TABLE t2 (id int PRIMARY KEY, t1_id int NOT NULL REFERENCES t1 ON DELETE CASCADE);
        CREATE TABLE t3 (id int PRIMARY KEY, t2_id int REFERENCES t2);  -- NO ACTION: deleted with the server
        CREATE TABLE t4 (id int PRIMARY KEY, t3_id int REFERENCES t3 ON DELETE CASCADE DEFERRABLE);
        CREATE TABLE t5 (id int PRIMARY KEY, t4_id int REFERENCES t4 ON DELETE SET NULL);
        CREATE TABLE t6 (id int PRIMARY KEY, t5_id int REFERENCES t5 ON DELETE CASCADE,
            t4_id int DEFAULT 0 REFERENCES t4 ON DELETE SET DEFAULT);
        INSERT INTO t1 VALUES (1, 'srv1'), (2, 'srv2');
        INSERT INTO t2 VALUES (1, 1), (2, 2), (3, 1);
        INSERT INTO t3 VALUES (1, 1), (2, 2), (3, 3), (4, NULL);
        INSERT INTO t4 VALUES (0, 4), (1, 1), (2, 2), (3, 3);
        INSERT INTO t5 VALUES (1, 1), (2, 2), (3, 3), (4, NULL);
        INSERT INTO t6 VALUES (1, 1, 1), (2, 2, 2), (3, 4, 3), (4, 3, 0);
        """,
        reference="DELETE FROM t3 WHERE t2_id IN (1, 3); DELETE FROM mcp_servers WHERE slug = 's1'",
    )


def test_partition_wise_keys_between_partitioned_tables_and_default_partitions(h):
    out = h.check(
        ROOT
        + """
        CREATE TABLE events (id int, created date, server_id text REFERENCES mcp_servers ON DELETE CASCADE,
            PRIMARY KEY (id, created)) PARTITION BY RANGE (created);
        CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
        CREATE TABLE events_other PARTITION OF events DEFAULT;
        CREATE TABLE event_facts (id int, created date, event_id int, fact text, PRIMARY KEY (id, created),
            FOREIGN KEY (event_id, created) REFERENCES events ON DELETE CASCADE) PARTITION BY RANGE (created);
        CREATE TABLE event_facts_2024 PARTITION OF event_facts FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
        CREATE TABLE event_facts_other PARTITION OF event_facts DEFAULT;
        CREATE TABLE by_kind (id int, kind text, event_id int, created date, PRIMARY KEY (id, kind),
            FOREIGN KEY (event_id, created) REFERENCES events ON DELETE SET NULL (event_id)) PARTITION BY LIST (kind);
        CREATE TABLE by_kind_a PARTITION OF by_kind FOR VALUES IN ('a');
        CREATE TABLE by_kind_rest PARTITION OF by_kind DEFAULT;
        INSERT INTO events VALUES (1, '2024-02-01', 'srv1'), (2, '1999-01-01', 'srv1'), (3, '2024-03-01', 'srv2'),
            (4, '2031-01-01', 'srv2');
        INSERT INTO event_facts VALUES (1, '2024-02-01', 1, 'x'), (2, '1999-01-01', 2, 'y'),
            (3, '2024-03-01', 3, 'z'), (4, '2031-01-01', 4, 'w');
        INSERT INTO by_kind VALUES (1, 'a', 1, '2024-02-01'), (2, 'zz', 2, '1999-01-01'), (3, 'a', 4, '2031-01-01');
        """
    )
    assert out.report.snapshot["public.events"] == 2 and out.report.snapshot["public.event_facts"] == 2


def test_an_on_update_cascade_only_key_is_no_action_on_delete(h):
    out = h.check(
        ROOT
        + """
        CREATE TABLE mirrors (id int PRIMARY KEY, server_slug text REFERENCES mcp_servers (slug) ON UPDATE CASCADE);
        INSERT INTO mirrors VALUES (1, 's1'), (2, 's2'), (3, 's1');
        """,
        reference="DELETE FROM mirrors WHERE server_slug = 's1'; DELETE FROM mcp_servers WHERE slug = 's1'",
    )
    assert out.report.snapshot["public.mirrors"] == 2


# -- triggers ------------------------------------------------------------------------------------


def test_a_before_delete_trigger_that_skips_rows_is_refused_with_nothing_changed(h):
    words, _ = h.refuse(
        ROOT
        + """
        CREATE TABLE invoices (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);
        CREATE FUNCTION keep_paid() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
            IF OLD.id = 2 THEN RETURN NULL; END IF; RETURN OLD; END $$;
        CREATE TRIGGER keep_paid BEFORE DELETE ON invoices FOR EACH ROW EXECUTE FUNCTION keep_paid();
        INSERT INTO invoices VALUES (1, 'srv1'), (2, 'srv1'), (3, 'srv2');
        """,
        foreseen=False,
    )
    assert (
        "invoices: expected to delete 2 rows, the database reported 1 (a BEFORE DELETE trigger that returns NULL"
        " skips its row: keep_paid on invoices); nothing was changed (rolled back)"
    ) in words


def test_a_trigger_that_writes_an_audit_row_on_delete(h):
    out = h.check(
        ROOT
        + """
        CREATE TABLE keys (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE, label text);
        CREATE TABLE key_audit (key_id int PRIMARY KEY, label text);  -- no serial: the dry run before burns values
        CREATE FUNCTION audit_key() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
            INSERT INTO key_audit (key_id, label) VALUES (OLD.id, OLD.label); RETURN OLD; END $$;
        CREATE TRIGGER audit_key AFTER DELETE ON keys FOR EACH ROW EXECUTE FUNCTION audit_key();
        INSERT INTO keys VALUES (1, 'srv1', 'a'), (2, 'srv2', 'b');
        """,
        exact_counts=False,
        lost=("public.key_audit",),
    )
    [note] = out.report.triggers
    assert (note.table, note.trigger, note.on_delete) == ("keys", "audit_key", True)


# -- values, names and constraints a restore must respect ------------------------------------------


def test_identity_always_keys_and_sequence_defaults_restore_as_they_were(h):
    h.check(
        ROOT
        + """
        CREATE TABLE runs (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            server_id text REFERENCES mcp_servers ON DELETE CASCADE, seq bigserial, n smallint DEFAULT 7);
        CREATE TABLE run_steps (id bigint GENERATED BY DEFAULT AS IDENTITY (START 100) PRIMARY KEY,
            run int NOT NULL REFERENCES runs ON DELETE CASCADE);
        INSERT INTO runs (server_id) VALUES ('srv1'), ('srv2'), ('srv1');
        INSERT INTO run_steps (run) VALUES (1), (2), (3), (3);
        """
    )


def test_rare_types_rare_names_and_copy_escaping(h):
    h.check(
        ROOT
        + """
        CREATE TYPE pair AS (k text, v numeric);
        CREATE TABLE "select" ("weird""name" int PRIMARY KEY, "from" text REFERENCES mcp_servers ON DELETE CASCADE,
            ts tsvector, cash money, span interval, bits bit varying(20), fixed bit(4), ip inet, net cidr,
            mac macaddr, mac8 macaddr8, big numeric(1000, 500), at timestamptz, plain timestamp, d date,
            t text, pairs pair[], chars "char", nm name, oid_ref regclass, pt point, box box, j jsonb[]);
        INSERT INTO "select" VALUES
            (1, 'srv1', to_tsvector('simple', 'The quick brown fox'),
             '-12345.67', '-178000000 years -3 mons 01:02:03.999999', B'10101', B'1111', '2001:db8::1/64',
             '10.0.0.0/8', '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05',
             ('9' || repeat('1', 499) || '.' || repeat('3', 499) || '7')::numeric, '294276-12-31 23:59:59.999999+00',
             '4713-01-01 00:00:00 BC', 'infinity', E'tab\\tnl\\ncr\\rbs\\\\ q''" \\x01\\x1f end\\\\N',
             ARRAY[ROW('a,b', 1.5)::pair, ROW(NULL, 'NaN')::pair, ROW('"q"', NULL)::pair], 'z', 'a name',
             'pg_class', '(1.5,-0)', '((0,0),(1,1))', ARRAY['{"a": "\\\\u0000x"}'::jsonb, 'null']),
            (2, 'srv1', '', 0, '0', B'', B'0000', '0.0.0.0', '::/0', '00:00:00:00:00:00',
             '00:00:00:00:00:00:00:00', '-0.000', '-infinity', '-infinity', '-infinity', E'\\\\N', '{}', '',
             '', NULL, NULL, NULL, '{}'),
            (3, 'srv2', 'a:1A', 1, '1 day', B'1', B'0001', '1.2.3.4', '1.2.3.0/24', '01:02:03:04:05:06',
             '01:02:03:04:05:06:07:08', 1, now(), now(), now(), 'kept', NULL, 'q', 'n', NULL, NULL, NULL, NULL);
        """
    )


def test_xml_documents_and_fragments_restore(h):
    # Its own case: the PostgreSQL 18 build the PG18 pass uses has no libxml (see PG18_DESELECT).
    h.check(
        ROOT
        + """
        CREATE TABLE docs (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE, x xml);
        INSERT INTO docs VALUES (1, 'srv1', '<a b="1">x &amp; y</a><!-- c -->tail'),
            (2, 'srv1', XMLPARSE(DOCUMENT '<?xml version="1.0"?><r><![CDATA[<&>]]></r>')), (3, 'srv2', '<k/>');
        """
    )


def test_deferrable_unique_and_exclusion_constraints_restore(h):
    schema = (
        ROOT
        + """
        CREATE TABLE bookings (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE,
            room int, during tsrange, code text UNIQUE DEFERRABLE INITIALLY DEFERRED,
            EXCLUDE USING gist (during WITH &&));
        INSERT INTO bookings VALUES (1, 'srv1', 1, '[2024-01-01,2024-01-02)', 'A'),
            (2, 'srv2', 1, '[2024-01-02,2024-01-03)', 'B'), (3, 'srv1', 2, '[2024-01-05,2024-01-06)', 'C');
        """
    )
    h.check(schema)
    db = h.database(schema)
    _, _, _, backups, request_id = h.delete(db, "s1")
    db.execute("INSERT INTO bookings VALUES (9, 'srv2', 3, '[2024-01-01 12:00,2024-01-01 13:00)', 'Z')")
    deleted = checksums(db.dsn)
    stage = h.stage(db)
    for dry_run in (True, False):  # the dry run sees the clash too, before anyone approves
        with pytest.raises(RestoreConflict) as caught:
            backups.restore(stage, request_id, actor="UTEST", dry_run=dry_run)
        assert (
            "• public.bookings: exclusion constraint (during) rejects it next to rows that exist now"
            ' [bookings_during_excl], 1 row; e.g. ["2024-01-01 00:00:00","2024-01-02 00:00:00")'
        ) in caught.value.message
        assert checksums(db.dsn) == deleted


def test_views_and_materialized_views_over_tables_in_scope_are_left_alone(h):
    out = h.check(
        ROOT
        + """
        CREATE TABLE hits (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);
        INSERT INTO hits VALUES (1, 'srv1'), (2, 'srv2');
        CREATE VIEW hit_view AS SELECT * FROM hits;
        CREATE MATERIALIZED VIEW hit_counts AS SELECT server_id, count(*) FROM hits GROUP BY 1;
        CREATE UNIQUE INDEX ON hit_counts (server_id);
        """
    )
    assert out.db.scalar("SELECT count(*) FROM hit_counts") == 2
    assert {t.table for t in out.report.tables} == {"mcp_servers", "hits"}


def test_a_table_of_two_hundred_columns(h):
    columns = ", ".join(f"c{i} {('text', 'int', 'numeric', 'timestamptz')[i % 4]}" for i in range(200))
    values = ", ".join(
        ("'v' || g", "g", "g / 7.0", "'2024-01-01'::timestamptz + g * interval '1 hour'")[i % 4] for i in range(200)
    )
    h.check(
        ROOT
        + f"""
        CREATE TABLE wide (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE, {columns});
        INSERT INTO wide SELECT g, CASE WHEN g % 3 = 0 THEN 'srv2' ELSE 'srv1' END, {values}
            FROM generate_series(1, 30) g;
        """
    )


def test_three_hundred_tables_in_a_chain_are_planned_counted_and_deleted(h):
    tables = []
    for i in range(1, 301):
        up = f"up int REFERENCES d{i - 1}" if i > 1 else "up text REFERENCES mcp_servers"
        also = " REFERENCES mcp_servers ON DELETE CASCADE" if i % 3 == 0 else ""
        one, two = ("1", "2") if i > 1 else ("'srv1'", "'srv2'")
        tables.append(
            f"CREATE TABLE d{i} (id int PRIMARY KEY, {up} ON DELETE CASCADE, server_id text{also});"
            f"INSERT INTO d{i} VALUES (1, {one}, 'srv1'), (2, {two}, 'srv2'), (3, {two}, 'srv1');"
        )
    out = h.check(ROOT + "\n".join(tables))  # a 300-deep chain once overflowed Python's stack building its SQL
    assert len(out.report.tables) == 301
    assert out.report.snapshot["public.d300"] == 2 and out.report.snapshot["public.d1"] == 1
    _, report = h.impact(h.stage(out.db), "s1")  # the database is as before again: the same plan and counts
    assert report.snapshot == out.report.snapshot  # (its time, linear in the tables, is a bench matter)
