"""The deletion engine on real schemas, continued: row-level security and privileges, blockers the
database would raise, triggers and byte-exact restores, failures in words with nothing changed.

As in test_engine_schemas.py: each case builds its own schema and `EngineHarness` compares the
bot's delete and restore with PostgreSQL's own, over every table of every user schema.
"""

from __future__ import annotations

import psycopg
import pytest

from bot.backups.restore import RestoreFailed
from bot.deletion.execute import DeleteFailed, execute_delete
from bot.deletion.scope import Rules
from bot.errors import QueryTimeout
from tests.engine_harness import ROOT, checksums, role

# -- row-level security and privileges ----------------------------------------------------------


RLS = (
    ROOT
    + role("engine_reader")
    + role("engine_owner")
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
    out = h.check(  # nor is a role with BYPASSRLS, even under FORCE ROW LEVEL SECURITY
        RLS + role("engine_bypass", "BYPASSRLS") + "ALTER TABLE secrets FORCE ROW LEVEL SECURITY;"
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO engine_bypass;",
        role="engine_bypass",
    )
    assert out.report.snapshot["public.secrets"] == 2


def test_a_missing_privilege_names_the_table_and_the_privilege(h):
    schema = (
        ROOT
        + role("engine_reader")
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


def test_set_null_and_set_default_of_some_columns_of_a_composite_key(h):
    out = h.check(  # PostgreSQL 15's ON DELETE SET NULL (columns): the tenant stays
        """
        CREATE TABLE mcp_servers (tenant text, id text, slug text NOT NULL UNIQUE, PRIMARY KEY (tenant, id));
        INSERT INTO mcp_servers VALUES ('t1', 'srv1', 's1'), ('t1', 'srv2', 's2'), ('t1', 'srv0', 's0');
        CREATE TABLE links (id int PRIMARY KEY, tenant text NOT NULL, server_id text,
            FOREIGN KEY (tenant, server_id) REFERENCES mcp_servers ON DELETE SET NULL (server_id));
        CREATE TABLE pins (id int PRIMARY KEY, tenant text NOT NULL, server_id text DEFAULT 'srv0',
            FOREIGN KEY (tenant, server_id) REFERENCES mcp_servers ON DELETE SET DEFAULT (server_id));
        INSERT INTO links VALUES (1, 't1', 'srv1'), (2, 't1', 'srv2');
        INSERT INTO pins VALUES (1, 't1', 'srv1'), (2, 't1', 'srv2');
        """
    )
    assert [t.columns for t in out.report.tables if t.action != "delete"] == [["server_id"], ["server_id"]]


def test_tables_of_one_name_in_two_schemas(h):
    out = h.check(
        ROOT
        + """
        CREATE SCHEMA app;
        CREATE TABLE items (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);
        CREATE TABLE app.items (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE,
            parent int REFERENCES public.items ON DELETE CASCADE);
        INSERT INTO items VALUES (1, 'srv1'), (2, 'srv2');
        INSERT INTO app.items VALUES (1, 'srv1', NULL), (2, NULL, 1), (3, 'srv2', 2);
        """
    )
    assert out.report.snapshot["app.items"] == 2 and out.report.snapshot["public.items"] == 1
    assert {t.table for t in out.report.tables} == {"mcp_servers", "items", "app.items"}


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
    db = h.database(COUNTERS + role("engine_writer") + "GRANT ALL ON ALL TABLES IN SCHEMA public TO engine_writer;")
    _, report, _, backups, request_id = h.delete(db, "s1", role="engine_writer")
    checked = backups.restore(h.stage(db, "engine_writer"), request_id, actor="UTEST", dry_run=True)
    assert [d.split(" (")[0] for d in checked.triggers_fire] == [
        "trigger count_posts on posts",
        "trigger stamp on threads",
    ]
    assert checked.triggers_disabled == [] and not checked.restored
    assert {(t.trigger, t.on_restore) for t in report.triggers} == {("count_posts", "fires"), ("stamp", "fires")}
    assert db.scalar("SELECT tgenabled FROM pg_trigger WHERE tgname = 'stamp'") == "A"


def test_a_restore_waiting_to_turn_triggers_off_fails_in_words_and_writes_nothing(h):
    db = h.database(COUNTERS)
    before = checksums(db.dsn)
    _, _, _, backups, request_id = h.delete(db, "s1")
    deleted = checksums(db.dsn)
    stage = h.stage(db)
    with psycopg.connect(db.dsn) as holder:
        holder.execute("INSERT INTO threads (id, server_id) VALUES (9, 'srv2')")  # open: it holds threads
        with pytest.raises(RestoreFailed) as caught:
            backups.restore(stage, request_id, actor="UTEST", dry_run=False)
        holder.rollback()
    assert caught.value.message.startswith(
        "nothing was restored: turning the user triggers of `threads` off while the rows go back (ALTER TABLE ..."
        " DISABLE TRIGGER) waits for every open transaction that wrote to it, and one held it past lock_timeout"
    )
    assert checksums(db.dsn) == deleted
    modes = "SELECT string_agg(tgname || '=' || tgenabled::text, ',' ORDER BY tgname) FROM pg_trigger"
    assert db.scalar(modes + " WHERE NOT tgisinternal") == "count_posts=O,stamp=A"
    assert backups.restore(stage, request_id, actor="UTEST", dry_run=False).restored  # once it ended
    assert checksums(db.dsn) == before


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
        + role("engine_dmy")
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
    db = h.database(
        ROOT + "CREATE TABLE jobs (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);"
        "INSERT INTO jobs VALUES (1, 'srv1'), (2, 'srv1');"
    )
    before = checksums(db.dsn)
    stage = h.stage(db)
    held = {
        "SELECT * FROM jobs WHERE id = 2 FOR UPDATE": " on `jobs`",  # a row lock: the server names its table
        "LOCK TABLE jobs IN SHARE MODE": "",  # a table lock: it does not
    }
    for hold, where in held.items():
        with psycopg.connect(db.dsn) as holder:
            holder.execute(hold)
            with pytest.raises(QueryTimeout) as caught:
                execute_delete(stage, "s1", expected=None, budget_s=60)
        assert caught.value.message == (
            f"stage dev: a lock{where} could not be taken within lock_timeout (another session holds it); nothing"
            " was deleted (the transaction was rolled back); try again once it is released (`/mcp sessions"
            " --stage dev` shows long and idle-in-transaction sessions)"
        )
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
