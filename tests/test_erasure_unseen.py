"""Erasure cases nobody planned for: column types (citext, varchar, domains), several user rows with one
email, json (not jsonb) columns, constraints on anonymised columns, triggers, confusable identifiers,
and a failure in the middle that must leave every table of every schema as it was."""

from __future__ import annotations

import pytest

from bot.erasure.identity import email_digest, token
from bot.errors import NotFound, UserFacingError
from tests.conftest import StageDb
from tests.deletion_support import checksums
from tests.test_erasure_engine import forget

MULTI = """
CREATE EXTENSION IF NOT EXISTS citext;
ALTER TABLE mcp_server_user ALTER COLUMN email TYPE citext;
INSERT INTO mcp_server_user (id, distinct_id, email) VALUES
 ('msu_m1', 'did_m1', 'Multi.User@Example.COM'), ('msu_m2', 'did_m2', ' multi.user@example.com'),
 ('msu_m3', 'did_m3', 'multi.user@example.co');
INSERT INTO mcp_server_session (mcp_server_session_id, mcp_server_slug, connection_date, mcp_server_user_id)
 SELECT 'ses_m' || n, slug, current_date, 'msu_m' || n FROM mcp_servers, generate_series(1, 3) n
 WHERE id = 'srv_s1';
CREATE SCHEMA "Crm";
CREATE DOMAIN "Crm".email_text AS text CHECK (VALUE ~ '@|^erased-');
CREATE TABLE "Crm"."Leads" (id int PRIMARY KEY, "Email" citext, wide varchar(320), dom "Crm".email_text);
INSERT INTO "Crm"."Leads" VALUES
 (1, 'MULTI.user@example.com', NULL, NULL), (2, NULL, ' Multi.User@example.com  ', NULL),
 (3, NULL, NULL, 'multi.USER@example.com'), (4, 'other@example.com', 'multi.user@example.co', 'x@y.z');
"""


def test_one_email_in_several_user_rows_and_in_citext_varchar_and_domain_columns(stage_db: StageDb):
    stage_db.execute(MULTI)
    env = {"ERASURE_COLUMNS": '"Crm"."Leads"."Email", "Crm"."Leads".wide, "Crm"."Leads".dom'}
    impact, result = forget(stage_db, env, "\tMULTI.user@EXAMPLE.com\n")
    assert result.verified, result.verification
    assert impact.users == 2
    assert stage_db.rows("SELECT id FROM mcp_server_user WHERE id LIKE 'msu_m%' ORDER BY 1") == [("msu_m3",)]
    assert stage_db.rows(
        "SELECT mcp_server_session_id FROM mcp_server_session WHERE mcp_server_session_id LIKE 'ses_m%'"
    ) == [("ses_m3",)]
    assert stage_db.rows('SELECT id FROM "Crm"."Leads" ORDER BY 1') == [(4,)]


UNIQUE = """
CREATE TABLE newsletter (id int PRIMARY KEY, email varchar(320) NOT NULL UNIQUE, name text NOT NULL);
INSERT INTO newsletter VALUES (1, 'Nina@Example.com', 'Nina'), (2, 'nina@example.com ', 'Nina again'),
 (3, 'nina@example.org', 'Not her');
INSERT INTO mcp_server_user (id, email) VALUES ('msu_nina', 'nina@example.com');
"""


def test_anonymising_a_unique_not_null_column_keeps_values_unique(stage_db: StageDb):
    stage_db.execute(UNIQUE)
    env = {
        "ERASURE_COLUMNS": "newsletter.email",
        "ERASURE_MODE_newsletter": "anonymise",
        "ERASURE_CLEAR_COLUMNS": "newsletter.name",
    }
    impact, result = forget(stage_db, env, "NINA@example.com")
    assert result.verified, result.verification
    assert [a.rows for a in impact.anonymised] == [2]
    # The same person signs up again and is erased again: the older tokens do not collide with the new one.
    stage_db.execute("INSERT INTO newsletter VALUES (4, 'NINA@example.com', 'Nina, back')")
    _, again = forget(stage_db, env, "nina@example.com")
    assert again.verified, again.verification
    rows = stage_db.rows("SELECT id, email, name FROM newsletter ORDER BY 1")
    assert rows[2] == (3, "nina@example.org", "Not her")
    erased = [r[1] for r in rows if r[0] != 3]
    assert len(set(erased)) == 3 and all(len(e) <= 320 for e in erased)
    prefix = token(email_digest("nina@example.com")) + "-"  # the person's rows still group together
    assert all(e.startswith(prefix) and len(e) == len(prefix) + 8 for e in erased)
    assert all(r[2] == "" for r in rows if r[0] != 3)  # NOT NULL free text emptied


JSON_PLAIN = """
CREATE TABLE events (id int PRIMARY KEY, body json, tags jsonb);
INSERT INTO events VALUES
 (1, '{"who": {"list": ["Jo@Example.com", 2, {"k": "mail JO@example.com now"}]}, "x": 1}', '["jo@example.com"]'),
 (2, '{"who": "someone@example.com"}', '{"a": {"b": ["c", {"JO@EXAMPLE.COM": 1}]}}'),
 (3, '{"id": "msu_ghost"}', '{"note": "msu_ghost"}');
INSERT INTO mcp_server_user (id, email) VALUES ('msu_jo', 'jo@example.com');
"""


def test_emails_in_json_and_jsonb_arrays_and_nested_objects(stage_db: StageDb):
    stage_db.execute(JSON_PLAIN)
    env = {"ERASURE_JSON_COLUMNS": "events.body, events.tags", "ERASURE_SCAN_ALL": "1"}
    _, result = forget(stage_db, env, "jo@example.com")
    assert result.verified, result.verification
    erased = token(email_digest("jo@example.com"))
    body, tags = stage_db.rows("SELECT body::text, tags::text FROM events WHERE id = 1")[0]
    assert "jo@" not in body.lower() and erased in body and f"mail {erased} now" in body
    assert tags == f'["{erased}"]'
    assert (
        stage_db.scalar("SELECT tags::text FROM events WHERE id = 2") == f'{{"a": {{"b": ["c", {{"{erased}": 1}}]}}}}'
    )


def test_a_user_id_with_no_row_that_only_appears_in_json_matches_nothing(stage_db: StageDb):
    stage_db.execute(JSON_PLAIN)
    before = checksums(stage_db)
    env = {"ERASURE_JSON_COLUMNS": "events.body, events.tags", "ERASURE_SCAN_ALL": "1"}
    with pytest.raises(NotFound, match="nothing on this stage matches sha256:") as nothing:
        forget(stage_db, env, "msu_ghost")
    assert "ghost" not in str(nothing.value)
    assert checksums(stage_db) == before


def test_confusable_identifiers_do_not_match_the_real_person(stage_db: StageDb):
    stage_db.execute("INSERT INTO mcp_server_user (id, email) VALUES ('msu_jo', 'jo@example.com')")
    before = checksums(stage_db)
    for lookalike in (
        "j\u043e@example.com",  # a Cyrillic o
        "jo\u200b@example.com",
        "jo\uff20example.com",  # a full-width at sign
        "jo@example.com.",
        "JO@EXAMPLE.COM\x00",
    ):
        with pytest.raises(NotFound, match="nothing on this stage matches"):
            forget(stage_db, {}, lookalike)
    assert checksums(stage_db) == before


CHECKED = """
CREATE DOMAIN strict_email AS text CHECK (VALUE ~ '^[^@]+@[^@]+$');
CREATE TABLE contacts (id int PRIMARY KEY, email strict_email NOT NULL);
INSERT INTO contacts VALUES (1, 'kim@example.com'), (2, 'lee@example.com');
INSERT INTO mcp_server_user (id, email) VALUES ('msu_kim', 'kim@example.com');
INSERT INTO mcp_server_session (mcp_server_session_id, mcp_server_slug, connection_date, mcp_server_user_id)
 SELECT 'ses_kim', slug, current_date, 'msu_kim' FROM mcp_servers WHERE id = 'srv_s1';
INSERT INTO support_requests (id, email, organization_id) VALUES ('sr_kim', 'kim@example.com', 'org_1');
"""


def test_a_failure_in_the_middle_leaves_every_table_of_every_schema_as_it_was(stage_db: StageDb):
    stage_db.execute(CHECKED)
    before = checksums(stage_db)
    env = {"ERASURE_COLUMNS": "support_requests.email, contacts.email", "ERASURE_MODE_contacts": "anonymise"}
    with pytest.raises(UserFacingError) as failed:
        forget(stage_db, env, "kim@example.com")
    assert "check constraint `strict_email_check`" in failed.value.message and "kim" not in failed.value.message
    assert checksums(stage_db) == before


AUDITED = """
CREATE TABLE user_audit (id serial PRIMARY KEY, what text, email text);
CREATE FUNCTION audit_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO user_audit (what, email) VALUES (TG_OP, OLD.email); RETURN OLD; END $$;
CREATE TRIGGER user_audit AFTER DELETE ON mcp_server_user FOR EACH ROW EXECUTE FUNCTION audit_user();
INSERT INTO mcp_server_user (id, email) VALUES ('msu_pat', 'pat@example.com');
"""


def test_a_trigger_that_copies_the_email_elsewhere_is_caught(stage_db: StageDb):
    stage_db.execute(AUDITED)
    """The bot cannot stop a trigger copying the email at delete time: the report names the trigger before
    anyone confirms, and the check after the commit says what is left (the audit table is listed)."""
    impact, result = forget(stage_db, {"ERASURE_COLUMNS": "user_audit.email"}, "pat@example.com")
    assert [(t.table, t.trigger) for t in impact.delete.triggers] == [("mcp_server_user", "user_audit")]
    assert not result.verified and "user_audit: 1 row still holds the email" in result.verification


FROZEN = """
INSERT INTO mcp_server_user (id, distinct_id, email) VALUES ('msu_fay', 'did_fay', 'fay@example.com');
INSERT INTO mcp_server_session (mcp_server_session_id, mcp_server_slug, connection_date, mcp_server_user_id)
 SELECT 'ses_fay', slug, current_date, 'msu_fay' FROM mcp_servers WHERE id = 'srv_s1';
INSERT INTO mcp_tool_calls (id, mcp_server_id, tool_name, mcp_server_user_id, mcp_server_session_id) VALUES
 ('tc_fay', 'srv_s1', 'send', 'msu_fay', 'ses_fay');
INSERT INTO support_requests (id, email, organization_id) VALUES ('sr_fay', 'fay@example.com', 'org_1');
CREATE FUNCTION frozen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'tool call % of user % (%) is frozen', OLD.id, OLD.mcp_server_user_id, 'fay@example.com'; END $$;
CREATE TRIGGER frozen BEFORE DELETE ON mcp_tool_calls FOR EACH ROW EXECUTE FUNCTION frozen();
"""


def test_a_trigger_refusing_midway_rolls_everything_back_and_its_message_does_not_name_the_person(stage_db: StageDb):
    stage_db.execute(FROZEN)
    before = checksums(stage_db)
    for identifier in ("msu_fay", "did_fay", "FAY@example.com"):
        with pytest.raises(UserFacingError) as failed:
            forget(stage_db, {}, identifier)
        message = failed.value.message
        assert "a trigger or function refused" in message and "tc_fay" in message, message
        assert "msu_fay" not in message and "did_fay" not in message and "fay@" not in message, message
        assert checksums(stage_db) == before


def test_a_distinct_id_that_is_an_email_matches_in_any_case_but_other_distinct_ids_exactly(stage_db: StageDb):
    stage_db.execute(
        "INSERT INTO mcp_server_user (id, distinct_id, email) VALUES"
        " ('msu_xp', 'X.Person@Mail.com', NULL), ('msu_yp', 'Did_Y', 'y@mail.com');"
        " INSERT INTO support_requests (id, email, organization_id) VALUES ('sr_xp', 'x.person@mail.com', 'org_1')"
    )
    impact, result = forget(stage_db, {}, " x.PERSON@mail.com\n")
    assert result.verified and impact.users == 1, result.verification
    assert stage_db.scalar("SELECT count(*) FROM mcp_server_user WHERE id = 'msu_xp'") == 0
    assert stage_db.scalar("SELECT count(*) FROM support_requests WHERE id = 'sr_xp'") == 0
    with pytest.raises(NotFound):
        forget(stage_db, {}, "did_y")  # not an email: exactly as stored
