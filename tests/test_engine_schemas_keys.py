"""The deletion engine on keys of every type PostgreSQL allows: arrays (alone, in a composite key, under a
domain), enums, domains, ranges, composite types, citext, uuid, and foreign keys whose columns have other
(comparable) types than the keys they reference (smallint or bigint to integer, integer to numeric).

Every key value the engine reads and binds back (the server's own row, the cost probes' samples, the
fixed point's tagged rows, the array probes of small parents) must compare in the referenced column's own
type: a key of integer[] read into Python and bound back is a smallint[] (`integer[] = smallint[]` does
not exist). (A foreign key from smallint[] or bigint[] to integer[] PostgreSQL itself refuses: "cannot be
implemented".) As in test_engine_schemas.py: each case builds its own schema and `EngineHarness` compares
the bot's delete and restore with PostgreSQL's own, over every table of every user schema, and the
dry run changes nothing.
"""

from __future__ import annotations

from bot.erasure.identity import Person, email_digest, token
from bot.erasure.plan import ErasureTarget, measure_erasure
from bot.erasure.run import run_erasure
from bot.erasure.settings import load_erasure_settings
from tests.engine_harness import ROOT, checksums, differences
from tests.test_delete_leaves import same_as_postgresql


def test_a_root_keyed_by_an_integer_array_and_children_keyed_by_arrays(h):
    out = h.check(
        """
        CREATE DOMAIN ints AS integer[];
        CREATE TABLE mcp_servers (id integer[] PRIMARY KEY, slug text NOT NULL UNIQUE);
        INSERT INTO mcp_servers VALUES ('{1,2}', 's1'), ('{1,2,3}', 's2'), ('{2,1}', 's3');
        CREATE TABLE paths (path integer[] PRIMARY KEY, server integer[] REFERENCES mcp_servers ON DELETE CASCADE);
        INSERT INTO paths VALUES ('{7}', '{1,2}'), ('{7,8}', '{1,2}'), ('{70000}', '{1,2,3}'), ('{}', '{2,1}');
        CREATE TABLE hops (id int PRIMARY KEY, path ints REFERENCES paths ON DELETE CASCADE,
            server ints REFERENCES mcp_servers ON DELETE CASCADE);
        INSERT INTO hops VALUES (1, '{7}', NULL), (2, '{7,8}', '{1,2,3}'), (3, '{70000}', NULL), (4, '{}', '{1,2}');
        CREATE TABLE marks (id int PRIMARY KEY, path integer[] REFERENCES paths ON DELETE SET NULL);
        INSERT INTO marks VALUES (1, '{7,8}'), (2, '{}');
        """
    )
    assert out.report.snapshot["public.paths"] == 2 and out.report.snapshot["public.hops"] == 3


def test_foreign_keys_of_other_comparable_types_than_the_keys_they_reference(h):
    out = h.check(
        """
        CREATE TABLE mcp_servers (id integer PRIMARY KEY, slug text NOT NULL UNIQUE, code numeric UNIQUE);
        INSERT INTO mcp_servers VALUES (1, 's1', 1.0), (2, 's2', 2.50), (40000, 's3', 3);
        CREATE TABLE small (id smallint PRIMARY KEY, server smallint REFERENCES mcp_servers ON DELETE CASCADE);
        INSERT INTO small VALUES (1, 1), (2, 2), (3, NULL);
        CREATE TABLE big (id bigint PRIMARY KEY, server bigint REFERENCES mcp_servers ON DELETE CASCADE,
            small bigint REFERENCES small ON DELETE CASCADE);
        INSERT INTO big VALUES (1, 1, NULL), (2, 40000, 2), (3, NULL, 1), (5000000000, 2, 3);
        CREATE TABLE coded (id int PRIMARY KEY, code int REFERENCES mcp_servers (code) ON DELETE CASCADE);
        INSERT INTO coded VALUES (1, 1), (2, 3);
        CREATE TABLE loops (id smallint PRIMARY KEY, up bigint, big bigint REFERENCES big ON DELETE CASCADE);
        ALTER TABLE loops ADD FOREIGN KEY (up) REFERENCES loops ON DELETE CASCADE;
        INSERT INTO loops VALUES (1, NULL, 3), (2, 1, NULL), (3, 2, NULL), (4, NULL, 2);
        """
    )
    assert out.report.snapshot["public.loops"] == 3 and out.report.snapshot["public.coded"] == 1


def test_a_composite_key_with_an_array_column_and_a_self_reference(h):
    h.check(
        """
        CREATE TABLE mcp_servers (id text PRIMARY KEY, slug text NOT NULL UNIQUE);
        INSERT INTO mcp_servers VALUES ('srv1', 's1'), ('srv2', 's2');
        CREATE TABLE nodes (server text REFERENCES mcp_servers ON DELETE CASCADE, path smallint[],
            parent_path smallint[], PRIMARY KEY (server, path),
            FOREIGN KEY (server, parent_path) REFERENCES nodes ON DELETE CASCADE);
        INSERT INTO nodes VALUES ('srv1', '{1}', NULL), ('srv1', '{1,2}', '{1}'), ('srv2', '{1}', NULL),
            ('srv2', '{1,2}', '{1}');
        CREATE TABLE leaves (id int PRIMARY KEY, server text, path smallint[],
            FOREIGN KEY (server, path) REFERENCES nodes ON DELETE CASCADE);
        INSERT INTO leaves VALUES (1, 'srv1', '{1,2}'), (2, 'srv2', '{1,2}'), (3, 'srv1', '{1}');
        """
    )


def test_keys_of_enum_domain_range_composite_citext_and_uuid_types(h):
    h.check(
        """
        CREATE EXTENSION citext;
        CREATE TYPE tier AS ENUM ('free', 'pro');
        CREATE DOMAIN posint AS int CHECK (VALUE > 0);
        CREATE TYPE pair AS (a int, b text);
        CREATE TABLE mcp_servers (id pair PRIMARY KEY, slug text NOT NULL UNIQUE, tier tier UNIQUE,
            slot int4range UNIQUE, handle citext UNIQUE, token uuid UNIQUE, num posint UNIQUE);
        INSERT INTO mcp_servers VALUES
            (ROW(1, 'a,b'), 's1', 'pro', '[1,5)', 'Alpha', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 1),
            (ROW(1, 'a'), 's2', 'free', '[5,9)', 'beta', 'b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 2);
        CREATE TABLE by_pair (id int PRIMARY KEY, server pair UNIQUE REFERENCES mcp_servers ON DELETE CASCADE);
        CREATE TABLE by_tier (t tier PRIMARY KEY REFERENCES mcp_servers (tier) ON DELETE CASCADE);
        CREATE TABLE by_slot (s int4range PRIMARY KEY REFERENCES mcp_servers (slot) ON DELETE CASCADE);
        CREATE TABLE by_handle (h citext PRIMARY KEY REFERENCES mcp_servers (handle) ON DELETE CASCADE);
        CREATE TABLE by_token (t uuid PRIMARY KEY REFERENCES mcp_servers (token) ON DELETE CASCADE);
        CREATE TABLE by_num (n posint PRIMARY KEY REFERENCES mcp_servers (num) ON DELETE CASCADE);
        CREATE TABLE below (id int PRIMARY KEY, p pair REFERENCES by_pair (server) ON DELETE CASCADE,
            t tier REFERENCES by_tier ON DELETE CASCADE, s int4range REFERENCES by_slot ON DELETE CASCADE,
            h citext REFERENCES by_handle ON DELETE CASCADE, u uuid REFERENCES by_token ON DELETE CASCADE,
            n int REFERENCES by_num ON DELETE CASCADE);
        INSERT INTO by_pair VALUES (1, ROW(1, 'a,b')), (2, ROW(1, 'a'));
        INSERT INTO by_tier VALUES ('pro'), ('free');
        INSERT INTO by_slot VALUES ('[1,5)'), ('[5,9)');
        INSERT INTO by_handle VALUES ('ALPHA'), ('Beta');
        INSERT INTO by_token VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'), ('b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
        INSERT INTO by_num VALUES (1), (2);
        INSERT INTO below VALUES (1, ROW(1, 'a,b'), NULL, NULL, NULL, NULL, NULL), (2, ROW(1, 'a'), 'pro', NULL, NULL,
            NULL, NULL), (3, NULL, 'free', '[1,5)', NULL, NULL, NULL), (4, NULL, NULL, '[5,9)', 'alpha', NULL, 2),
            (5, NULL, NULL, NULL, 'BETA', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', NULL), (6, NULL, NULL, NULL, NULL,
            'b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 1), (7, NULL, NULL, NULL, NULL, NULL, 2);
        """
    )


def test_small_parents_keyed_by_arrays_enums_composites_and_smaller_ints_on_forget_users_path(h):
    # delete_leaves: parents of at most 8 rows are probed as an array of their keys; not a key that is an
    # array itself (nor a domain over one): an array of arrays is no list of keys.
    snapshot, handed = same_as_postgresql(
        h,
        ROOT
        + """
        CREATE DOMAIN ints AS integer[];
        CREATE TYPE tier AS ENUM ('free', 'pro');
        CREATE TYPE pair AS (a int, b text);
        CREATE TABLE arrs (k ints PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);
        CREATE TABLE arr_notes (id int PRIMARY KEY, k integer[] REFERENCES arrs ON DELETE CASCADE);
        CREATE TABLE tiers (t tier PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);
        CREATE TABLE tier_notes (id int PRIMARY KEY, t tier REFERENCES tiers ON DELETE CASCADE);
        CREATE TABLE pairs (p pair PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);
        CREATE TABLE pair_notes (id int PRIMARY KEY, p pair REFERENCES pairs ON DELETE CASCADE);
        CREATE TABLE nums (n int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE);
        CREATE TABLE num_notes (id int PRIMARY KEY, n smallint REFERENCES nums ON DELETE CASCADE);
        INSERT INTO arrs VALUES ('{1,2}', 'srv1'), ('{1}', 'srv1'), ('{2,1}', 'srv2');
        INSERT INTO arr_notes VALUES (1, '{1,2}'), (2, '{1}'), (3, '{2,1}'), (4, NULL);
        INSERT INTO tiers VALUES ('pro', 'srv1'), ('free', 'srv2');
        INSERT INTO tier_notes VALUES (1, 'pro'), (2, 'free');
        INSERT INTO pairs VALUES (ROW(1, 'a,b'), 'srv1'), (ROW(1, 'a'), 'srv2');
        INSERT INTO pair_notes VALUES (1, ROW(1, 'a,b')), (2, ROW(1, 'a')), (3, ROW(1, 'a,b'));
        INSERT INTO nums VALUES (1, 'srv1'), (2, 'srv2');
        INSERT INTO num_notes VALUES (1, 1), (2, 2);
        """,
    )
    assert snapshot["public.arr_notes"] == 2 and snapshot["public.pair_notes"] == 2
    assert snapshot["public.tier_notes"] == 1 and snapshot["public.num_notes"] == 1
    assert sorted(handed) == ["public.arrs", "public.mcp_servers", "public.nums", "public.pairs", "public.tiers"]


def test_forgetting_a_user_keyed_by_an_integer_array_with_composite_keyed_rows_to_anonymise(h):
    # The person's key (integer[]) and the anonymised rows' keys (a composite) are held as text and bound
    # back cast to their columns' types: the roots, the JSON update by key, the check after the commit.
    schema = """
        CREATE TYPE pair AS (a int, b text);
        CREATE TABLE mcp_server_user (id integer[] PRIMARY KEY, email text);
        INSERT INTO mcp_server_user VALUES ('{1,2}', 'Alice@Example.com'), ('{3}', 'bob@example.com');
        CREATE TABLE user_prefs (user_id integer[] PRIMARY KEY REFERENCES mcp_server_user ON DELETE CASCADE, t text);
        INSERT INTO user_prefs VALUES ('{1,2}', 'dark'), ('{3}', 'light');
        CREATE TABLE support (id pair PRIMARY KEY, email text, meta jsonb);
        INSERT INTO support VALUES (ROW(1, 'a,b'), 'alice@example.com', '{"cc": "ALICE@example.com"}'),
            (ROW(2, 'y'), 'bob@example.com', '{"cc": "alice@example.com"}');
        """
    db = h.database(schema)
    reference = h.clone(db)
    erased = token(email_digest("alice@example.com"))
    reference.execute(
        "DELETE FROM user_prefs WHERE user_id = '{1,2}'; DELETE FROM mcp_server_user WHERE id = '{1,2}';"
        f" UPDATE support SET email = '{erased}', meta = '{{\"cc\": \"{erased}\"}}' WHERE id = ROW(1, 'a,b')::pair"
    )
    env = {
        "ERASURE_COLUMNS": "support.email",
        "ERASURE_MODE_support": "anonymise",
        "ERASURE_JSON_COLUMNS": "support.meta",
    }
    settings = load_erasure_settings(env)
    stage = h.stage(db)
    with stage.read() as conn:
        impact = measure_erasure(conn, settings, Person.of(" ALICE@example.com"))
    assert impact.users == 1 and impact.snapshot["public.user_prefs"] == 1
    target = ErasureTarget.from_json(impact.target)
    result = run_erasure(stage, settings, target, expected=impact.snapshot, budget_s=60)
    assert result.verified, result.verification
    assert differences(checksums(db.dsn), checksums(reference.dsn)) == []


def test_float_date_and_interval_keys_under_a_databases_own_output_settings(h):
    # The server's key is held as PostgreSQL prints it: under extra_float_digits = 0 a float8 would print
    # rounded (0.3 for 0.1 + 0.2) and name the other server; the stage's sessions pin extra_float_digits = 3.
    h.check(
        """
        DO $$ BEGIN
            EXECUTE format('ALTER DATABASE %I SET extra_float_digits = 0', current_database());
            EXECUTE format('ALTER DATABASE %I SET DateStyle = ''SQL, DMY''', current_database());
            EXECUTE format('ALTER DATABASE %I SET IntervalStyle = ''sql_standard''', current_database());
        END $$;
        CREATE TABLE mcp_servers (id float8 PRIMARY KEY, slug text NOT NULL UNIQUE, born date UNIQUE,
            every interval UNIQUE);
        INSERT INTO mcp_servers VALUES (0.1::float8 + 0.2::float8, 's1', '2024-11-03', '1 day 2 hours'),
            (0.3, 's2', '2024-03-11', '2 days');
        CREATE TABLE by_id (id int PRIMARY KEY, server float8 REFERENCES mcp_servers ON DELETE CASCADE);
        CREATE TABLE by_date (d date PRIMARY KEY REFERENCES mcp_servers (born) ON DELETE CASCADE);
        CREATE TABLE by_every (i interval PRIMARY KEY REFERENCES mcp_servers (every) ON DELETE CASCADE);
        CREATE TABLE below (id int PRIMARY KEY, d date REFERENCES by_date ON DELETE CASCADE,
            i interval REFERENCES by_every ON DELETE CASCADE);
        INSERT INTO by_id VALUES (1, 0.1::float8 + 0.2::float8), (2, 0.3);
        INSERT INTO by_date VALUES ('2024-11-03'), ('2024-03-11');
        INSERT INTO by_every VALUES ('1 day 2 hours'), ('2 days');
        INSERT INTO below VALUES (1, '2024-11-03', NULL), (2, '2024-03-11', '2 days'), (3, NULL, '26 hours');
        """
    )


def test_string_keys_compare_as_the_foreign_key_does_citext_and_char_to_text(h):
    # citext -> text and character(3) -> text keys compare as text (the foreign key's own operator: 'ab' is
    # not 'AB' nor 'ab '), not case-insensitively or blank-padded: other servers' rows stay.
    out = h.check(
        """
        CREATE EXTENSION IF NOT EXISTS citext;
        CREATE TABLE mcp_servers (id text PRIMARY KEY, slug text NOT NULL UNIQUE);
        INSERT INTO mcp_servers VALUES ('ab', 's1'), ('AB', 's2'), ('ab ', 's3');
        CREATE TABLE by_ci (id int PRIMARY KEY, server citext REFERENCES mcp_servers ON DELETE CASCADE);
        CREATE TABLE by_char (id character(3) PRIMARY KEY,
            server character(3) REFERENCES mcp_servers ON DELETE CASCADE);
        CREATE TABLE below (id int PRIMARY KEY, c character(3) REFERENCES by_char ON DELETE CASCADE);
        INSERT INTO by_ci VALUES (1, 'ab'), (2, 'AB'), (3, 'ab ');
        INSERT INTO by_char VALUES ('x', 'ab'), ('y', 'AB');
        INSERT INTO below VALUES (1, 'x'), (2, 'y'), (3, 'x  ');
        """
    )
    assert out.report.snapshot["public.by_ci"] == 1 and out.report.snapshot["public.by_char"] == 1
