"""Bad input gets a short, specific, private reply; a dead stage does not take the others down."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from bot.commands import parse
from bot.errors import CommandError, StageUnavailable
from tests.conftest import TEST_SPEC, dead_database_url, message_text, shown_text, unique_name

BIG = TEST_SPEC.big_slug


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("frobnicate --stage dev", "unknown command `frobnicate`"),
        ("fnid x --stage dev", "Did you mean `find`?"),
        (f"find {BIG} --stage dev --color red", "unknown option `--color` for `find`"),
        ("find --stage dev", "missing <slug>"),
        (f"find {BIG} --stage qa", "unknown stage `qa`; known stages: dev, production"),
        (f"find {BIG}", "name a stage with `--stage <name>`"),
        (f"find {'x' * 10_000} --stage dev", "too long"),
        ('find "robert\'); DROP TABLE mcp_servers;--" --stage dev', "is not a valid slug"),
        ("find 'ünïcødé-💥' --stage dev", "is not a valid slug"),
        ('find "unbalanced --stage dev', "unbalanced quotes"),
        ("list --limit 0 --stage dev", "`--limit` must be between 1 and 100"),
        ("list --limit many --stage dev", "`--limit` takes a whole number"),
        (f"stats {BIG} --days --stage dev", "`--days` needs a value"),
        (f"find {BIG} extra --stage dev", "unexpected argument `extra`"),
        (f"find {BIG} --stage dev --stage production", "`--stage` is given twice"),
        (f"find {BIG}\x00 --stage dev", "the command contains a control character (U+0000)"),
        (f"find {BIG} --stage dev\x1b[2J", "the command contains a control character (U+001B)"),
        ("list --stage=", "`--stage` needs a value"),
        ("list --limit= --stage dev", "`--limit` needs a value"),
        ("--stage dev list --limit 3", "start with the command, then its options: `/mcp list --stage dev --limit 3`"),
        ("--", "start with a command, then its options"),
        ("list --limit -1 --stage dev", "`--limit` must be between 1 and 100"),
        ("list --limit 1e9 --stage dev", "`--limit` takes a whole number"),
        (f"stats {BIG} --days 0 --stage dev", "`--days` must be between 1 and 3650"),
        (f"stats {BIG} --days 99999 --stage dev", "`--days` must be between 1 and 3650"),
    ],
)
def test_bad_input_gets_a_private_usage_reply(bot, stage_db, command, expected):
    reply = bot.command(command)
    assert reply.http.status == 200
    message = reply.ack
    assert message is not None, "bad input is answered in the ack itself"
    assert message["response_type"] == "ephemeral"
    text = shown_text(message)
    assert expected in text
    assert "Traceback" not in text and "Error" not in text
    assert len(message["text"]) < 300
    assert stage_db.scalar("SELECT count(*) FROM mcp_servers") == 1 + TEST_SPEC.small_servers


def test_parse_never_lets_sql_or_markup_through():
    with pytest.raises(CommandError):
        parse("find `rm -rf` --stage dev")
    parsed = parse("find &lt;acme&gt; --stage dev".replace("&lt;acme&gt;", "acme.io_x-1"))
    assert parsed.args["slug"] == "acme.io_x-1"
    assert parse("  FIND   acme  --stage=DEV ").stage == "dev"
    assert parse("stats acme --days=7 --stage dev").flags["days"] == 7
    assert parse("find \u201cacme\u201d --stage dev").args["slug"] == "acme"


def test_pasted_invisible_characters_smart_dashes_and_case_read_as_meant():
    """What a Mac, a phone or a copied snippet puts in a command: zero-width spaces, a direction override,
    no-break spaces, `—` for `--`, capitals. The command reads as typed, without them."""
    for typed in (
        "fi\u200bnd acme --stage dev",
        "find \u202eacme\ufeff --stage dev",
        "find\u00a0acme\u2003--stage\u00a0dev",
        "find acme \u2014stage dev",
        "FIND acme --STAGE DEV",
    ):
        parsed = parse(typed)
        assert (parsed.verb.name, parsed.args["slug"], parsed.stage) == ("find", "acme", "dev"), typed
    assert parse("list --LIMIT=5 --stage dev").flags["limit"] == 5
    # Inside a reason, a dash is kept; the direction override that could make it read otherwise is not.
    assert parse('delete acme --stage dev --reason "old \u2014 \u202egone"').flags["reason"] == "old \u2014 gone"


def test_a_refused_command_with_a_nul_is_audited(bot):
    reply = bot.command("find a\x00b --stage dev")
    assert "control character (U+0000)" in reply.text()
    [row] = bot.wait_audit(1)
    assert (row.command, row.outcome) == ("find", "bad_input") and "\x00" not in row.args


def test_an_unreachable_stage_is_named_and_the_others_keep_working(make_bot, stage_db):
    harness = make_bot({"dev": stage_db.url, "staging": dead_database_url()})
    message = harness.command(f"find {BIG} --stage staging").message()
    assert message["response_type"] == "ephemeral"
    text = message_text(message)
    assert "stage staging is unreachable (connection refused)" in text
    assert "hunter2" not in json.dumps(message) and "127.0.0.1" not in text
    assert "srv_big" in harness.command(f"find {BIG} --stage dev").text()
    rows = harness.wait_audit(2)
    assert [r.outcome for r in rows if r.stage == "staging"] == ["unavailable"]


def test_the_bot_starts_with_a_dead_stage(make_bot, stage_db):
    harness = make_bot({"dev": stage_db.url, "production": dead_database_url()})
    with pytest.raises(StageUnavailable, match="stage production is unreachable"):
        harness.runtime.stages.get("production").ping()
    assert harness.runtime.stages.get("dev").ping() > 0


def test_read_commands_run_read_only_with_an_application_name(bot, stage_db):
    stage = bot.runtime.stages.get("dev")
    with stage.read() as conn:
        assert conn.execute(text("SHOW transaction_read_only")).scalar() == "on"
        assert conn.execute(text("SHOW application_name")).scalar() == "mcp-ops/dev"
        assert conn.execute(text("SHOW lock_timeout")).scalar() == "3s"
    with pytest.raises(Exception, match="read-only transaction"), stage.read() as conn:
        conn.execute(text("DELETE FROM mcp_servers"))
    assert stage_db.scalar("SELECT count(*) FROM mcp_servers") == 1 + TEST_SPEC.small_servers


def test_reads_of_the_bot_database_run_read_only_and_the_pool_gives_back_read_write_connections(bot):
    from bot.botdb import reading

    engine = bot.runtime.bot_engine
    with reading(engine) as conn:
        assert conn.execute(text("SHOW transaction_read_only")).scalar() == "on"
        assert conn.execute(text("SHOW application_name")).scalar() == "mcp-ops/bot"
        with pytest.raises(Exception, match="read-only transaction"), conn.begin_nested():
            conn.execute(text("DELETE FROM audit_log"))
    # A read the bot does for a command: the audit list, in a read-only transaction; writes go on as before.
    assert bot.runtime.audit.latest(stage=None, limit=5) == []
    with engine.begin() as conn:
        assert conn.execute(text("SHOW transaction_read_only")).scalar() == "off"
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "30s"
        assert conn.execute(text("SHOW lock_timeout")).scalar() == "5s"


def test_a_statement_timeout_is_reported_as_such(bot):
    stage = bot.runtime.stages.get("dev")
    from bot.errors import QueryTimeout

    with pytest.raises(QueryTimeout, match="ran past its time limit"), stage.read(statement_timeout_ms=100) as conn:
        conn.execute(text("SELECT pg_sleep(2)"))


def test_a_write_transaction_commits_only_when_the_block_returns(bot, stage_db):
    stage = bot.runtime.stages.get("dev")
    with pytest.raises(RuntimeError), stage.write(statement_timeout_ms=5000) as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "5s"
        conn.execute(text("DELETE FROM mcp_oauth_tokens"))
        raise RuntimeError("half-way")
    assert stage_db.scalar("SELECT count(*) FROM mcp_oauth_tokens") > 0


def test_a_stage_role_without_a_privilege_is_told_which_not_something_went_wrong(make_bot, stage_db):
    role = unique_name("no_reads")
    stage_db.execute(f"CREATE ROLE {role} LOGIN")
    harness = make_bot({"dev": stage_db.url.replace("postgres@", f"{role}@")})
    message = harness.command(f"find {BIG} --stage dev").message()
    assert message["response_type"] == "ephemeral"
    text_ = message_text(message)
    assert "stage dev: the database refused: permission denied for table mcp_servers" in text_, text_
    assert "something went wrong" not in text_ and "42501" not in text_
    assert [r.outcome for r in harness.wait_audit(1)] == ["refused"]


def test_options_before_forget_user_neither_echo_nor_audit_the_person(bot):
    reply = bot.command("--stage dev forget-user distinct-7f3a9c")
    text = reply.text()
    assert "start with the command, then its options: `/mcp forget-user ...`" in text
    assert "distinct-7f3a9c" not in text
    [row] = bot.wait_audit(1)
    assert row.outcome == "bad_input" and "distinct-7f3a9c" not in f"{row.args} {row.detail}"
