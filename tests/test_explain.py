"""Explain (issue 15): the generic plan of a pg_stat_statements entry, planned on the test cluster's
PostgreSQL (15, or 18 with PG_MAJOR=18: EXPLAIN (GENERIC_PLAN) from 16 on), never run; a clear refusal
for what has no plan; Explain buttons under `/mcp slow-queries` entries and slow-query alerts.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

from bot.console.text import buttons_in
from tests.conftest import CHANNEL, OPERATOR, eventually, message_text
from tests.health_support import SLOW, sleep_statements

BY_USER = "SELECT id, tool_name FROM mcp_tool_calls WHERE mcp_server_user_id = %s"


def queryid(url: str, like: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT queryid FROM pg_stat_statements WHERE query LIKE %s AND toplevel"
            " AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (like,),
        ).fetchone()
    assert row is not None, like
    return int(row[0])


def server_version(url: str) -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute("SHOW server_version_num").fetchone()[0])


def test_explain_plans_a_dollar_one_statement_without_running_it(make_bot, stage_db):
    with psycopg.connect(stage_db.url, autocommit=True, application_name="platform-api") as conn:
        conn.execute(BY_USER, ("nobody",))  # bound server-side: pg_stat_statements keeps `= $1`
        conn.execute("UPDATE mcp_tool_calls SET tool_name = %s WHERE id = %s", ("renamed", "none"))
    before = stage_db.scalar("SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM mcp_tool_calls t")
    bot = make_bot({"dev": stage_db.url})

    qid = queryid(stage_db.url, "SELECT id, tool_name FROM mcp_tool_calls WHERE mcp_server_user_id = $1%")
    shown = bot.command(f"explain {qid} --stage dev").text(timeout=60)
    method = "EXPLAIN (GENERIC_PLAN)" if server_version(stage_db.url) >= 160000 else "PREPARE and EXPLAIN EXECUTE"
    assert f"Generic plan of queryid {qid} on stage *dev*: planned, never run ({method}" in shown
    assert "WHERE mcp_server_user_id = $1" in shown
    assert "Costliest step: *Seq Scan* on public.mcp_tool_calls" in shown
    # The plan scans on an unindexed foreign key column: the hint ties it to the foreign-key check.
    assert "has no index and this plan filters on it" in shown
    assert "CREATE INDEX CONCURRENTLY ON public.mcp_tool_calls (mcp_server_user_id);" in shown

    # The whole plan comes along as a JSON file in the channel.
    plan = bot.slack.wait_for_file(lambda f: f.filename == f"explain-dev-queryid{qid}.json", timeout=30)
    assert plan.channel == CHANNEL
    [root] = json.loads(plan.text)
    assert root["Plan"]["Node Type"] == "Seq Scan" and root["Plan"]["Relation Name"] == "mcp_tool_calls"

    # A write statement is planned, not run: the table is as it was.
    update = queryid(stage_db.url, "UPDATE mcp_tool_calls SET tool_name = $1 WHERE id = $2%")
    planned = bot.command(f"explain {update} --stage dev").text(timeout=60)
    assert "Generic plan of queryid" in planned and "ModifyTable" not in planned.split("Look at first")[0]
    assert stage_db.scalar("SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM mcp_tool_calls t") == before
    assert stage_db.scalar("SELECT count(*) FROM mcp_tool_calls WHERE tool_name = 'renamed'") == 0
    # Its own connection, gone afterwards: no prepared statement or session is left behind (a backend
    # leaves pg_stat_activity a moment after its client closed, so this waits for it).
    explain_sessions = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mcp-ops/explain/dev'"
    assert eventually(lambda: stage_db.scalar(explain_sessions) == 0, timeout=30)
    outcomes = [(r.command, r.outcome) for r in bot.wait_audit(2, timeout=30)]
    assert outcomes == [("explain", "ok"), ("explain", "ok")]


def test_explain_refuses_ddl_and_says_why_other_statements_cannot_be_planned(make_bot, stage_db):
    with psycopg.connect(stage_db.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE explain_scratch (id int)")
        conn.execute("SELECT now() - interval '1 day'")  # normalised to `interval $1`: not valid SQL
        conn.execute("SELECT 40 + 2 AS answer")  # `$1 + $2`: two constants of no known type
        padding = ", ".join(f"{i} AS padding_column_number_{i:03d}" for i in range(40))  # over 1,024 bytes
        conn.execute(f"SELECT now() - interval '2 days' AS long_one, {padding}")
    bot = make_bot({"dev": stage_db.url})

    ddl = queryid(stage_db.url, "CREATE TABLE explain_scratch%")
    refused = bot.command(f"explain {ddl} --stage dev").text(timeout=60)
    assert f"queryid {ddl} cannot be explained: `CREATE` is a utility statement or DDL" in refused
    assert "only SELECT, INSERT, UPDATE, DELETE, MERGE and VALUES have a plan" in refused

    typed = queryid(stage_db.url, "SELECT now() - interval $1%")
    unparsable = bot.command(f"explain {typed} --stage dev").text(timeout=60)
    assert f"queryid {typed} cannot be prepared: syntax error" in unparsable
    assert "normalised text is not always valid SQL" in unparsable

    # A long statement that does not parse is not "cut short": pg_stat_statements keeps the whole text.
    long = queryid(stage_db.url, "SELECT now() - interval $1 AS long_one%")
    long_reply = bot.command(f"explain {long} --stage dev").text(timeout=60)
    assert f"queryid {long} cannot be prepared: syntax error" in long_reply and "cut short" not in long_reply

    untyped = queryid(stage_db.url, "SELECT $1 + $2 AS answer%")
    ambiguous = bot.command(f"explain {untyped} --stage dev").text(timeout=60)
    assert f"queryid {untyped} cannot be prepared: operator is not unique: unknown + unknown" in ambiguous
    assert "keeps no type for its constants" in ambiguous and "SQLSTATE" not in ambiguous

    assert "is not in pg_stat_statements of this database" in bot.command("explain 42 --stage dev").text(timeout=60)
    assert "`abc` is not a queryid" in bot.command("explain abc --stage dev").text(timeout=60)
    assert "missing &lt;queryid&gt;" in bot.command("explain --stage dev").text(timeout=60)  # escaped mrkdwn


def _element(payload: dict[str, Any], label: str, value: str | None = None) -> tuple[dict[str, Any], str]:
    """The button labelled `label` (whose value runs `value`, if given) and its block_id."""
    found = [
        (e, block)
        for e, block in buttons_in(payload.get("blocks", []))
        if e["text"]["text"] == label and (value is None or json.loads(e["value"]) == {"t": value})
    ]
    assert found, f"no {label} button" + (f" for {value}" if value else "")
    return found[0]


def _press(bot: Any, element: dict[str, Any], block_id: str, message: dict[str, Any], channel: str) -> str:
    """Press a button as OPERATOR and wait (generously) for the answer on its response_url."""
    response_url = bot.sender.new_response_url()
    reply = bot.sender.block_actions(
        element, user=OPERATOR, channel=channel, message=message, block_id=block_id, response_url=response_url
    )
    assert reply.status == 200
    path = response_url.split(bot.slack.base_url, 1)[1]
    [answer] = bot.slack.wait_for_call("response_url", lambda c: c.path == path, 60, 1)
    return message_text(answer.payload)


def test_slow_query_entries_and_alerts_carry_explain(make_bot, stage_db):
    bot = make_bot({"dev": stage_db.url}, **SLOW)
    bot.runtime.health.run_group("dev", "statements")
    sleep_statements(stage_db.url, 4)
    bot.runtime.health.run_group("dev", "statements")  # the slow query fires an alert
    qid = queryid(stage_db.url, "SELECT pg_sleep($1)%")
    explain = f"explain {qid} --stage dev"

    # The alert carries Explain, which runs the query's explain. The outbox worker runs in the
    # background too, so the post is waited for (another statement slow under load may alert as well).
    def is_alert(c: Any) -> bool:
        p = c.payload
        return p.get("channel") == bot.settings.alert_channel and not p.get("thread_ts") and "slow query" in p["text"]

    def sleep_alert(calls: list[Any]) -> dict[str, Any] | None:
        posts = [c.payload for c in calls if c.method == "chat.postMessage" and is_alert(c)]
        return next((p for p in posts if "pg_sleep" in message_text(p)), None)

    alert = bot.slack.wait_for(sleep_alert, timeout=60)
    element, block_id = _element(alert, "Explain", explain)
    # Pressed in the alert channel, it answers there with the plan, and the plan file comes along.
    answer = _press(bot, element, block_id, alert, bot.settings.alert_channel)
    assert f"Generic plan of queryid {qid}" in answer
    plan = bot.slack.wait_for_file(lambda f: f.filename == f"explain-dev-queryid{qid}.json", timeout=60)
    assert plan.channel == bot.settings.alert_channel and json.loads(plan.text)[0]["Plan"]

    # `/mcp slow-queries` entries carry it too; pressing it answers with the plan.
    listing = bot.command("slow-queries --stage dev").message(timeout=60)
    element, block_id = _element(listing, "Explain", explain)
    answer = _press(bot, element, block_id, listing, CHANNEL)
    assert f"Generic plan of queryid {qid}" in answer
    assert "Costliest step: *Result*" in answer
