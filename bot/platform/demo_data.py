"""Realistic, deterministic platform data, generated inside PostgreSQL.

One "big" server carries the heavy rows (tool calls, sessions, step completions, users
that only it has); small servers beside it share some users with it, and some users have
no session at all. Those two kinds of user are what the runbook's step 6 gets wrong.
Everything is INSERT ... SELECT over generate_series with bound parameters, so a million
tool calls never pass through Python.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Connection, text

DAY_MS = 86_400_000
# Bump when the generated rows change, so cached benchmark datasets are rebuilt.
GENERATOR_VERSION = 2
TOOLS = ["search_docs", "create_issue", "list_repos", "get_file", "run_query", "send_message", "summarize", "fetch_url"]
FIRST = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "oscar"]
DOMAINS = ["example.com", "acme.io", "globex.dev", "initech.net"]
ORG_NAMES = ["Acme", "Globex", "Initech", "Umbrella", "Hooli"]
PRODUCTS = ["github", "linear", "notion", "slack", "jira", "stripe", "figma", "postgres", "sentry", "zendesk"]


@dataclass(frozen=True)
class DatasetSpec:
    organizations: int = 3
    small_servers: int = 19
    small_tool_calls: int = 300
    small_sessions: int = 30
    small_users: int = 12
    big_slug: str = "acme-analytics-mcp"
    big_tool_calls: int = 20_000
    big_sessions: int = 2_000
    big_users: int = 800
    big_completions: int = 1_500
    shared_users: int = 25
    sessionless_users: int = 15
    support_per_server: int = 4
    now_ms: int | None = None


BENCH_SPEC = DatasetSpec(
    big_tool_calls=1_000_000,
    big_sessions=100_000,
    big_users=40_000,
    big_completions=100_000,
    small_tool_calls=2_000,
    small_sessions=200,
    small_users=50,
    shared_users=500,
    sessionless_users=200,
)


def server_org(index: int, spec: DatasetSpec) -> int:
    """The organization number (1-based) that owns server `index`."""
    return 1 + (index % spec.organizations)


def server_product(index: int) -> str:
    return PRODUCTS[index % len(PRODUCTS)]


def server_name(index: int, spec: DatasetSpec) -> str:
    org = ORG_NAMES[(server_org(index, spec) - 1) % len(ORG_NAMES)]
    if index == 0:
        return f"{org} Analytics MCP"
    return f"{org} {server_product(index).capitalize()} MCP {index}"


def server_slug(index: int, spec: DatasetSpec) -> str:
    if index == 0:
        return spec.big_slug
    org = ORG_NAMES[(server_org(index, spec) - 1) % len(ORG_NAMES)].lower()
    return f"{org}-{server_product(index)}-mcp-{index}"


def _exec(conn: Connection, sql: str, **params: object) -> None:
    conn.execute(text(sql), params)


def _organizations(conn: Connection, spec: DatasetSpec) -> None:
    _exec(
        conn,
        """
        INSERT INTO organization (id, name, slug, created_at)
        SELECT 'org_' || g,
               n.name || CASE WHEN g > cardinality(n.names) THEN ' ' || g ELSE '' END,
               lower(n.name) || '-' || g,
               now() - make_interval(days => g * 30)
        FROM generate_series(1, :n) g,
             LATERAL (SELECT CAST(:names AS text[]) AS names) a,
             LATERAL (SELECT a.names, a.names[1 + (g - 1) % cardinality(a.names)] AS name) n
        """,
        names=ORG_NAMES,
        n=spec.organizations,
    )
    _exec(
        conn,
        """
        INSERT INTO "user" (id, name, email)
        SELECT 'usr_' || g, initcap(p.first) || ' Support', p.first || '.support' || g || '@' || p.domain
        FROM generate_series(1, 6) g,
             LATERAL (SELECT (CAST(:first AS text[]))[1 + g % 12] AS first,
                             (CAST(:domains AS text[]))[1 + g % 4] AS domain) p
        """,
        first=FIRST,
        domains=DOMAINS,
    )
    _exec(
        conn,
        """
        INSERT INTO walkthroughs (id, organization_id, title, created_at)
        SELECT 'wt_' || o || '_' || w, 'org_' || o, 'Getting started ' || w, :now - (o * w)::bigint * 86400000
        FROM generate_series(1, :orgs) o, generate_series(1, 2) w
        """,
        orgs=spec.organizations,
        now=spec.now_ms,
    )
    _exec(
        conn,
        """
        INSERT INTO walkthrough_steps (id, walkthrough_id, title, display_order)
        SELECT 'ws_' || o || '_' || w || '_' || s, 'wt_' || o || '_' || w, 'Step ' || s, s
        FROM generate_series(1, :orgs) o, generate_series(1, 2) w, generate_series(1, 3) s
        """,
        orgs=spec.organizations,
    )
    _exec(
        conn,
        """
        UPDATE walkthrough_steps ws SET next_step_id = nxt.id
        FROM walkthrough_steps nxt
        WHERE nxt.walkthrough_id = ws.walkthrough_id AND nxt.display_order = ws.display_order + 1
        """,
    )


def _server(
    conn: Connection, spec: DatasetSpec, index: int, *, tool_calls: int, sessions: int, users: int, completions: int
) -> None:
    """One server with its own users, sessions, tool calls and the rest."""
    key = "big" if index == 0 else f"s{index}"
    org = server_org(index, spec)
    params = {
        "sid": f"srv_{key}",
        "key": key,
        "slug": server_slug(index, spec),
        "org": f"org_{org}",
        "now": spec.now_ms,
        "calls": tool_calls,
        "sessions": sessions,
        "users": users,
        "tools": TOOLS,
        "first": FIRST,
        "domains": DOMAINS,
        "product": server_product(index),
        "name": server_name(index, spec),
        "created": spec.now_ms - (index + 1) * 7 * DAY_MS,
    }
    _exec(
        conn,
        """
        INSERT INTO mcp_servers (id, organization_id, name, product_platform_or_tool, slug, created_at)
        VALUES (:sid, :org, :name, :product, :slug, :created)
        """,
        **params,
    )
    _exec(
        conn,
        """
        INSERT INTO mcp_server_user (id, distinct_id, email, upstream_sub, profile_data, first_seen_at)
        SELECT 'msu_' || :key || '_' || g, 'did_' || :key || '_' || g,
               CASE WHEN g % 7 = 0 THEN NULL ELSE p.first || '.' || :key || g || '@' || p.domain END,
               'sub|' || :key || g, jsonb_build_object('plan', CASE WHEN g % 3 = 0 THEN 'pro' ELSE 'free' END),
               :now - ((g::bigint * 7919) % 90)::bigint * 86400000
        FROM generate_series(0, :users - 1) g,
             LATERAL (SELECT (CAST(:first AS text[]))[1 + g % 12] AS first,
                             (CAST(:domains AS text[]))[1 + g % 4] AS domain) p
        """,
        **params,
    )
    _exec(
        conn,
        """
        INSERT INTO mcp_server_session (mcp_server_session_id, mcp_server_slug, connection_date,
                                        connection_timestamp, mcp_server_user_id, title)
        SELECT 'ses_' || :key || '_' || g, :slug,
               to_timestamp((:now - ((g::bigint * 104729) % (60::bigint * 86400000))) / 1000.0)::date,
               :now - ((g::bigint * 104729) % (60::bigint * 86400000)),
               'msu_' || :key || '_' || (g % :users),
               'Session ' || g
        FROM generate_series(0, :sessions - 1) g
        """,
        **params,
    )
    _exec(
        conn,
        """
        INSERT INTO mcp_tool_calls (id, created_at, mcp_server_id, tool_name, mcp_server_user_id,
                                    mcp_server_session_id, input, output)
        SELECT 'tc_' || :key || '_' || g,
               :now - ((g::bigint * 15485863) % (60::bigint * 86400000)),
               :sid,
               (CAST(:tools AS text[]))[1 + (g::bigint * g) % cardinality(CAST(:tools AS text[]))],
               'msu_' || :key || '_' || ((g % :sessions) % :users),
               'ses_' || :key || '_' || (g % :sessions),
               jsonb_build_object('q', 'query ' || (g % 97)),
               jsonb_build_object('ok', g % 13 <> 0)
        FROM generate_series(0, :calls - 1) g
        """,
        **params,
    )
    _exec(
        conn,
        """
        INSERT INTO mcp_server_walkthroughs (id, mcp_server_id, walkthrough_id, display_order, is_enabled)
        SELECT 'msw_' || :key || '_' || w, :sid, 'wt_' || substr(:org, 5) || '_' || w, w,
               CASE WHEN w = 1 THEN 'true' ELSE 'false' END
        FROM generate_series(1, 2) w
        """,
        **params,
    )
    # Completions: unique per (user, walkthrough, step); the user's first session holds them.
    _exec(
        conn,
        """
        INSERT INTO walkthrough_step_completions (id, mcp_server_user_id, walkthrough_id, step_id,
                                                  mcp_server_id, mcp_server_session_id, completed_at, metadata)
        SELECT 'wsc_' || :key || '_' || g,
               'msu_' || :key || '_' || u,
               'wt_' || substr(:org, 5) || '_' || (1 + c / 3),
               'ws_' || substr(:org, 5) || '_' || (1 + c / 3) || '_' || (1 + c % 3),
               :sid,
               'ses_' || :key || '_' || u,
               :now - (g % 30)::bigint * 86400000,
               '{}'::jsonb
        FROM generate_series(0, :n - 1) g,
             LATERAL (SELECT g % least(:users, :sessions) AS u, g / least(:users, :sessions) AS c) x
        WHERE x.c < 6
        """,
        n=completions,
        **params,
    )
    _exec(
        conn,
        """
        INSERT INTO support_requests (id, email, organization_id, mcp_server_id, mcp_server_session_id,
                                      assignee_id, status, priority, title, created_at)
        SELECT 'sr_' || :key || '_' || g,
               p.first || '@' || p.domain,
               :org, :sid,
               CASE WHEN g % 2 = 0 THEN 'ses_' || :key || '_' || (g % :sessions) END,
               CASE WHEN g % 3 = 0 THEN 'usr_' || (1 + g % 6) END,
               (ARRAY['open','in_progress','resolved','closed'])[1 + g % 4]::support_request_status,
               (ARRAY['low','medium','high','urgent'])[1 + g % 4]::support_request_priority,
               'Problem ' || g,
               :now - g::bigint * 3600000
        FROM generate_series(0, :n - 1) g,
             LATERAL (SELECT (CAST(:first AS text[]))[1 + g % 12] AS first,
                             (CAST(:domains AS text[]))[1 + g % 4] AS domain) p
        """,
        n=spec.support_per_server,
        **params,
    )
    _exec(
        conn,
        """
        INSERT INTO mcp_oauth_clients (id, mcp_server_id, client_name, created_at)
        SELECT 'oc_' || :key || '_' || g, :sid, 'client ' || g, :now FROM generate_series(1, 2) g
        """,
        **params,
    )
    _exec(
        conn,
        """
        INSERT INTO mcp_oauth_tokens (id, client_id, mcp_server_user_id, expires_at)
        SELECT 'ot_' || :key || '_' || g, 'oc_' || :key || '_' || (1 + g % 2), 'msu_' || :key || '_' || g,
               :now + 86400000
        FROM generate_series(0, least(:users, 50) - 1) g
        """,
        **params,
    )


def _shared_and_lonely_users(conn: Connection, spec: DatasetSpec) -> None:
    """Users with sessions on the big server and on a small one, and users with no session."""
    if spec.small_servers > 0 and spec.shared_users > 0:
        _exec(
            conn,
            """
            INSERT INTO mcp_server_user (id, distinct_id, email, first_seen_at)
            SELECT 'msu_shared_' || g, 'did_shared_' || g, 'shared' || g || '@example.com', :now
            FROM generate_series(0, :n - 1) g
            """,
            n=spec.shared_users,
            now=spec.now_ms,
        )
        _exec(
            conn,
            """
            INSERT INTO mcp_server_session (mcp_server_session_id, mcp_server_slug, connection_date,
                                            connection_timestamp, mcp_server_user_id, title)
            SELECT 'ses_shared_' || g || '_' || side,
                   CASE WHEN side = 0 THEN :big ELSE (SELECT slug FROM mcp_servers
                        WHERE id = 'srv_s' || (1 + g % :small)) END,
                   current_date, :now, 'msu_shared_' || g, 'Shared ' || g
            FROM generate_series(0, :n - 1) g, generate_series(0, 1) side
            """,
            n=spec.shared_users,
            small=spec.small_servers,
            big=spec.big_slug,
            now=spec.now_ms,
        )
        _exec(
            conn,
            """
            INSERT INTO mcp_tool_calls (id, created_at, mcp_server_id, tool_name, mcp_server_user_id,
                                        mcp_server_session_id)
            SELECT 'tc_shared_' || g || '_' || side, :now,
                   CASE WHEN side = 0 THEN 'srv_big' ELSE 'srv_s' || (1 + g % :small) END,
                   'search_docs', 'msu_shared_' || g, 'ses_shared_' || g || '_' || side
            FROM generate_series(0, :n - 1) g, generate_series(0, 1) side
            """,
            n=spec.shared_users,
            small=spec.small_servers,
            now=spec.now_ms,
        )
    if spec.sessionless_users > 0:
        _exec(
            conn,
            """
            INSERT INTO mcp_server_user (id, distinct_id, email, first_seen_at)
            SELECT 'msu_lonely_' || g, 'did_lonely_' || g, 'lonely' || g || '@example.com', :now
            FROM generate_series(0, :n - 1) g
            """,
            n=spec.sessionless_users,
            now=spec.now_ms,
        )


def load_demo_data(conn: Connection, spec: DatasetSpec = DatasetSpec()) -> DatasetSpec:
    """Fill an empty platform schema; returns the spec with `now_ms` fixed."""
    if spec.now_ms is None:
        spec = DatasetSpec(**{**spec.__dict__, "now_ms": int(time.time() * 1000)})
    _organizations(conn, spec)
    _server(
        conn,
        spec,
        0,
        tool_calls=spec.big_tool_calls,
        sessions=spec.big_sessions,
        users=spec.big_users,
        completions=spec.big_completions,
    )
    for index in range(1, spec.small_servers + 1):
        _server(
            conn,
            spec,
            index,
            tool_calls=spec.small_tool_calls,
            sessions=spec.small_sessions,
            users=spec.small_users,
            completions=min(spec.small_users, spec.small_sessions),
        )
    _shared_and_lonely_users(conn, spec)
    conn.execute(text("ANALYZE"))
    return spec
