"""Sessions and connections, checked every minute: the round trip, connection usage, long-running,
idle-in-transaction and blocked queries.

Activity checks look at the stage's database only; connection usage is cluster-wide because
`max_connections` is.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, text

from bot.health.checks.base import (
    MAX_FINDINGS,
    NOT_OURS,
    OUR_SESSIONS,
    CheckContext,
    CheckReport,
    Finding,
    Needs,
    Severity,
    check,
    duration,
    safe_query_text,
    session_label,
    stamp,
)
from bot.pii import scrub
from bot.sessions.targets import ACTIVE, BLOCKING, IDLE_IN_TRANSACTION, session_actions
from bot.slacktext.words import plural
from bot.stages import APPLICATION_NAME


def latency_report(latency_ms: float, ctx: CheckContext) -> CheckReport:
    """The round trip of `SELECT 1` on an open connection (connecting is not part of it)."""
    warn = ctx.settings.latency_warn_ms
    summary = f"`SELECT 1` answered in {latency_ms:,.1f} ms" + (f" (warning over {warn:,} ms)" if warn else "")
    if not warn or latency_ms <= warn:
        return CheckReport("latency", "Round trip", "ok", summary)
    finding = Finding(
        check="latency",
        object="select_1",
        severity="warning",
        title=f"slow round trip: `SELECT 1` took {latency_ms:,.0f} ms",
        detail=(
            f"A trivial statement on an open connection took {latency_ms:,.0f} ms (threshold {warn:,} ms): every "
            "query of every client pays this on top of its own work."
        ),
        advice=(
            "Look at the server's CPU and I/O (RDS Performance Insights: waits, load), at the network path "
            "between the bot and the database (same region and VPC?), and at connection storms. "
            "STAGE_LATENCY_WARN_MS sets the threshold."
        ),
    )
    return CheckReport("latency", "Round trip", "findings", summary, [finding])


# -- connections ------------------------------------------------------------------------------


@check("connections", "Connections", group="activity")
def check_connections(conn: Connection, ctx: CheckContext) -> CheckReport:
    limits = conn.execute(
        text(
            "SELECT current_setting('max_connections')::int AS max_connections,"
            " current_setting('superuser_reserved_connections')::int AS reserved"
        )
    ).one()
    rows = conn.execute(
        text(
            "SELECT coalesce(nullif(application_name, ''), '(none)') AS app, count(*) AS n,"
            " count(*) FILTER (WHERE state = 'active') AS active"
            " FROM pg_stat_activity WHERE backend_type = 'client backend' GROUP BY 1 ORDER BY 2 DESC"
        )
    ).all()
    used = sum(r.n for r in rows)
    active = sum(r.active for r in rows)
    ours = sum(r.n for r in rows if r.app.startswith(APPLICATION_NAME))
    pct = 100.0 * used / max(limits.max_connections, 1)
    summary = f"{used} of {limits.max_connections} connections in use ({pct:.0f}%), {active} active"
    s = ctx.settings
    if pct < s.connections_warn_pct:
        return CheckReport("connections", "Connections", "ok", summary)
    severity: Severity = "critical" if pct >= s.connections_critical_pct else "warning"
    top = ", ".join(f"{scrub(r.app)[:40]}: {r.n}" for r in rows[:5])
    finding = Finding(
        check="connections",
        object="max_connections",
        severity=severity,
        title=f"connections at {pct:.0f}% of max_connections ({used} of {limits.max_connections})",
        detail=(
            f"{used} client connections ({active} active) of {limits.max_connections} allowed, "
            f"{limits.reserved} reserved for superusers; mcp-ops holds {ours}. "
            f"By application: {top}. Thresholds: warning {s.connections_warn_pct}%, "
            f"critical {s.connections_critical_pct}%."
        ),
        advice=(
            "Find who holds them (`SELECT application_name, state, count(*) FROM pg_stat_activity GROUP BY 1, 2`); "
            "idle ones point at a client pool that is too large or leaking. Put a pooler (PgBouncer, RDS Proxy) "
            "in front, or lower the clients' pool sizes; raising max_connections needs a restart."
        ),
    )
    return CheckReport("connections", "Connections", "findings", summary, [finding])


# -- sessions: long-running, idle in transaction, blocked ------------------------------------------

_SESSION_FILTER = (
    " backend_type = 'client backend' AND pid <> pg_backend_pid() AND datname = current_database() AND " + NOT_OURS
)


# Without pg_read_all_stats, other roles' sessions show neither state, query nor since when: the session checks
# would see none of them and say "none". Said once (by the long-running check, for all three, and in the same
# alert as the vacuum horizon's: `needs`, bot/health/checks/base.py), by the role's membership.
@check(
    "long_running",
    "Long-running queries",
    group="activity",
    needs=Needs(
        "pg_read_all_stats",
        "Sessions (long-running, idle in transaction, blocked)",
        "this role sees the state, query and start of its own sessions only: other roles' long-running, "
        "idle-in-transaction and blocked sessions are not found, and no alert says they are there.",
    ),
)
def check_long_running(conn: Connection, ctx: CheckContext) -> CheckReport:
    limit_s = ctx.settings.long_query_s
    rows = conn.execute(
        text(
            "SELECT pid, usename, application_name, backend_start, query_start, left(query, 1000) AS query,"
            " extract(epoch FROM now() - query_start) AS running_s, count(*) OVER () AS total"
            " FROM pg_stat_activity WHERE" + _SESSION_FILTER + " AND state = 'active'"
            " AND query_start < now() - make_interval(secs => :limit_s)"
            # A query waiting on a lock past BLOCKED_QUERY_SECONDS is the blocked check's (with who blocks it):
            # one alert per waiting session, not a second one saying it runs long.
            " AND NOT (wait_event_type IS NOT DISTINCT FROM 'Lock'"
            " AND query_start < now() - make_interval(secs => :blocked_s))"
            " ORDER BY query_start LIMIT :max_findings"
        ),
        {
            "ours": OUR_SESSIONS,
            "limit_s": limit_s,
            "blocked_s": ctx.settings.blocked_s,
            "max_findings": MAX_FINDINGS,
        },
    ).all()
    total = rows[0].total if rows else 0
    summary = (
        f"{plural(total, 'query')} running longer than {duration(limit_s)}"
        if total
        else "none over " + duration(limit_s)
    )
    findings = [
        Finding(
            check="long_running",
            object=f"pid {r.pid} query since {stamp(r.query_start)}",
            severity="warning",
            title=f"query running for {duration(r.running_s)}: {session_label(r)}",
            detail=f"`{safe_query_text(r.query)}`",
            advice=(
                f"If it should not run this long: `SELECT pg_cancel_backend({r.pid});` "
                f"(then `pg_terminate_backend({r.pid})` if it ignores the cancel). "
                "Check its plan with EXPLAIN; long queries hold back vacuum."
            ),
            actions=session_actions(r, ACTIVE),
        )
        for r in rows
    ]
    findings += _more("long_running", ctx, total, len(rows), f"running longer than {duration(limit_s)}", "--long")
    return CheckReport("long_running", "Long-running queries", "findings" if findings else "ok", summary, findings)


def _more(check: str, ctx: CheckContext, total: int, shown: int, what: str, flag: str) -> list[Finding]:
    """Past MAX_FINDINGS (the oldest, alerted one by one), the other sessions are one alert: none goes unsaid."""
    rest = total - shown
    if rest <= 0:
        return []
    return [
        Finding(
            check=check,
            object="more",
            severity="warning",
            title=f"{plural(rest, 'more session')} {what}",
            detail=(
                f"{plural(total, 'session')} {what}: the {shown} oldest have an alert each, the other {rest:,} are "
                "counted here."
            ),
            advice=(
                f"`/mcp sessions --stage {ctx.stage} {flag}` lists them with their buttons. So many at once usually "
                "share a cause: a lock, a deploy, a stuck pool or a slow dependency."
            ),
        )
    ]


@check("idle_in_transaction", "Idle in transaction", group="activity")
def check_idle_in_transaction(conn: Connection, ctx: CheckContext) -> CheckReport:
    limit_s = ctx.settings.idle_in_transaction_s
    rows = conn.execute(
        text(
            "SELECT pid, usename, application_name, backend_start, xact_start, state, left(query, 1000) AS query,"
            " extract(epoch FROM now() - state_change) AS idle_s,"
            " extract(epoch FROM now() - xact_start) AS xact_s, count(*) OVER () AS total"
            " FROM pg_stat_activity WHERE" + _SESSION_FILTER + " AND state LIKE 'idle in transaction%'"
            " AND state_change < now() - make_interval(secs => :limit_s)"
            " ORDER BY xact_start LIMIT :max_findings"
        ),
        {"ours": OUR_SESSIONS, "limit_s": limit_s, "max_findings": MAX_FINDINGS},
    ).all()
    total = rows[0].total if rows else 0
    summary = (
        f"{plural(total, 'session')} idle in a transaction for over {duration(limit_s)}"
        if total
        else "none over " + duration(limit_s)
    )
    findings = [
        Finding(
            check="idle_in_transaction",
            object=f"pid {r.pid} transaction since {stamp(r.xact_start)}",
            severity="warning",
            title=f"idle in transaction for {duration(r.idle_s)}: {session_label(r)}",
            detail=(
                f"Transaction open for {duration(r.xact_s)} ({r.state}); last statement: `{safe_query_text(r.query)}`"
            ),
            advice=(
                "It holds its locks and stops vacuum from cleaning up. Fix the client so it commits or rolls back; "
                f"`SELECT pg_terminate_backend({r.pid});` ends it now; `idle_in_transaction_session_timeout` "
                "prevents it."
            ),
            actions=session_actions(r, IDLE_IN_TRANSACTION),
        )
        for r in rows
    ]
    findings += _more(
        "idle_in_transaction", ctx, total, len(rows), f"idle in a transaction for over {duration(limit_s)}", "--idle"
    )
    return CheckReport(
        "idle_in_transaction", "Idle in transaction", "findings" if findings else "ok", summary, findings
    )


@check("blocked", "Blocked queries", group="activity")
def check_blocked(conn: Connection, ctx: CheckContext) -> CheckReport:
    limit_s = ctx.settings.blocked_s
    rows = conn.execute(
        text(
            "SELECT pid, usename, application_name, query_start, left(query, 1000) AS query,"
            " extract(epoch FROM now() - query_start) AS waiting_s, pg_blocking_pids(pid) AS blockers,"
            " count(*) OVER () AS total"
            " FROM pg_stat_activity WHERE" + _SESSION_FILTER + " AND wait_event_type = 'Lock'"
            " AND query_start < now() - make_interval(secs => :limit_s)"
            " ORDER BY query_start LIMIT :max_findings"
        ),
        {"ours": OUR_SESSIONS, "limit_s": limit_s, "max_findings": MAX_FINDINGS},
    ).all()
    total = rows[0].total if rows else 0
    summary = f"{plural(total, 'query')} waiting on locks for over {duration(limit_s)}" if total else "none"
    if not rows:
        return CheckReport("blocked", "Blocked queries", "ok", summary)
    blockers = _blockers(conn, {pid for r in rows for pid in r.blockers or []})
    prepared = _prepared(conn) if any(PREPARED in (r.blockers or []) for r in rows) else ""
    findings = []
    for r in rows:
        described = []
        for pid in (r.blockers or [])[:BLOCKERS_LISTED]:
            b = blockers.get(pid)
            if pid == PREPARED:
                described.append(f"a prepared transaction ({prepared})")
            elif b is None:
                described.append(f"pid {pid} (gone)")
            else:
                described.append(_blocker_text(b))
        if len(r.blockers or []) > BLOCKERS_LISTED:
            described.append(f"and {len(r.blockers) - BLOCKERS_LISTED:,} more (`/mcp sessions --stage {ctx.stage}`)")
        first = (r.blockers or [0])[0]
        head = head_of_chain(first, blockers)
        chain = ""
        if head != first and head in blockers:
            chain = f"\nAt the head of the chain: {_blocker_text(blockers[head])}"
        by = "a prepared transaction" if first == PREPARED else f"pid {first}"
        if head == PREPARED:
            advice = (
                "A prepared transaction belongs to no session: nothing to cancel. Its transaction manager should "
                "finish it; if it is lost: `COMMIT PREPARED '<gid>';` or `ROLLBACK PREPARED '<gid>';` "
                "(`SELECT gid, prepared, owner FROM pg_prepared_xacts;`)."
            )
        else:
            advice = (
                "Ask the owner of the blocking session to finish; if it is stuck: "
                f"`SELECT pg_cancel_backend({head});` or `pg_terminate_backend({head})`"
                + (f" (pid {first} only waits on it)." if head != first else ".")
            )
        findings.append(
            Finding(
                check="blocked",
                object=f"pid {r.pid} query since {stamp(r.query_start)}",
                severity="warning",
                title=f"query blocked for {duration(r.waiting_s)} by {by}: {session_label(r)}",
                detail=f"Waiting: `{safe_query_text(r.query, 150)}`\nBlocked by: " + "; ".join(described) + chain,
                advice=advice,
                actions=session_actions(blockers.get(head), BLOCKING),
            )
        )
    findings += _more("blocked", ctx, total, len(rows), f"waiting on locks for over {duration(limit_s)}", "--blocked")
    return CheckReport("blocked", "Blocked queries", "findings", summary, findings)


CHAIN_DEPTH = 8  # sessions followed up a chain of lock waits
BLOCKERS_LISTED = 5  # per blocked query; the others are counted
PREPARED = 0  # pg_blocking_pids names a prepared transaction holding the lock as pid 0


def _prepared(conn: Connection) -> str:
    """The prepared transactions of this database, oldest first: one of them holds the lock."""
    rows = conn.execute(
        text(
            "SELECT gid, extract(epoch FROM now() - prepared) AS age_s FROM pg_prepared_xacts"
            " WHERE database = current_database() ORDER BY prepared LIMIT 3"
        )
    ).all()
    if not rows:
        return "already finished"
    return "one of: " + ", ".join(f"gid '{scrub(r.gid)[:60]}' prepared {duration(r.age_s)} ago" for r in rows)


def _blockers(conn: Connection, pids: set[int]) -> dict[int, Any]:
    """The sessions in `pids` and, up the chain, the ones they wait on in turn: who blocks whom."""
    found: dict[int, Any] = {}
    wanted = set(pids)
    for _ in range(CHAIN_DEPTH):
        wanted -= set(found)
        if not wanted:
            break
        rows = conn.execute(
            text(
                "SELECT pid, usename, application_name, state, left(query, 1000) AS query,"
                " backend_start, xact_start, query_start, extract(epoch FROM now() - xact_start) AS xact_s,"
                " pg_blocking_pids(pid) AS blockers"
                " FROM pg_stat_activity WHERE pid IN :pids"
            ).bindparams(bindparam("pids", expanding=True)),
            {"pids": sorted(wanted)},
        ).all()
        found.update({b.pid: b for b in rows})
        wanted = {pid for b in rows for pid in b.blockers or []}
    return found


def head_of_chain(pid: int, blockers: dict[int, Any]) -> int:
    """The session at the head of `pid`'s chain of lock waits (following each one's first blocker)."""
    seen = {pid}
    while (b := blockers.get(pid)) is not None and b.blockers:
        nxt = b.blockers[0]
        if nxt == PREPARED:  # a prepared transaction waits on nothing
            return PREPARED
        if nxt in seen or nxt not in blockers:  # a deadlock in the making, or one that just ended
            break
        seen.add(nxt)
        pid = nxt
    return pid


def _blocker_text(b: Any) -> str:
    age = f", transaction open {duration(b.xact_s)}" if b.xact_s is not None else ""
    waits = f", itself waiting on pid {b.blockers[0]}" if b.blockers else ""
    return f"{session_label(b)}, {b.state}{age}{waits}: `{safe_query_text(b.query, 150)}`"
