"""Hand-built scopes of one server's rows, standing in for the deletion engine's plan.

The deletion engine (another branch) computes scopes from the catalog; until it lands, the
tests and the benchmark build the same temp tables of primary keys by hand, in plan
order (children before parents), and delete them the way the engine will.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

from bot.backups.scoped import BackupStep

# Optional extra table with a SET NULL edge to servers (the real database has tables the runbook never names).
NOTES_DDL = """
CREATE TABLE IF NOT EXISTS server_notes (
    id text PRIMARY KEY,
    mcp_server_id text REFERENCES mcp_servers (id) ON DELETE SET NULL,
    body text NOT NULL
)
"""

# (temp table, SQL selecting the primary keys); evaluated in this order, each may use the earlier ones.
SCOPE_SQL: list[tuple[str, str]] = [
    ("scope_servers", "SELECT id FROM mcp_servers WHERE id = :sid"),
    (
        "scope_sessions",
        "SELECT mcp_server_session_id FROM mcp_server_session"
        " WHERE mcp_server_slug IN (SELECT slug FROM mcp_servers WHERE id IN (SELECT id FROM scope_servers))",
    ),
    ("scope_clients", "SELECT id FROM mcp_oauth_clients WHERE mcp_server_id IN (SELECT id FROM scope_servers)"),
    # Orphans: users of the server's sessions that nothing outside the scope references.
    (
        "scope_user_candidates",
        "SELECT DISTINCT s.mcp_server_user_id AS id FROM mcp_server_session s"
        " JOIN scope_sessions USING (mcp_server_session_id) WHERE s.mcp_server_user_id IS NOT NULL",
    ),
    (
        "scope_users",
        """
        SELECT u.id FROM scope_user_candidates u
        WHERE NOT EXISTS (SELECT 1 FROM mcp_server_session o WHERE o.mcp_server_user_id = u.id
                          AND NOT EXISTS (SELECT 1 FROM scope_sessions x
                                          WHERE x.mcp_server_session_id = o.mcp_server_session_id))
          AND NOT EXISTS (SELECT 1 FROM mcp_tool_calls c WHERE c.mcp_server_user_id = u.id
                          AND c.mcp_server_id NOT IN (SELECT id FROM scope_servers)
                          AND NOT EXISTS (SELECT 1 FROM scope_sessions x
                                          WHERE x.mcp_server_session_id = c.mcp_server_session_id))
          AND NOT EXISTS (SELECT 1 FROM walkthrough_step_completions w WHERE w.mcp_server_user_id = u.id
                          AND w.mcp_server_id NOT IN (SELECT id FROM scope_servers))
          AND NOT EXISTS (SELECT 1 FROM mcp_oauth_tokens t WHERE t.mcp_server_user_id = u.id
                          AND NOT EXISTS (SELECT 1 FROM scope_clients k WHERE k.id = t.client_id))
        """,
    ),
    (
        "scope_tokens",
        "SELECT id FROM mcp_oauth_tokens WHERE client_id IN (SELECT id FROM scope_clients)"
        " UNION SELECT id FROM mcp_oauth_tokens WHERE mcp_server_user_id IN (SELECT id FROM scope_users)",
    ),
    (
        "scope_completions",
        "SELECT id FROM walkthrough_step_completions WHERE mcp_server_id IN (SELECT id FROM scope_servers)"
        " UNION SELECT id FROM walkthrough_step_completions"
        "  WHERE mcp_server_session_id IN (SELECT mcp_server_session_id FROM scope_sessions)"
        " UNION SELECT id FROM walkthrough_step_completions WHERE mcp_server_user_id IN (SELECT id FROM scope_users)",
    ),
    (
        "scope_tool_calls",
        "SELECT id FROM mcp_tool_calls WHERE mcp_server_id IN (SELECT id FROM scope_servers)"
        " UNION SELECT id FROM mcp_tool_calls"
        "  WHERE mcp_server_session_id IN (SELECT mcp_server_session_id FROM scope_sessions)"
        " UNION SELECT id FROM mcp_tool_calls WHERE mcp_server_user_id IN (SELECT id FROM scope_users)",
    ),
    (
        "scope_support",
        "SELECT id FROM support_requests WHERE mcp_server_id IN (SELECT id FROM scope_servers)"
        " UNION SELECT id FROM support_requests"
        "  WHERE mcp_server_session_id IN (SELECT mcp_server_session_id FROM scope_sessions)",
    ),
    (
        "scope_server_walkthroughs",
        "SELECT id FROM mcp_server_walkthroughs WHERE mcp_server_id IN (SELECT id FROM scope_servers)",
    ),
]
NOTES_SCOPE = ("scope_notes", "SELECT id FROM server_notes WHERE mcp_server_id IN (SELECT id FROM scope_servers)")

# Plan order: children before parents. (table, primary key, scope, action, set-null columns)
PLAN: list[tuple[str, str, str, str, tuple[str, ...]]] = [
    ("mcp_oauth_tokens", "id", "scope_tokens", "delete", ()),
    ("walkthrough_step_completions", "id", "scope_completions", "delete", ()),
    ("mcp_tool_calls", "id", "scope_tool_calls", "delete", ()),
    ("support_requests", "id", "scope_support", "delete", ()),
    ("mcp_oauth_clients", "id", "scope_clients", "delete", ()),
    ("mcp_server_walkthroughs", "id", "scope_server_walkthroughs", "delete", ()),
    ("mcp_server_session", "mcp_server_session_id", "scope_sessions", "delete", ()),
    ("server_notes", "id", "scope_notes", "set_null", ("mcp_server_id",)),
    ("mcp_servers", "id", "scope_servers", "delete", ()),
    ("mcp_server_user", "id", "scope_users", "delete", ()),
]


def build_scopes(conn: Connection, server_id: str, *, with_notes: bool = False) -> list[BackupStep]:
    """Materialise every scope as a temp table (ON COMMIT DROP) and return the plan's backup steps."""
    scopes = SCOPE_SQL + ([NOTES_SCOPE] if with_notes else [])
    for name, select in scopes:
        conn.execute(text(f"CREATE TEMP TABLE {name} ON COMMIT DROP AS {select}"), {"sid": server_id})
        conn.execute(text(f"ANALYZE {name}"))
    steps = []
    for table, pk, scope, action, nulls in PLAN:
        if table == "server_notes" and not with_notes:
            continue
        count = conn.execute(text(f"SELECT count(*) FROM {scope}")).scalar_one()
        steps.append(BackupStep("public", table, (pk,), scope, action, nulls, expected_rows=count))  # type: ignore[arg-type]
    return steps


def delete_scopes(conn: Connection, steps: list[BackupStep]) -> dict[str, int]:
    """What the engine does after the backup: null, then delete, children first."""
    counts = {}
    for step in steps:
        pk = step.primary_key[0]
        if step.action == "set_null":
            assignments = ", ".join(f"{c} = NULL" for c in step.set_null_columns)
            sql = f"UPDATE {step.table} t SET {assignments} FROM {step.scope_table} s WHERE t.{pk} = s.{pk}"
        else:
            sql = f"DELETE FROM {step.table} t USING {step.scope_table} s WHERE t.{pk} = s.{pk}"
        counts[step.table] = conn.execute(text(sql)).rowcount
    return counts


def table_checksums(conn: Connection) -> dict[str, tuple[int, str]]:
    """(rows, md5 of every row's text in order) for every table of the public schema."""
    tables = conn.execute(
        text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
    ).scalars()
    result = {}
    for table in list(tables):
        row = conn.execute(
            text(f"SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM \"{table}\" t")
        ).one()
        result[table] = (int(row[0]), str(row[1]))
    return result
