"""Create index acts on exactly the table and columns people were shown (issue 15, design notes: "Bind approvals
to identity"): quoted identifiers (spaces, capitals, `%`, `:`), names within 63 bytes, what counts as an
equivalent index (column order, partial, expression and INCLUDE indexes), and a table or column that changed
between the click and the approval. Signed HTTP, fake Slack, real PostgreSQL.
"""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from bot.indexes.naming import index_name
from bot.indexes.targets import create_index_action
from tests.conftest import APPROVER, CHANNEL, OPERATOR, BotHarness, StageDb, message_text
from tests.deletion_support import ephemeral_on, left_running, press, request_message, requests_rows, wait_state
from tests.test_operations_indexes import finished
from tests.test_operations_sessions import buttons, latest_request, press_value

SCHEMA = "Billing Data"
TABLE = "Usage %Records: Q1"
COLUMN = "Server %ID:x"
LONG_TABLE = "t" * 30 + "_Ünïcödé_" + "x" * 15  # 58 bytes: over 63 once suffixed
LONG_COLUMN = "Column With A Rather Long Name"

DDL = f"""
CREATE SCHEMA "{SCHEMA}";
CREATE TABLE "{SCHEMA}"."{TABLE}" (
    id bigint PRIMARY KEY,
    "{COLUMN}" text REFERENCES mcp_servers (id) ON DELETE CASCADE,
    note text
);
INSERT INTO "{SCHEMA}"."{TABLE}" SELECT g, (SELECT min(id) FROM mcp_servers), 'n' FROM generate_series(1, 50) g;
CREATE TABLE "{SCHEMA}"."{LONG_TABLE}" (
    id bigint PRIMARY KEY,
    "{LONG_COLUMN}" text REFERENCES mcp_servers (id)
);
CREATE TABLE pairs_parent (a int, b int, PRIMARY KEY (a, b));
CREATE TABLE pairs (id int PRIMARY KEY, a int, b int, c int, FOREIGN KEY (a, b) REFERENCES pairs_parent (a, b));
CREATE TABLE labels (id int PRIMARY KEY, name text REFERENCES mcp_servers (id));
"""


def run_ddl(db: StageDb, sql: str) -> None:
    """Straight through psycopg: `%` and `:` in identifiers mean nothing to it."""
    with psycopg.connect(db.url, autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture
def bot(make_bot, stage_db: StageDb) -> BotHarness:
    run_ddl(stage_db, DDL)
    return make_bot({"dev": stage_db.url, "production": stage_db.url}, STAGE_LOCK_TIMEOUT_MS="1000")


def index_of(db: StageDb, schema: str, name: str) -> Any:
    rows = db.rows(
        "SELECT i.indisvalid AS valid, pg_get_indexdef(i.indexrelid) AS definition FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = :s AND c.relname = :n",
        s=schema,
        n=name,
    )
    return rows[0] if rows else None


def create(schema: str, table: str, columns: list[str]) -> dict[str, Any]:
    return create_index_action(schema, table, columns)


def test_quoted_identifiers_and_long_names_are_built_as_shown(bot, stage_db):
    listing = bot.command("indexes --stage dev").message(timeout=30)
    label = next(label for label in buttons(listing) if "Usage %Records" in label)
    url = bot.sender.new_response_url()
    bot.sender.block_actions(buttons(listing)[label], user=OPERATOR, channel="CGENERAL01", response_url=url)
    request = finished(bot, "create-index")
    assert request.state == "done", request.error
    name = index_name(TABLE, [COLUMN])
    assert request.result["index"] == name == f"{TABLE}_{COLUMN}_idx"
    made = index_of(stage_db, SCHEMA, name)
    assert made is not None and made.valid
    assert f'("{COLUMN}")' in made.definition

    press_value(bot, "dev", create(SCHEMA, LONG_TABLE, [LONG_COLUMN]), refused=False)
    request = finished(bot, "create-index", 2)
    assert request.state == "done", request.error
    long_name = index_name(LONG_TABLE, [LONG_COLUMN])
    assert len(long_name.encode()) <= 63 and request.result["index"] == long_name
    assert index_of(stage_db, SCHEMA, long_name).valid


@pytest.mark.parametrize(
    ("existing", "equivalent"),
    [
        ("CREATE INDEX pairs_ba ON pairs (b, a)", True),  # the same columns in another order serve the lookups
        ("CREATE INDEX pairs_abc ON pairs (a, b, c)", True),  # they lead a longer index
        ("CREATE INDEX pairs_a_inc ON pairs (a) INCLUDE (b)", False),  # b is only carried, not searched
        ("CREATE INDEX pairs_part ON pairs (a, b) WHERE c > 0", False),  # partial: not every row
        ("CREATE INDEX pairs_expr ON pairs ((a + 0), b)", False),  # an expression, not the column
        ("CREATE INDEX pairs_c ON pairs (c, a, b)", False),  # they do not lead it
        ('CREATE INDEX labels_c ON labels (name COLLATE "C")', False),  # `=` in the column's collation can't use it
        ("CREATE INDEX labels_hash ON labels USING hash (name)", True),  # a hash index serves `=`
    ],
)
def test_an_equivalent_index_is_one_that_serves_every_lookup_on_the_columns(bot, stage_db, existing, equivalent):
    run_ddl(stage_db, existing)
    if existing.startswith("CREATE INDEX labels"):
        answer = press_value(bot, "dev", create("public", "labels", ["name"]), refused=equivalent)
        assert equivalent or finished(bot, "create-index").state == "done", answer
        assert equivalent == ("an equivalent index exists already" in answer), answer
        return
    answer = press_value(bot, "dev", create("public", "pairs", ["a", "b"]), refused=equivalent)
    if equivalent:
        assert "an equivalent index exists already on public.pairs (a, b)" in answer, answer
        assert requests_rows(bot) == []
    else:
        request = finished(bot, "create-index")
        assert request.state == "done", request.error
        assert index_of(stage_db, "public", "pairs_a_b_idx").valid


@pytest.mark.parametrize(
    "change",
    [
        # the table was dropped and made again under the same name (another table, the same words)
        "DROP TABLE pairs; CREATE TABLE pairs (id int PRIMARY KEY, a int, b int, c int)",
        # the column was dropped and another added under its name
        "ALTER TABLE pairs DROP COLUMN b; ALTER TABLE pairs ADD COLUMN b int",
        # the column is now another type
        "ALTER TABLE pairs DROP CONSTRAINT pairs_a_b_fkey; ALTER TABLE pairs ALTER COLUMN b TYPE text",
    ],
)
def test_an_approved_create_index_on_a_table_or_column_that_changed_goes_stale(bot, stage_db, change):
    press_value(bot, "production", create("public", "pairs", ["a", "b"]), refused=False)
    request = wait_state(bot, latest_request(bot, "create-index").id, {"pending"})
    run_ddl(stage_db, change)
    press(bot, request.id, "Approve", APPROVER, request_message(bot, request.id))
    stale = wait_state(bot, request.id, {"done", "failed", "stale"}, timeout=60)
    assert stale.state == "stale", (stale.state, stale.error)
    assert "is not the one" in stale.error, stale.error
    assert index_of(stage_db, "public", "pairs_a_b_idx") is None
    assert "Stale, nothing was built" in message_text(request_message(bot, request.id))


def test_the_requester_cannot_approve_a_protected_create_index(bot, stage_db):
    press_value(bot, "production", create("public", "pairs", ["a", "b"]), refused=False)
    request = wait_state(bot, latest_request(bot, "create-index").id, {"pending"})
    answer = message_text(ephemeral_on(bot, press(bot, request.id, "Approve", OPERATOR)))
    assert "you asked for this create-index, so someone else has to approve it" in answer
    assert wait_state(bot, request.id, {"pending"}).state == "pending"


def drop_buttons(listing: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The Drop index buttons of a listing by the index they name."""
    return {
        json.loads(e["value"])["t"]["index"]: e
        for block in listing["blocks"]
        if block.get("type") == "actions"
        for e in block["elements"]
        if e["text"]["text"] == "Drop index"
    }


def test_a_duplicate_whose_twin_changed_since_is_not_dropped(bot, stage_db):
    run_ddl(stage_db, 'CREATE INDEX "pairs.keep" ON pairs (a, b); CREATE INDEX pairs_twin ON pairs (a, b)')
    listing = bot.command("indexes --stage production").message(timeout=30)
    assert 'public."pairs.keep"' in message_text(listing)
    url = bot.sender.new_response_url()
    bot.sender.block_actions(drop_buttons(listing)["pairs_twin"], user=OPERATOR, channel=CHANNEL, response_url=url)
    request = wait_state(bot, latest_request(bot, "drop-index").id, {"pending"})
    assert request.server_key["keeper"] == 'public."pairs.keep"'

    # Before the approval the index that was to stay is made again on other columns.
    run_ddl(stage_db, 'DROP INDEX "pairs.keep"; CREATE INDEX "pairs.keep" ON pairs (c)')
    press(bot, request.id, "Approve", APPROVER, request_message(bot, request.id))
    stale = wait_state(bot, request.id, {"done", "failed", "stale"}, timeout=60)
    assert stale.state == "stale", (stale.state, stale.error)
    assert 'is no longer a duplicate: public."pairs.keep" is now' in stale.error, stale.error
    assert index_of(stage_db, "public", "pairs_twin").valid


def test_a_build_the_bot_died_in_is_settled_by_the_recovery_job(make_bot, bot, stage_db):
    press_value(bot, "production", create("public", "pairs", ["a", "b"]), refused=False)
    request = wait_state(bot, latest_request(bot, "create-index").id, {"pending"})
    # The bot died while building: the row says running, nobody holds its runner lock, its build session is
    # still on the stage, and the build fails there, leaving the INVALID index it named.
    left_running(bot, request.id)
    bot.close()
    run_ddl(stage_db, "INSERT INTO pairs_parent VALUES (1, 1); INSERT INTO pairs VALUES (1, 1, 1, 0), (2, 1, 1, 0)")
    build = psycopg.connect(stage_db.url, autocommit=True, application_name=f"mcp-ops/production/request-{request.id}")
    with pytest.raises(psycopg.errors.UniqueViolation):
        build.execute("CREATE UNIQUE INDEX CONCURRENTLY pairs_a_b_idx ON pairs (a, b)")
    assert index_of(stage_db, "public", "pairs_a_b_idx").valid is False

    restarted = make_bot({"dev": stage_db.url, "production": stage_db.url}, STAGE_LOCK_TIMEOUT_MS="1000")
    assert restarted.runtime.requests.recover() == 0  # its session is still there: not settled yet
    assert wait_state(restarted, request.id, {"running"}).state == "running"
    build.close()
    deadline = time.monotonic() + 60
    while latest_request(restarted, "create-index").state == "running" and time.monotonic() < deadline:
        restarted.runtime.requests.recover()  # the recovery job's run (it also runs every few seconds)
        time.sleep(0.2)
    row = wait_state(restarted, request.id, {"done", "failed"})
    assert row.state == "failed"
    assert "the bot stopped while the index was being built" in row.error
    assert "it left an INVALID index `pairs_a_b_idx`, which was dropped" in row.error
    assert index_of(stage_db, "public", "pairs_a_b_idx") is None
    assert [r.outcome for r in restarted.audit_rows() if r.command == "create-index"][-1] == "failed"


def test_a_protected_create_index_waits_on_app_home_and_in_pending_like_any_request(bot, stage_db):
    from tests.test_app_home import _published_for

    bot.sender.event({"type": "app_home_opened", "user": APPROVER, "tab": "home"})
    _published_for(bot, APPROVER)
    press_value(bot, "production", create("public", "pairs", ["a", "b"]), refused=False)
    request = wait_state(bot, latest_request(bot, "create-index").id, {"pending"})

    pending = bot.command("pending --stage production", user=APPROVER).text()
    assert f"#{request.id} create-index public.pairs (a, b)" in pending and "0 of 1 approvals" in pending
    home = _published_for(bot, APPROVER, count=2)[-1]
    assert f"#{request.id} create-index `public.pairs (a, b)` on *production*" in message_text(home)
    assert "pairs_a_b_idx" in message_text(home)
    approve = buttons(home)["Approve"]
    assert bot.sender.view_actions(approve, user=APPROVER).status == 200
    done = wait_state(bot, request.id, {"done", "failed", "stale"}, timeout=60)
    assert done.state == "done", done.error
    assert index_of(stage_db, "public", "pairs_a_b_idx").valid
    assert f"#{request.id}" not in bot.command("pending", user=APPROVER).text()
    outcomes = [r.outcome for r in bot.audit_rows() if r.command == "create-index"]
    assert outcomes == ["requested", "approved", "running", "done"]


def test_a_request_whose_message_cannot_be_posted_is_closed_audited_and_never_runs(bot, stage_db):
    bot.slack.fail("chat.postMessage", status=200, channel=CHANNEL)  # e.g. the bot is not in the channel
    answer = press_value(bot, "dev", create("public", "pairs", ["a", "b"]))
    assert "couldn't post the create-index request in this channel (Slack said `internal_error`)" in answer
    [request] = requests_rows(bot)
    assert (request.state, request.decided_by) == ("cancelled", "system")
    outcomes = [r.outcome for r in bot.audit_rows() if r.command == "create-index"]
    assert outcomes[:3] == ["requested", "confirmed", "cancelled"], outcomes
    bot.runtime.requests.recover()
    assert index_of(stage_db, "public", "pairs_a_b_idx") is None


def test_a_confirmed_request_whose_process_died_before_posting_it_is_posted_then_run_once(bot, stage_db):
    machine = bot.runtime.requests
    plan = machine.kind("create-index").plan(
        bot.runtime.stages.get("dev"), create("public", "pairs", ["a", "b"])["target"], {}
    )
    # What the click did before its process died: the request is made (the click confirmed it), not posted.
    made = machine._create(plan, requester=OPERATOR, reason=None, channel=CHANNEL)
    assert made.state == "approved" and made.message_ts is None
    machine.recover()  # still being posted, as far as anyone can tell: left alone
    assert wait_state(bot, made.id, {"approved"}).state == "approved"
    assert index_of(stage_db, "public", "pairs_a_b_idx") is None

    with bot.runtime.bot_engine.begin() as conn:
        conn.execute(
            text("UPDATE delete_requests SET created_at = created_at - interval '2 minutes' WHERE id = :i"),
            {"i": made.id},
        )
    machine.recover()
    machine.recover()
    done = wait_state(bot, made.id, {"done", "failed", "stale"}, timeout=60)
    assert done.state == "done", done.error
    assert index_of(stage_db, "public", "pairs_a_b_idx").valid
    assert "built in" in message_text(request_message(bot, made.id))
    posts = [c for c in bot.slack.calls_to("chat.postMessage") if "pairs_a_b_idx" in str(c.payload)]
    assert len(posts) == 1
    outcomes = [r.outcome for r in bot.audit_rows() if r.command == "create-index"]
    assert outcomes.count("running") == 1 and outcomes.count("done") == 1


def test_a_drop_that_times_out_says_it_left_the_index_invalid(bot, stage_db):
    run_ddl(stage_db, "CREATE INDEX pairs_one ON pairs (a, b); CREATE INDEX pairs_two ON pairs (a, b)")
    listing = bot.command("indexes --stage dev").message(timeout=30)
    reader = psycopg.connect(stage_db.url, application_name="report-job")
    reader.execute("SELECT count(*) FROM pairs")  # a transaction that uses the table stays open
    try:
        url = bot.sender.new_response_url()
        bot.sender.block_actions(drop_buttons(listing)["pairs_two"], user=OPERATOR, channel=CHANNEL, response_url=url)
        request = finished(bot, "drop-index")
    finally:
        reader.rollback()
        reader.close()
    assert request.state == "failed", request.error
    assert "the drop of `pairs_two` failed: a lock could not be taken within lock_timeout" in request.error
    assert "the index is left INVALID (no longer used, still written to)" in request.error
    assert index_of(stage_db, "public", "pairs_two").valid is False
    again = bot.command("indexes --stage dev").message(timeout=30)
    assert "invalid index public.pairs_two" in message_text(again) and "pairs_two" in drop_buttons(again)
