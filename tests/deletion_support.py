"""Tables no code in bot/ knows about, the hand-written truth of what a delete must remove, and
row-level fingerprints of every table, for the deletion tests.

The extra tables mimic what platform-schema.md warns about (tables the runbook misses):
- deploys -> deploy_steps -> deploy_logs: a three-level CASCADE chain, the last edge composite
  (deploy_id, step_no) and unindexed;
- session_bookmarks: ON DELETE SET NULL to sessions;
- billing.usage_records (another schema): CASCADE to sessions and NO ACTION to servers, like tool calls;
- legal_holds: ON DELETE RESTRICT to users, a table outside any server's scope;
- server_notes: a self-referencing CASCADE (replies of replies carry no server id);
- user_prefs: hangs off users only, so only orphaned users' prefs go.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, text

from bot.requests.store import STATES
from tests.conftest import OPERATOR, TEST_SPEC, BotHarness, StageDb
from tests.engine_harness import USER_TABLES

BIG = TEST_SPEC.big_slug
SMALL = "srv_s1"

EXTRA_DDL = """
CREATE SCHEMA billing;
CREATE TABLE deploys (
    id text PRIMARY KEY,
    server_id text NOT NULL REFERENCES mcp_servers(id) ON DELETE CASCADE,
    version text
);
CREATE INDEX deploys_server_idx ON deploys (server_id);
CREATE TABLE deploy_steps (
    deploy_id text NOT NULL REFERENCES deploys(id) ON DELETE CASCADE,
    step_no int NOT NULL,
    note text,
    PRIMARY KEY (deploy_id, step_no)
);
CREATE TABLE deploy_logs (
    id bigint PRIMARY KEY,
    deploy_id text NOT NULL,
    step_no int NOT NULL,
    line text,
    FOREIGN KEY (deploy_id, step_no) REFERENCES deploy_steps (deploy_id, step_no) ON DELETE CASCADE
);
CREATE TABLE session_bookmarks (
    id text PRIMARY KEY,
    session_id text REFERENCES mcp_server_session(mcp_server_session_id) ON DELETE SET NULL,
    label text
);
CREATE TABLE billing.usage_records (
    id text PRIMARY KEY,
    session_id text NOT NULL REFERENCES mcp_server_session(mcp_server_session_id) ON DELETE CASCADE,
    server_id text NOT NULL REFERENCES mcp_servers(id),
    units int NOT NULL
);
CREATE TABLE legal_holds (
    id text PRIMARY KEY,
    user_id text NOT NULL REFERENCES mcp_server_user(id) ON DELETE RESTRICT,
    note text
);
CREATE TABLE server_notes (
    id text PRIMARY KEY,
    server_id text REFERENCES mcp_servers(id) ON DELETE CASCADE,
    parent_id text REFERENCES server_notes(id) ON DELETE CASCADE,
    body text
);
CREATE TABLE user_prefs (
    user_id text PRIMARY KEY REFERENCES mcp_server_user(id) ON DELETE CASCADE,
    theme text
);
"""

EXTRA_DATA = """
INSERT INTO deploys VALUES ('d_big_1', 'srv_big', 'v1'), ('d_big_2', 'srv_big', 'v2'), ('d_s1_1', 'srv_s1', 'v1');
INSERT INTO deploy_steps SELECT d.id, s, 'step ' || s FROM deploys d, generate_series(1, 3) s;
INSERT INTO deploy_logs SELECT row_number() OVER (), ds.deploy_id, ds.step_no, 'log ' || l
    FROM deploy_steps ds, generate_series(1, 2) l;
INSERT INTO session_bookmarks VALUES
    ('bm_1', 'ses_big_0', 'first'), ('bm_2', 'ses_big_1', 'second'), ('bm_3', 'ses_big_2', 'third'),
    ('bm_4', 'ses_s1_0', 'other server'), ('bm_5', 'ses_s2_1', 'other server'), ('bm_6', NULL, 'no session');
INSERT INTO billing.usage_records
    SELECT 'ur_big_' || g, 'ses_big_' || g, 'srv_big', g FROM generate_series(0, 4) g;
INSERT INTO billing.usage_records VALUES ('ur_s1_0', 'ses_s1_0', 'srv_s1', 7), ('ur_s1_1', 'ses_s1_1', 'srv_s1', 8);
INSERT INTO legal_holds VALUES ('lh_1', 'msu_s2_0', 'not a user of the big server'),
    ('lh_2', 'msu_shared_0', 'shared with a small server'), ('lh_3', 'msu_lonely_0', 'no session at all');
INSERT INTO server_notes VALUES
    ('n1', 'srv_big', NULL, 'root note'), ('n2', NULL, 'n1', 'reply'), ('n3', NULL, 'n2', 'reply to reply'),
    ('m1', 'srv_s1', NULL, 'small note'), ('m2', NULL, 'm1', 'small reply');
INSERT INTO user_prefs VALUES
    ('msu_big_0', 'dark'), ('msu_big_1', 'light'), ('msu_big_2', 'dark'), ('msu_big_3', 'dark'), ('msu_big_4', 'x'),
    ('msu_shared_0', 'dark'), ('msu_lonely_0', 'light'), ('msu_s1_0', 'dark');
ANALYZE;
"""

# Makes a delete slow on purpose (seconds of sleep as the tool calls' DELETE starts), so a test can
# interrupt it mid-transaction: kill the stage, the bot, or send SIGTERM.
SLOW_TOOL_CALL_DELETE = """
CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(%s); RETURN NULL; END $$;
CREATE TRIGGER slow_delete BEFORE DELETE ON mcp_tool_calls FOR EACH STATEMENT EXECUTE FUNCTION slow_delete();
"""

ORPHANS = """SELECT mcp_server_user_id FROM mcp_server_session WHERE mcp_server_user_id IS NOT NULL
             GROUP BY 1 HAVING bool_and(mcp_server_slug = :slug)"""
SESSIONS = f"""SELECT mcp_server_session_id FROM mcp_server_session
               WHERE mcp_server_slug = :slug OR mcp_server_user_id IN ({ORPHANS})"""
SERVER = "SELECT id FROM mcp_servers WHERE slug = :slug"

# What deleting a server must remove, written by hand for this schema (keys as text).
TRUTH: dict[str, str] = {
    "public.mcp_servers": SERVER,
    "public.mcp_server_user": ORPHANS,
    "public.mcp_server_session": SESSIONS,
    "public.mcp_tool_calls": f"""SELECT id FROM mcp_tool_calls
        WHERE mcp_server_session_id IN ({SESSIONS}) OR mcp_server_user_id IN ({ORPHANS})
           OR mcp_server_id IN ({SERVER})""",
    "public.walkthrough_step_completions": f"""SELECT id FROM walkthrough_step_completions
        WHERE mcp_server_id IN ({SERVER}) OR mcp_server_session_id IN ({SESSIONS})
           OR mcp_server_user_id IN ({ORPHANS})""",
    "public.support_requests": f"""SELECT id FROM support_requests
        WHERE mcp_server_id IN ({SERVER}) OR mcp_server_session_id IN ({SESSIONS})""",
    "public.mcp_server_walkthroughs": f"SELECT id FROM mcp_server_walkthroughs WHERE mcp_server_id IN ({SERVER})",
    "public.mcp_oauth_clients": f"SELECT id FROM mcp_oauth_clients WHERE mcp_server_id IN ({SERVER})",
    "public.mcp_oauth_tokens": f"""SELECT id FROM mcp_oauth_tokens
        WHERE client_id IN (SELECT id FROM mcp_oauth_clients WHERE mcp_server_id IN ({SERVER}))
           OR mcp_server_user_id IN ({ORPHANS})""",
    "public.deploys": f"SELECT id FROM deploys WHERE server_id IN ({SERVER})",
    "public.deploy_steps": f"""SELECT deploy_id || '/' || step_no FROM deploy_steps
        WHERE deploy_id IN (SELECT id FROM deploys WHERE server_id IN ({SERVER}))""",
    "public.deploy_logs": f"""SELECT id::text FROM deploy_logs
        WHERE deploy_id IN (SELECT id FROM deploys WHERE server_id IN ({SERVER}))""",
    "billing.usage_records": f"""SELECT id FROM billing.usage_records
        WHERE session_id IN ({SESSIONS}) OR server_id IN ({SERVER})""",
    "public.server_notes": f"""WITH RECURSIVE r AS (SELECT id FROM server_notes WHERE server_id IN ({SERVER})
        UNION SELECT n.id FROM server_notes n JOIN r ON n.parent_id = r.id) SELECT id FROM r""",
    "public.user_prefs": f"SELECT user_id FROM user_prefs WHERE user_id IN ({ORPHANS})",
}
# Rows whose foreign key becomes NULL (ON DELETE SET NULL), not deleted.
SET_NULL_TRUTH = {"public.session_bookmarks": f"SELECT id FROM session_bookmarks WHERE session_id IN ({SESSIONS})"}


def add_extra_tables(db: StageDb) -> None:
    db.execute(EXTRA_DDL)
    db.execute(EXTRA_DATA)


def truth(db: StageDb, slug: str = BIG, queries: dict[str, str] = TRUTH) -> dict[str, set[str]]:
    with db.engine.connect() as conn:
        return {table: {str(r[0]) for r in conn.execute(text(sql), {"slug": slug})} for table, sql in queries.items()}


_TABLES = """
SELECT n.nspname, c.relname,
       ARRAY(SELECT a.attname FROM unnest(i.indkey::int2[]) k JOIN pg_attribute a
             ON a.attrelid = c.oid AND a.attnum = k ORDER BY array_position(i.indkey::int2[], k)) AS pk
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
"""


def fingerprints(db: StageDb) -> dict[str, dict[str, str]]:
    """Every table: primary key (as text) -> md5 of the whole row; byte-for-byte identity per row."""
    out: dict[str, dict[str, str]] = {}
    with db.engine.connect() as conn:
        for schema, name, pk in conn.execute(text(_TABLES)):
            key = " || '/' || ".join(f'"{c}"::text' for c in pk)
            rows = conn.execute(text(f'SELECT {key}, md5(t::text) FROM "{schema}"."{name}" t'))
            out[f"{schema}.{name}"] = {str(k): h for k, h in rows}
    return out


def table_checksums(conn: Connection) -> dict[str, tuple[int, str]]:
    """Every table of every user schema, with or without a key (partitions and inheritance children as
    their own, ONLY): (rows, md5 of string_agg over ordered rows), what a DBA would compare across a change."""
    out: dict[str, tuple[int, str]] = {}
    for schema, name in conn.execute(text(USER_TABLES)).all():
        ordered = "string_agg(t::text, E'\\n' ORDER BY t::text)"
        sql = f'SELECT count(*), md5(coalesce({ordered}, \'\')) FROM ONLY "{schema}"."{name}" t'
        rows, digest = conn.execute(text(sql)).one()
        out[f"{schema}.{name}"] = (int(rows), str(digest))
    return out


def checksums(db: StageDb) -> dict[str, tuple[int, str]]:
    with db.engine.connect() as conn:
        return table_checksums(conn)


def assert_only_scope_changed(
    before: dict[str, dict[str, str]],
    after: dict[str, dict[str, str]],
    deleted: dict[str, set[str]],
    nulled: dict[str, set[str]],
) -> None:
    """Every row outside the truth is byte-identical; every row inside is gone (or only nulled)."""
    assert set(before) == set(after)
    for table, rows in before.items():
        gone = deleted.get(table, set())
        changed = nulled.get(table, set())
        expected_keys = set(rows) - gone
        assert set(after[table]) == expected_keys, f"{table}: wrong rows left"
        for key in expected_keys - changed:
            assert after[table][key] == rows[key], f"{table} row {key} changed"
        for key in changed:
            assert after[table][key] != rows[key], f"{table} row {key} should have been nulled"


# -- driving delete requests through the fake Slack -------------------------------------


def requests_rows(bot: BotHarness) -> list[Any]:
    with bot.runtime.bot_engine.connect() as conn:
        return list(conn.execute(text("SELECT * FROM delete_requests ORDER BY id")))


def wait_state(bot: BotHarness, request_id: int, states: set[str], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        row = next(r for r in requests_rows(bot) if r.id == request_id)
        if row.state in states:
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"request {request_id} stayed {row.state}")
        time.sleep(0.05)


_QUEUED = text("SELECT count(*) FROM outbox WHERE supersede_key = :key AND delivered_at IS NULL AND dead_at IS NULL")


def left_running(bot: BotHarness, request_id: int) -> None:
    """What a bot that died while running the request leaves: the row says running, nobody holds its runner lock."""
    with bot.runtime.bot_engine.begin() as conn:
        conn.execute(
            text("UPDATE delete_requests SET state = 'running', runner = 'dead-host:1' WHERE id = :i"),
            {"i": request_id},
        )


def request_message(bot: BotHarness, request_id: int, timeout: float = 20) -> dict[str, Any]:
    """The request's message as Slack shows it, once every update queued for it so far was delivered.

    A state change and its message's `chat.update` commit together, but the outbox delivers the update
    a moment later: read right after a change, Slack still shows the message before it. So wait until
    no update of this message is queued, and until the request did not move meanwhile.
    """
    deadline = time.monotonic() + timeout
    row = wait_state(bot, request_id, set(STATES))
    while not row.message_ts:
        assert time.monotonic() < deadline, "the request's message was never posted"
        time.sleep(0.05)
        row = next(r for r in requests_rows(bot) if r.id == request_id)
    key = f"message:{row.channel}:{row.message_ts}"
    while True:
        with bot.runtime.bot_engine.connect() as conn:
            queued = conn.execute(_QUEUED, {"key": key}).scalar_one()
        now = next(r for r in requests_rows(bot) if r.id == request_id)
        if not queued and (now.state, now.updated_at) == (row.state, row.updated_at):
            return bot.slack.messages[(row.channel, row.message_ts)].payload
        assert time.monotonic() < deadline, f"request {request_id}'s message updates were not delivered"
        row = now
        bot.runtime.outbox_worker.notify()
        time.sleep(0.05)


def buttons(payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {}
    for block in payload.get("blocks", []):
        if block.get("type") == "actions":
            for element in block["elements"]:
                found[element["text"]["text"]] = element
    return found


def press(bot: BotHarness, request_id: int, label: str, user: str, payload: dict[str, Any] | None = None) -> str:
    """Press a button on the request's message (or an older copy of it); returns the response_url."""
    payload = payload or request_message(bot, request_id)
    row = next(r for r in requests_rows(bot) if r.id == request_id)
    response_url = bot.sender.new_response_url()
    reply = bot.sender.block_actions(
        buttons(payload)[label],
        user=user,
        channel=row.channel,
        message=payload,
        message_ts=row.message_ts,
        response_url=response_url,
    )
    assert reply.status == 200
    return response_url


def ephemeral_on(bot: BotHarness, response_url: str, timeout: float = 10) -> dict[str, Any]:
    path = response_url.split(bot.slack.base_url, 1)[1]
    return bot.slack.wait_for_call("response_url", lambda c: c.path == path, timeout)[0].payload


def updates_of(bot: BotHarness, request_id: int) -> list[dict[str, Any]]:
    row = next(r for r in requests_rows(bot) if r.id == request_id)
    return [
        c.payload
        for c in bot.slack.calls_to("chat.update")
        if c.payload.get("channel") == row.channel and c.payload.get("ts") == row.message_ts
    ]


def wait_update(bot: BotHarness, request_id: int, needle: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for payload in updates_of(bot, request_id):
            if needle in payload.get("text", ""):
                return payload
        if time.monotonic() > deadline:
            raise AssertionError(f"no chat.update with {needle!r}")
        time.sleep(0.05)


def start_delete(bot: BotHarness, slug: str = BIG, user: str = OPERATOR, extra: str = "", stage: str = "dev") -> int:
    before = {r.id for r in requests_rows(bot)}
    reply = bot.command(f"delete {slug} --stage {stage} {extra}".strip(), user=user)
    text_ = reply.text(timeout=30)
    assert "posted in this channel" in text_, text_
    new = [r.id for r in requests_rows(bot) if r.id not in before]
    assert len(new) == 1
    return new[0]


def audit_outcomes(bot: BotHarness, command: str = "delete") -> list[str]:
    return [r.outcome for r in bot.audit_rows() if r.command == command]
