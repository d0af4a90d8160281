"""What people see of the engine's rules in Slack: signed slash commands on a schema no code in bot/ names."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from bot.backups.delete_hook import DeleteBackup
from bot.backups.manifest import BackupContext
from bot.deletion.execute import execute_delete
from bot.localpg import LocalPostgres
from tests.conftest import OPERATOR, message_text, unique_name
from tests.deletion_support import press, request_message, requests_rows, start_delete, wait_state, wait_update
from tests.engine_harness import checksums

SCHEMA = """
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'engine_writer') THEN CREATE ROLE engine_writer LOGIN; END IF;
END $$;
CREATE TABLE mcp_servers (id text PRIMARY KEY, slug text NOT NULL UNIQUE);
INSERT INTO mcp_servers VALUES ('srv1', 's1'), ('srv2', 's2');
CREATE TABLE server_pins (id int PRIMARY KEY, server_slug text NOT NULL REFERENCES mcp_servers(slug));
CREATE TABLE threads (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE, posts int);
CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    UPDATE threads SET posts = posts + 1 WHERE id = NEW.id; RETURN NEW; END $$;
CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN OLD; END $$;
CREATE TRIGGER bump AFTER INSERT ON threads FOR EACH ROW EXECUTE FUNCTION bump();
CREATE TRIGGER audit AFTER DELETE ON server_pins FOR EACH ROW EXECUTE FUNCTION audit();
INSERT INTO server_pins VALUES (1, 's1'), (2, 's2');
INSERT INTO threads VALUES (1, 'srv1', 0), (2, 'srv2', 0);
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO engine_writer;
"""


@pytest.fixture
def schema_url(pg: LocalPostgres) -> Iterator[str]:
    name = unique_name("engmsg")
    url = pg.create_database(name)
    with psycopg.connect(pg.dsn(name), autocommit=True) as conn:
        conn.execute(SCHEMA)
    yield url
    pg.drop_database(name)


def test_the_impact_says_which_rows_have_no_rule_and_which_triggers_fire(make_bot, schema_url):
    bot = make_bot({"dev": schema_url})
    text = bot.command("impact s1 --stage dev").text(timeout=30)
    assert "no ON DELETE rule: deleted with the server (server_slug → mcp_servers)" in text, text
    assert "`audit` on `server_pins` (AFTER DELETE FOR EACH ROW, audit()) fires during the delete" in text
    assert "`bump` on `threads` (AFTER INSERT FOR EACH ROW, bump()) fires when rows are put back" in text
    assert "A restore turns it off while it puts the rows back" in text
    before = checksums(schema_url)
    # The dry run deletes the rows without a rule too (it was "the database refused"), then rolls back.
    dry = bot.command("delete s1 --stage dev --dry-run").text(timeout=30)
    assert "*3 rows*" in dry and "then rolled back. Nothing changed." in dry, dry
    assert "`server_pins`: 1 row deleted" in dry and "refused" not in dry
    assert checksums(schema_url) == before


def test_a_protected_restore_says_which_triggers_will_fire_before_anyone_approves(make_bot, schema_url):
    writer = schema_url.replace("postgres@", "engine_writer@", 1)
    bot = make_bot({"production": writer})
    stage = bot.runtime.stages.get("production")
    hook = DeleteBackup(
        bot.runtime.backups.scoped(
            BackupContext(stage="production", request_id="req_t", requested_by=OPERATOR, slug="s1")
        )
    )
    execute_delete(stage, "s1", expected=None, budget_s=60, before_delete=hook)
    deleted = checksums(schema_url)

    dry = bot.command("restore req_t --stage production --dry-run").text(timeout=60)
    assert "These triggers will fire as the rows go back" in dry and "trigger bump on threads" in dry, dry
    assert "These triggers fired during the delete" in dry and "audit on server_pins" in dry
    before = {r.id for r in requests_rows(bot)}
    posted = bot.command('restore req_t --stage production --reason "undo"').text(timeout=60)
    assert "posted in this channel as request" in posted
    [request_id] = [r.id for r in requests_rows(bot) if r.id not in before]
    shown = str(request_message(bot, request_id))
    assert "These triggers will fire as the rows go back" in shown and "trigger bump on threads" in shown
    assert checksums(schema_url) == deleted  # nothing is written before the approvals


def test_impact_names_a_table_in_another_schema_the_role_may_not_read(make_bot, schema_url):
    with psycopg.connect(schema_url, autocommit=True) as conn:
        conn.execute(
            "CREATE SCHEMA audit; GRANT USAGE ON SCHEMA audit TO engine_writer;"
            " CREATE TABLE audit.trail (id int PRIMARY KEY, server_id text REFERENCES mcp_servers ON DELETE CASCADE)"
        )
    bot = make_bot({"dev": schema_url.replace("postgres@", "engine_writer@", 1)})
    text = bot.command("impact s1 --stage dev").text(timeout=30)
    assert "the role `engine_writer` may not read audit.trail (it lacks the SELECT privilege" in text, text
    assert "GRANT SELECT, DELETE ON audit.trail TO engine_writer" in text
    assert "something went wrong" not in text


def test_a_confirmed_delete_that_waits_on_a_lock_fails_in_words(make_bot, schema_url):
    bot = make_bot({"dev": schema_url}, STAGE_LOCK_TIMEOUT_MS="300")
    request_id = start_delete(bot, slug="s1")
    before = checksums(schema_url)
    with psycopg.connect(schema_url) as holder:
        holder.execute("SELECT * FROM threads WHERE id = 1 FOR UPDATE")
        press(bot, request_id, "Delete", OPERATOR)
        row = wait_state(bot, request_id, {"done", "failed", "stale"})
    assert row.state == "failed", (row.state, row.error)
    assert row.error.startswith("stage dev: a lock on `threads` could not be taken within lock_timeout"), row.error
    assert "nothing was deleted" in row.error
    shown = message_text(wait_update(bot, request_id, ": failed"))
    assert "a lock on `threads` could not be taken within lock_timeout" in shown, shown
    assert checksums(schema_url) == before
