"""Forget-user for a user with 100,000 tool calls on the 1,000,000-tool-call dataset vs the hand-written erase."""

from __future__ import annotations

import hashlib
import statistics
import time

import psycopg
from psycopg import sql

from bench.common import BenchContext, add_fk_indexes, bench_stage, ratio_line
from bot.deletion.execute import Progress
from bot.erasure.identity import Person
from bot.erasure.plan import ErasureTarget, measure_erasure
from bot.erasure.run import run_erasure
from bot.erasure.settings import load_erasure_settings

USER = "msu_big_8"  # has an email (every 7th generated user has none)
TOOL_CALLS = 100_000
ROUNDS = 5

# The person gets TOOL_CALLS tool calls (theirs plus other users' of the big server), and a
# session-less support request under their email, matched by ERASURE_COLUMNS' default.
PREPARE = (
    """UPDATE mcp_tool_calls SET mcp_server_user_id = %(u)s WHERE id IN (
           SELECT id FROM mcp_tool_calls WHERE mcp_server_id = 'srv_big' AND mcp_server_user_id <> %(u)s
           ORDER BY id LIMIT %(n)s - (SELECT count(*) FROM mcp_tool_calls WHERE mcp_server_user_id = %(u)s))""",
    """INSERT INTO support_requests (id, email, organization_id, title)
           SELECT 'sr_forget', upper(email), 'org_1', 'Please forget me' FROM mcp_server_user WHERE id = %(u)s""",
)

# The erase a DBA would write for this schema: the user rows by email (case-insensitive), distinct id
# or id; their sessions; everything that cascades from either; the support requests under their email.
HAND_ERASE = (
    """CREATE TEMP TABLE u ON COMMIT DROP AS SELECT id, lower(btrim(email)) AS email FROM mcp_server_user
           WHERE lower(btrim(email)) = %(email)s OR distinct_id = %(typed)s OR id = %(typed)s""",
    """CREATE TEMP TABLE s ON COMMIT DROP AS SELECT mcp_server_session_id AS id FROM mcp_server_session
           WHERE mcp_server_user_id IN (SELECT id FROM u)""",
    """DELETE FROM walkthrough_step_completions
           WHERE mcp_server_user_id IN (SELECT id FROM u) OR mcp_server_session_id IN (SELECT id FROM s)""",
    """DELETE FROM mcp_tool_calls
           WHERE mcp_server_user_id IN (SELECT id FROM u) OR mcp_server_session_id IN (SELECT id FROM s)""",
    """DELETE FROM support_requests WHERE mcp_server_session_id IN (SELECT id FROM s)
           OR lower(btrim(email)) IN (SELECT email FROM u WHERE email IS NOT NULL)""",
    "DELETE FROM mcp_oauth_tokens WHERE mcp_server_user_id IN (SELECT id FROM u)",
    "DELETE FROM mcp_server_session WHERE mcp_server_session_id IN (SELECT id FROM s)",
    "DELETE FROM mcp_server_user WHERE id IN (SELECT id FROM u)",
)


def tool_calls(ctx: BenchContext) -> int:
    """100,000 on the big dataset; a tenth of the big server's on the small one (`--small`)."""
    return min(TOOL_CALLS, ctx.spec.big_tool_calls // 10)


def forget_template(ctx: BenchContext, *, with_fk_indexes: bool) -> str:
    """The big dataset with the person prepared, built once per variant and kept as a template."""
    base = ctx.template()
    calls = tool_calls(ctx)
    digest = hashlib.sha256(f"{base}/{USER}/{calls}/{with_fk_indexes}".encode()).hexdigest()[:8]
    name = f"bench_forget_{digest}"
    if ctx.cluster.database_exists(name):
        return name
    building = f"{name}_building"
    ctx.cluster.create_database(building, template=base, drop=True)
    with psycopg.connect(ctx.cluster.dsn(building), autocommit=True) as conn:
        for statement in PREPARE:
            conn.execute(statement, {"u": USER, "n": calls})
        if with_fk_indexes:
            add_fk_indexes(conn)
        conn.execute("VACUUM ANALYZE")
    with psycopg.connect(ctx.cluster.dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(building), sql.Identifier(name)))
    return name


def _clone(ctx: BenchContext, template: str, label: str) -> str:
    name = f"bench_forget_{label}"
    url = ctx.cluster.create_database(name, template=template, drop=True)
    ctx._clones.append(name)  # dropped with the context
    return url


def _ours(ctx: BenchContext, url: str, email: str) -> tuple[float, float, int]:
    """Seconds to the commit, seconds of the checks after it, rows erased."""
    stage = bench_stage(ctx, url)
    settings = load_erasure_settings({})
    try:
        with stage.read() as conn:
            impact = measure_erasure(conn, settings, Person.of(email))
        committed: list[float] = []

        def progress(p: Progress) -> None:
            if p.phase == "verifying" and not committed:
                committed.append(time.perf_counter())  # reported right after COMMIT returned

        started = time.perf_counter()
        result = run_erasure(
            stage,
            settings,
            ErasureTarget.from_json(impact.target),
            expected=impact.snapshot,
            budget_s=3600,
            progress=progress,
        )
        ended = time.perf_counter()
        assert result.verified and committed, result.verification
        return committed[0] - started, ended - committed[0], result.total_rows
    finally:
        stage.dispose()


def _hand(ctx: BenchContext, url: str, email: str) -> tuple[float, int]:
    with psycopg.connect(ctx.dsn(url)) as conn:
        started = time.perf_counter()
        rows = 0
        for statement in HAND_ERASE:
            cur = conn.execute(statement, {"email": email.lower(), "typed": email})
            rows += cur.rowcount if statement.startswith("DELETE") else 0
        conn.commit()
        return time.perf_counter() - started, rows


def bench_variant(ctx: BenchContext, *, with_fk_indexes: bool) -> None:
    template = forget_template(ctx, with_fk_indexes=with_fk_indexes)
    with psycopg.connect(ctx.cluster.dsn(template)) as conn:
        email = str(conn.execute("SELECT email FROM mcp_server_user WHERE id = %s", (USER,)).fetchone()[0])
        calls = conn.execute("SELECT count(*) FROM mcp_tool_calls WHERE mcp_server_user_id = %s", (USER,)).fetchone()
    variant = "both FK indexes" if with_fk_indexes else "the schema as it is"
    print(f"{variant}: the person has {calls[0]:,} tool calls", flush=True)
    ours: list[float] = []
    checks: list[float] = []
    hand: list[float] = []
    for round_ in range(ROUNDS):
        tag = f"{int(with_fk_indexes)}_{round_}"
        took, checked, ours_rows = _ours(ctx, _clone(ctx, template, f"ours_{tag}"), email)
        ours.append(took)
        checks.append(checked)
        hand_took, hand_rows = _hand(ctx, _clone(ctx, template, f"hand_{tag}"), email)
        hand.append(hand_took)
        assert hand_rows == ours_rows, (hand_rows, ours_rows)
        print(
            f"  round {round_ + 1}: forget-user {took:.2f} s to commit (+ {checked:.2f} s checking after it),"
            f" hand-written {hand_took:.2f} s ({ours_rows:,} rows)",
            flush=True,
        )
    # Medians: on a shared machine one lucky run of either side moves a minimum a lot (best_of does the same).
    label = f"forget-user, {variant} (one transaction, same data; median of {ROUNDS} fresh copies each)"
    print(ratio_line(label, statistics.median(ours), statistics.median(hand), 1.5), flush=True)
    print(ratio_line("  the fastest run of each", min(ours), min(hand)), flush=True)


def run(ctx: BenchContext) -> None:
    bench_variant(ctx, with_fk_indexes=False)
    bench_variant(ctx, with_fk_indexes=True)
