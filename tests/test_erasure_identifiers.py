"""Identifiers and names nobody planned for: internationalised emails in mixed case (in columns and deep in
JSON), plus-addressing, ERASURE_COLUMNS naming quoted tables of other schemas, and tables referencing the
users with NO ACTION, SET NULL and SET DEFAULT rules."""

from __future__ import annotations

import pytest

from bot.config import ConfigError, load_settings
from bot.erasure.identity import email_digest, fold_collation, token
from bot.erasure.settings import ColumnRef, load_erasure_settings, parse_column_list
from tests.conftest import StageDb
from tests.deletion_support import checksums
from tests.test_erasure_engine import forget

ZOE = "Zoë.ÜNAL+Mcp@Exämple.de"  # as stored: capitals beyond ASCII, plus-addressing, an IDN domain
ZOE_TYPED = "zoë.ünal+mcp@EXÄMPLE.de "
ZOE_PEOPLE = f"""
INSERT INTO mcp_server_user (id, distinct_id, email) VALUES ('msu_zoe', 'did_zoe', '{ZOE}');
INSERT INTO mcp_server_session (mcp_server_session_id, mcp_server_slug, connection_date, mcp_server_user_id)
 SELECT 'ses_zoe', slug, current_date, 'msu_zoe' FROM mcp_servers WHERE id = 'srv_s1';
INSERT INTO mcp_tool_calls (id, mcp_server_id, tool_name, mcp_server_user_id, mcp_server_session_id, input) VALUES
 ('tc_zoe', 'srv_s1', 'send', 'msu_zoe', 'ses_zoe', '{{"q": "hi"}}'),
 ('tc_other', 'srv_big', 'send', 'msu_big_1', 'ses_big_1',
  '{{"to": [{{"deep": ["«ZOË.ünal+mcp@exämple.DE»", {{"ZOË.ÜNAL+MCP@EXÄMPLE.DE": true}}]}}],
     "cc": "zoë.ünal@exämple.de", "bcc": "zoë.ünal+mcp2@exämple.de"}}');
INSERT INTO support_requests (id, email, organization_id, title) VALUES
 ('sr_zoe', 'ZOË.ÜNAL+mcp@exämple.de', 'org_1', 'Vergiss mich'),
 ('sr_zoe_plain', 'zoë.ünal@exämple.de', 'org_1', 'not her: no +mcp');
"""


def test_an_internationalised_email_in_mixed_case_is_found_in_columns_and_deep_in_json(stage_db: StageDb):
    stage_db.execute(ZOE_PEOPLE)
    assert stage_db.scalar(f"SELECT lower('{ZOE}')") != ZOE.lower()  # the cluster's C locale lowers ASCII only
    before = checksums(stage_db)
    env = {"ERASURE_JSON_COLUMNS": "mcp_tool_calls.input", "ERASURE_SCAN_ALL": "1"}
    impact, result = forget(stage_db, env, ZOE_TYPED)
    assert result.verified, result.verification
    assert impact.users == 1 and impact.snapshot["public.support_requests"] == 1
    assert stage_db.scalar("SELECT count(*) FROM mcp_server_user WHERE id = 'msu_zoe'") == 0
    assert stage_db.rows("SELECT id FROM support_requests WHERE id LIKE 'sr_zoe%'") == [("sr_zoe_plain",)]
    erased = token(email_digest(ZOE))
    other = stage_db.scalar("SELECT input FROM mcp_tool_calls WHERE id = 'tc_other'")
    assert other == {
        "to": [{"deep": [f"«{erased}»", {erased: True}]}],
        "cc": "zoë.ünal@exämple.de",  # other addresses stay
        "bcc": "zoë.ünal+mcp2@exämple.de",
    }
    assert result.scanned == {"json public.mcp_tool_calls.input": 1}
    after = checksums(stage_db)
    changed = {t for t in before if before[t] != after[t]}
    assert changed == {
        "public.mcp_server_user",
        "public.mcp_server_session",
        "public.mcp_tool_calls",
        "public.support_requests",
    }


def test_lower_case_follows_unicode_whatever_the_database_collation(stage_db: StageDb):
    with stage_db.engine.connect() as conn:
        fold = fold_collation(conn)
    assert fold is not None  # PostgreSQL built with ICU (or 17+): the Unicode collation is found
    assert stage_db.scalar(f"""SELECT lower('ÉLODIE.İ.ΣΟΦΟΣ@X.FR' COLLATE "{fold}")""") == "élodie.İ.σοφος@x.fr".lower()


QUOTED = """
CREATE SCHEMA "CRM";
CREATE TABLE "CRM"."Contacts" ("Id" text PRIMARY KEY, "E-Mail" text NOT NULL, "Note" text NOT NULL, "Tags" text);
INSERT INTO "CRM"."Contacts" VALUES ('c1', ' Dan@X.io', 'call dan@x.io', 't'), ('c2', 'eve@x.io', 'hello', 't');
CREATE TABLE "CRM"."Mail, Log" (id int PRIMARY KEY, "To" text);
INSERT INTO "CRM"."Mail, Log" VALUES (1, 'DAN@x.io'), (2, 'eve@x.io');
INSERT INTO mcp_server_user (id, distinct_id, email) VALUES ('msu_dan', 'dan@x.io', NULL);
CREATE TABLE user_notes (id text PRIMARY KEY, user_id text REFERENCES mcp_server_user(id));
CREATE TABLE user_refs (id text PRIMARY KEY, user_id text REFERENCES mcp_server_user(id) ON DELETE SET NULL);
CREATE TABLE user_owners (
    id text PRIMARY KEY,
    user_id text DEFAULT 'msu_big_2' REFERENCES mcp_server_user(id) ON DELETE SET DEFAULT
);
INSERT INTO user_notes VALUES ('n1', 'msu_dan'), ('n2', 'msu_big_1');
INSERT INTO user_refs VALUES ('r1', 'msu_dan'), ('r2', 'msu_big_1');
INSERT INTO user_owners VALUES ('o1', 'msu_dan'), ('o2', 'msu_big_1');
"""


def test_quoted_names_in_other_schemas_and_every_on_delete_rule(stage_db: StageDb):
    """A distinct_id that is an email, with no email column value: its rows in quoted tables are matched."""
    stage_db.execute(QUOTED)
    env = {
        "ERASURE_COLUMNS": 'support_requests.email, "CRM"."Contacts"."E-Mail", "CRM"."Mail, Log"."To"',
        "ERASURE_MODE_Contacts": "anonymise",
        "ERASURE_CLEAR_COLUMNS": '"CRM"."Contacts"."Note", "CRM"."Contacts"."Nope"',
    }
    impact, result = forget(stage_db, env, "dan@x.io")
    assert result.verified, result.verification
    assert impact.skipped == ["CRM.Contacts.Nope"]
    assert [a.rows for a in impact.anonymised] == [1]
    erased = token(email_digest("dan@x.io"))
    assert stage_db.rows('SELECT * FROM "CRM"."Contacts" ORDER BY 1') == [
        ("c1", erased, "", "t"),  # NOT NULL free text is emptied
        ("c2", "eve@x.io", "hello", "t"),
    ]
    assert stage_db.rows('SELECT * FROM "CRM"."Mail, Log"') == [(2, "eve@x.io")]  # delete mode
    assert stage_db.rows("SELECT * FROM user_notes") == [("n2", "msu_big_1")]  # NO ACTION: deleted with the user
    assert stage_db.rows("SELECT * FROM user_refs ORDER BY 1") == [("r1", None), ("r2", "msu_big_1")]
    assert stage_db.rows("SELECT * FROM user_owners ORDER BY 1") == [("o1", "msu_big_2"), ("o2", "msu_big_1")]
    actions = {(s["table"], s["action"]): s["rows"] for s in result.steps}
    assert actions[("user_refs", "set null")] == 1 and actions[("user_owners", "set default")] == 1
    assert actions[("user_notes", "delete")] == 1 and actions[("mcp_server_user", "delete")] == 1


def test_column_lists_are_read_as_postgresql_reads_names():
    assert parse_column_list(' a.B, "S p"."T,1"."C""x" ,, Zoë.Ünal ') == [
        ("a", "b"),
        ("S p", "T,1", 'C"x'),
        ("zoë", "Ünal"),  # unquoted: ASCII letters folded only, as PostgreSQL does in UTF-8
    ]
    for bad in ("a", "a.b.c.d", 'a."b', "a.b c.d", "a..b", '"".b'):
        assert parse_column_list(bad) is None, bad
    settings = load_erasure_settings(
        {"ERASURE_COLUMNS": '"CRM"."Contacts"."E-Mail"', "ERASURE_MODE_Contacts": "anonymise"}
    )
    assert settings.columns == (ColumnRef("CRM", "Contacts", "E-Mail"),) and settings.mode("Contacts") == "anonymise"
    with pytest.raises(ConfigError, match="ERASURE_COLUMNS is malformed") as refused:
        load_settings({"BOT_DATABASE_URL": "postgresql://x/y", "ERASURE_COLUMNS": 'crm."secret'}, require_slack=False)
    assert "secret" not in str(refused.value)


def test_the_one_letter_whose_lower_case_is_longer_still_matches(stage_db: StageDb):
    """'İ' lowers to 'i' and a combining dot: the cheap length test before hashing must not skip it."""
    stage_db.execute(
        "INSERT INTO mcp_server_user (id, email) VALUES ('msu_ilkay', 'İlkay.Öz@example.com');"
        " INSERT INTO support_requests (id, email, organization_id)"
        " VALUES ('sr_ilkay', ' İLKAY.ÖZ@example.com', 'org_1')"
    )
    impact, result = forget(stage_db, {}, "İLKAY.ÖZ@EXAMPLE.COM")
    assert result.verified and impact.users == 1 and impact.snapshot["public.support_requests"] == 1
    assert stage_db.scalar("SELECT count(*) FROM mcp_server_user WHERE id = 'msu_ilkay'") == 0
    assert stage_db.scalar("SELECT count(*) FROM support_requests WHERE id = 'sr_ilkay'") == 0
