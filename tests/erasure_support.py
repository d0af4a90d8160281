"""A person to forget, on the test platform database, and the hand-written erase a DBA would run.

Alice used two servers (a session and tool calls on each), has an OAuth token, preferences, a
support request tied to a session, a session-less one in a "thread" shared with Bob, and is
mentioned in Bob's tool call input and in her own profile. Her email is stored in mixed case.
"""

from __future__ import annotations

from sqlalchemy import text

from tests.conftest import StageDb

EMAIL = "alice.two@example.com"
TYPED = " Alice.TWO@example.com"  # as somebody types it: case and a stray space
USER = "msu_alice"
DISTINCT = "did_alice"

PERSON = """
INSERT INTO mcp_server_user (id, distinct_id, email, profile_data) VALUES
 ('msu_alice', 'did_alice', 'Alice.Two@Example.com', '{"ref": "alice.two@example.com", "plan": "pro"}');
INSERT INTO mcp_server_session (mcp_server_session_id, mcp_server_slug, connection_date, mcp_server_user_id)
 SELECT 'ses_a1', slug, current_date, 'msu_alice' FROM mcp_servers WHERE id = 'srv_big';
INSERT INTO mcp_server_session (mcp_server_session_id, mcp_server_slug, connection_date, mcp_server_user_id)
 SELECT 'ses_a2', slug, current_date, 'msu_alice' FROM mcp_servers WHERE id = 'srv_s1';
INSERT INTO mcp_tool_calls (id, mcp_server_id, tool_name, mcp_server_user_id, mcp_server_session_id, input) VALUES
 ('tc_a1', 'srv_big', 'send', 'msu_alice', 'ses_a1', '{"q": "mail alice.two@example.com"}'),
 ('tc_a2', 'srv_s1', 'send', 'msu_alice', 'ses_a2', NULL),
 ('tc_a3', 'srv_s1', 'send', 'msu_alice', 'ses_a2', '{"q": "weather"}'),
 ('tc_b', 'srv_big', 'send', 'msu_big_1', 'ses_big_1', '{"to": "Alice.Two@example.com", "cc": "bob@example.com"}');
INSERT INTO mcp_oauth_tokens (id, client_id, mcp_server_user_id) VALUES ('ot_alice', 'oc_s1_1', 'msu_alice');
INSERT INTO support_requests (id, email, organization_id, mcp_server_id, mcp_server_session_id, title, description)
 VALUES
 ('sr_a1', 'alice.two@example.com', 'org_1', 'srv_big', 'ses_a1', 'Broken', 'it broke'),
 ('sr_a2', 'ALICE.TWO@example.com ', 'org_1', 'srv_big', NULL, 'Thread 7', 'me too, write to alice.two@example.com'),
 ('sr_b2', 'bob@example.com', 'org_1', 'srv_big', NULL, 'Thread 7', 'same here'),
 ('sr_c2', 'carol@example.com', 'org_1', 'srv_big', NULL, 'Thread 7', 'and here');
INSERT INTO user_prefs VALUES ('msu_alice', 'dark');
INSERT INTO session_bookmarks VALUES ('bm_alice', 'ses_a2', 'hers');
ANALYZE;
"""

# The erase written by hand for this schema: the person's user rows, emails and sessions, then what
# hangs off them, children first.
_HAND_SCOPE = """
CREATE TEMP TABLE u ON COMMIT DROP AS SELECT id, lower(btrim(email)) AS email FROM mcp_server_user
    WHERE lower(btrim(email)) = :email OR distinct_id = :typed OR id = :typed;
CREATE TEMP TABLE e ON COMMIT DROP AS SELECT email FROM u WHERE email IS NOT NULL UNION SELECT :email;
CREATE TEMP TABLE s ON COMMIT DROP AS SELECT mcp_server_session_id AS id FROM mcp_server_session
    WHERE mcp_server_user_id IN (SELECT id FROM u);
UPDATE session_bookmarks SET session_id = NULL WHERE session_id IN (SELECT id FROM s);
DELETE FROM billing.usage_records WHERE session_id IN (SELECT id FROM s);
DELETE FROM walkthrough_step_completions
    WHERE mcp_server_user_id IN (SELECT id FROM u) OR mcp_server_session_id IN (SELECT id FROM s);
DELETE FROM mcp_tool_calls
    WHERE mcp_server_user_id IN (SELECT id FROM u) OR mcp_server_session_id IN (SELECT id FROM s);
"""
_HAND_USER = """
DELETE FROM mcp_oauth_tokens WHERE mcp_server_user_id IN (SELECT id FROM u);
DELETE FROM user_prefs WHERE user_id IN (SELECT id FROM u);
DELETE FROM mcp_server_session WHERE mcp_server_session_id IN (SELECT id FROM s);
DELETE FROM mcp_server_user WHERE id IN (SELECT id FROM u);
"""
# The default settings: support_requests.email rows deleted.
HAND_ERASE = (
    _HAND_SCOPE
    + """
DELETE FROM support_requests
    WHERE mcp_server_session_id IN (SELECT id FROM s) OR lower(btrim(email)) IN (SELECT email FROM e);
"""
    + _HAND_USER
)
# support_requests anonymised (title, description cleared) and the email replaced in every tool call
# input that still mentions it (ERASURE_SCAN_ALL).
HAND_ANONYMISE = (
    _HAND_SCOPE
    + """
DELETE FROM support_requests WHERE mcp_server_session_id IN (SELECT id FROM s);
UPDATE support_requests
    SET email = 'erased-' || left(encode(sha256(convert_to(lower(btrim(email)), 'UTF8')), 'hex'), 16),
        title = NULL, description = NULL
    WHERE lower(btrim(email)) IN (SELECT email FROM e);
UPDATE mcp_tool_calls
    SET input = regexp_replace(input::text, :pattern, :token, 'gi')::jsonb
    WHERE input::text ~* :pattern;
"""
    + _HAND_USER
)

ANONYMISE_ENV = {
    "ERASURE_MODE_support_requests": "anonymise",
    "ERASURE_JSON_COLUMNS": "mcp_tool_calls.input,mcp_server_user.profile_data",
    "ERASURE_SCAN_ALL": "1",
}


def add_person(db: StageDb) -> None:
    db.execute(PERSON)


def hand_erase(db: StageDb, script: str = HAND_ERASE) -> None:
    from bot.erasure.identity import email_digest, token

    params = {
        "email": EMAIL,
        "typed": TYPED.strip(),
        "pattern": EMAIL.replace(".", r"\."),
        "token": token(email_digest(EMAIL)),
    }
    with db.engine.begin() as conn:
        for statement in (s.strip() for s in script.split(";")):
            if statement:
                conn.execute(text(statement), {k: v for k, v in params.items() if f":{k}" in statement})
