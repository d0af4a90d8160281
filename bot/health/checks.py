"""Health checks: each reads one stage connection and returns a report with its findings.

Checks never write and never look at the bot's own sessions (application_name `mcp-ops...`),
so the monitor cannot alert on itself. Activity checks look at the stage's database only;
connection usage is cluster-wide because `max_connections` is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, bindparam, text

from bot.config import HealthSettings
from bot.pii import scrub
from bot.stages import APPLICATION_NAME

Severity = Literal["info", "warning", "critical"]
Status = Literal["ok", "findings", "unavailable", "error"]

OUR_SESSIONS = f"{APPLICATION_NAME}%"
MAX_FINDINGS = 10  # per check and run: the oldest first, the summary counts the rest
QUERY_CHARS = 300
MAX_FK_LINES = 15
WRAPAROUND_LIMIT = 2**31  # transaction IDs (and multixacts) a database can age before it must stop


@dataclass(frozen=True)
class Finding:
    """Something worth an alert; (stage, check, object) is its fingerprint."""

    check: str
    object: str
    severity: Severity
    title: str
    detail: str
    advice: str
    remind: bool = True  # info-like findings (missing indexes, a missing extension) are said once


@dataclass
class CheckReport:
    check: str
    label: str
    status: Status
    summary: str
    findings: list[Finding] = field(default_factory=list)
    # The alert checks this report speaks for: their open alerts absent from `findings` resolve.
    # Empty when the check could not run, so its alerts are left as they are.
    covers: tuple[str, ...] | None = None
    # (check, object) of open alerts this run has no verdict on (a slow query that ran too few times
    # to be measured): they neither count as seen nor as absent.
    holds: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.covers is None:
            self.covers = () if self.status == "error" else (self.check,)


@dataclass
class CheckContext:
    stage: str
    settings: HealthSettings


Check = Callable[[Connection, CheckContext], CheckReport]


@dataclass(frozen=True)
class CheckSpec:
    """A check and the names it reports under, so a failed run can still be reported."""

    name: str
    label: str
    run: Check


_LITERAL_RE = re.compile(r"'(?:[^']|'')*'|\$(\w*)\$.*?\$\1\$", re.DOTALL)
_SPACE_RE = re.compile(r"\s+")


def safe_query_text(raw: str | None, limit: int = QUERY_CHARS) -> str:
    """Query text fit for Slack: literals blanked, secrets and emails scrubbed, one line, truncated."""
    if not raw:
        return "(no query text)"
    flat = _SPACE_RE.sub(" ", _LITERAL_RE.sub("'…'", raw)).strip().replace("`", "'")
    flat = scrub(flat)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172_800:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86_400} days"


def _session(row: Any) -> str:
    app = scrub(row.application_name or "no application_name")[:60]
    return f"pid {row.pid} ({app}, user {scrub(row.usename or '?')[:40]})"


def _stamp(value: datetime) -> int:
    return int(value.timestamp())


# -- round trip --------------------------------------------------------------------------------


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
    " backend_type = 'client backend' AND pid <> pg_backend_pid() AND datname = current_database()"
    " AND coalesce(application_name, '') NOT LIKE :ours"
)


def check_long_running(conn: Connection, ctx: CheckContext) -> CheckReport:
    limit_s = ctx.settings.long_query_s
    rows = conn.execute(
        text(
            "SELECT pid, usename, application_name, query_start, left(query, 1000) AS query,"
            " extract(epoch FROM now() - query_start) AS running_s, count(*) OVER () AS total"
            " FROM pg_stat_activity WHERE" + _SESSION_FILTER + " AND state = 'active'"
            " AND query_start < now() - make_interval(secs => :limit_s)"
            " ORDER BY query_start LIMIT :max_findings"
        ),
        {"ours": OUR_SESSIONS, "limit_s": limit_s, "max_findings": MAX_FINDINGS},
    ).all()
    total = rows[0].total if rows else 0
    summary = f"{total} queries running longer than {duration(limit_s)}" if total else "none over " + duration(limit_s)
    findings = [
        Finding(
            check="long_running",
            object=f"pid {r.pid} query since {_stamp(r.query_start)}",
            severity="warning",
            title=f"query running for {duration(r.running_s)}: {_session(r)}",
            detail=f"`{safe_query_text(r.query)}`",
            advice=(
                f"If it should not run this long: `SELECT pg_cancel_backend({r.pid});` "
                f"(then `pg_terminate_backend({r.pid})` if it ignores the cancel). "
                "Check its plan with EXPLAIN; long queries hold back vacuum."
            ),
        )
        for r in rows
    ]
    return CheckReport("long_running", "Long-running queries", "findings" if findings else "ok", summary, findings)


def check_idle_in_transaction(conn: Connection, ctx: CheckContext) -> CheckReport:
    limit_s = ctx.settings.idle_in_transaction_s
    rows = conn.execute(
        text(
            "SELECT pid, usename, application_name, xact_start, state, left(query, 1000) AS query,"
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
        f"{total} sessions idle in a transaction for over {duration(limit_s)}"
        if total
        else "none over " + duration(limit_s)
    )
    findings = [
        Finding(
            check="idle_in_transaction",
            object=f"pid {r.pid} transaction since {_stamp(r.xact_start)}",
            severity="warning",
            title=f"idle in transaction for {duration(r.idle_s)}: {_session(r)}",
            detail=(
                f"Transaction open for {duration(r.xact_s)} ({r.state}); last statement: `{safe_query_text(r.query)}`"
            ),
            advice=(
                "It holds its locks and stops vacuum from cleaning up. Fix the client so it commits or rolls back; "
                f"`SELECT pg_terminate_backend({r.pid});` ends it now; `idle_in_transaction_session_timeout` "
                "prevents it."
            ),
        )
        for r in rows
    ]
    return CheckReport(
        "idle_in_transaction", "Idle in transaction", "findings" if findings else "ok", summary, findings
    )


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
    summary = f"{total} queries waiting on locks for over {duration(limit_s)}" if total else "none"
    if not rows:
        return CheckReport("blocked", "Blocked queries", "ok", summary)
    blocker_pids = sorted({pid for r in rows for pid in r.blockers or []})
    blockers: dict[int, Any] = {}
    if blocker_pids:
        blockers = {
            b.pid: b
            for b in conn.execute(
                text(
                    "SELECT pid, usename, application_name, state, left(query, 1000) AS query,"
                    " extract(epoch FROM now() - xact_start) AS xact_s"
                    " FROM pg_stat_activity WHERE pid IN :pids"
                ).bindparams(bindparam("pids", expanding=True)),
                {"pids": blocker_pids},
            )
        }
    findings = []
    for r in rows:
        described = []
        for pid in r.blockers or []:
            b = blockers.get(pid)
            if b is None:
                described.append(f"pid {pid} (gone)")
            else:
                age = f", transaction open {duration(b.xact_s)}" if b.xact_s is not None else ""
                described.append(f"{_session(b)}, {b.state}{age}: `{safe_query_text(b.query, 150)}`")
        first = (r.blockers or [0])[0]
        findings.append(
            Finding(
                check="blocked",
                object=f"pid {r.pid} query since {_stamp(r.query_start)}",
                severity="warning",
                title=f"query blocked for {duration(r.waiting_s)} by pid {first}: {_session(r)}",
                detail=f"Waiting: `{safe_query_text(r.query, 150)}`\nBlocked by: " + "; ".join(described),
                advice=(
                    "Ask the owner of the blocking session to finish; if it is stuck: "
                    f"`SELECT pg_cancel_backend({first});` or `pg_terminate_backend({first})`."
                ),
            )
        )
    return CheckReport("blocked", "Blocked queries", "findings", summary, findings)


# -- maintenance: wraparound, invalid indexes, foreign keys without an index ---------------------------


def check_wraparound(conn: Connection, ctx: CheckContext) -> CheckReport:
    row = conn.execute(
        text(
            "SELECT datname, age(datfrozenxid) AS xid_age, mxid_age(datminmxid) AS mxid_age"
            " FROM pg_database WHERE datname = current_database()"
        )
    ).one()
    worst = max(row.xid_age, row.mxid_age)
    pct = 100.0 * worst / WRAPAROUND_LIMIT
    summary = f"oldest transaction ID age {row.xid_age:,}, multixact age {row.mxid_age:,} ({pct:.1f}% of the limit)"
    warn = ctx.settings.wraparound_warn_pct
    if pct < warn:
        return CheckReport("wraparound", "Wraparound", "ok", summary)
    oldest = conn.execute(
        text(
            "SELECT format('%I.%I', n.nspname, c.relname) AS name, age(c.relfrozenxid) AS age"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'm', 't') ORDER BY age(c.relfrozenxid) DESC LIMIT 3"
        )
    ).all()
    tables = ", ".join(f"{t.name} ({t.age:,})" for t in oldest)
    finding = Finding(
        check="wraparound",
        object="database",
        severity="critical" if pct >= (warn + 100) / 2 else "warning",
        title=f"transaction ID wraparound: {pct:.0f}% of the limit used",
        detail=(
            f"Database age {row.xid_age:,} transactions, {row.mxid_age:,} multixacts, of {WRAPAROUND_LIMIT:,}; "
            f"warning at {warn}%. Oldest tables: {tables}."
        ),
        advice=(
            "Run `VACUUM (FREEZE, VERBOSE)` on the oldest tables, and find what holds the xmin horizon back: "
            "long transactions, idle-in-transaction sessions, abandoned replication slots, prepared transactions."
        ),
    )
    return CheckReport("wraparound", "Wraparound", "findings", summary, [finding])


def check_invalid_indexes(conn: Connection, ctx: CheckContext) -> CheckReport:
    rows = conn.execute(
        text(
            "SELECT format('%I.%I', n.nspname, c.relname) AS name, pg_get_indexdef(c.oid) AS definition,"
            " pg_relation_size(c.oid) AS bytes"
            " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE NOT i.indisvalid"
            " AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = i.indexrelid)"
            " ORDER BY 1"
        )
    ).all()
    findings = [
        Finding(
            check="invalid_index",
            object=r.name,
            severity="warning",
            title=f"invalid index {r.name}",
            detail=(
                f"`{safe_query_text(r.definition, 250)}` ({r.bytes:,} bytes): a failed `CREATE INDEX CONCURRENTLY` "
                "left it behind; it is maintained on every write but never used."
            ),
            advice=(
                f"`REINDEX INDEX CONCURRENTLY {r.name};`, or `DROP INDEX CONCURRENTLY {r.name};` and create it again."
            ),
            remind=False,
        )
        for r in rows
    ]
    summary = f"{len(rows)} invalid" if rows else "none"
    return CheckReport("invalid_index", "Invalid indexes", "findings" if rows else "ok", summary, findings)


DELETE_RULES = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}


def check_fk_without_index(conn: Connection, ctx: CheckContext) -> CheckReport:
    rows = conn.execute(
        text(
            "SELECT format('%I.%I', n.nspname, t.relname) AS child, con.conname, con.confdeltype AS on_delete,"
            " format('%I.%I', pn.nspname, p.relname) AS parent, greatest(t.reltuples, 0)::bigint AS child_rows,"
            " (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.ord)"
            "    FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)"
            "    JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum) AS columns"
            " FROM pg_constraint con"
            " JOIN pg_class t ON t.oid = con.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace"
            " JOIN pg_class p ON p.oid = con.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace"
            " WHERE con.contype = 'f' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND NOT EXISTS ("
            "   SELECT 1 FROM pg_index i WHERE i.indrelid = con.conrelid AND i.indisvalid AND i.indpred IS NULL"
            "   AND (i.indkey::int2[])[0:cardinality(con.conkey) - 1] @> con.conkey)"
            " ORDER BY t.reltuples DESC, 1, 2"
        )
    ).all()
    summary = f"{len(rows)} foreign keys without an index" if rows else "every foreign key has an index"
    if not rows:
        return CheckReport("fk_without_index", "Foreign keys without an index", "ok", summary)
    # One alert per stage, not one per key: a schema can lack dozens, and they are fixed together.
    lines = [
        f"• `CREATE INDEX CONCURRENTLY ON {r.child} ({r.columns});` for `{r.conname}` → {r.parent} "
        f"(ON DELETE {DELETE_RULES.get(r.on_delete, r.on_delete)}, ~{r.child_rows:,} rows)"
        for r in rows[:MAX_FK_LINES]
    ]
    if len(rows) > MAX_FK_LINES:
        lines.append(f"• … and {len(rows) - MAX_FK_LINES} more on smaller tables")
    finding = Finding(
        check="fk_without_index",
        object="database",
        severity="warning",
        title=f"{len(rows)} foreign key{'s' if len(rows) != 1 else ''} without an index",
        detail="Largest tables first:\n" + "\n".join(lines),
        advice=(
            "Every row deleted from the parent scans the child table on its key; without an index that is a "
            "sequential scan per row, which is what makes deletes slow. Create the indexes above, outside any "
            "transaction, largest tables first."
        ),
        remind=False,
    )
    return CheckReport("fk_without_index", "Foreign keys without an index", "findings", summary, [finding])


# The checks of each scheduled group; the slow-query check lives in bot/health/statements.py.
ACTIVITY_CHECKS: Sequence[CheckSpec] = (
    CheckSpec("connections", "Connections", check_connections),
    CheckSpec("long_running", "Long-running queries", check_long_running),
    CheckSpec("idle_in_transaction", "Idle in transaction", check_idle_in_transaction),
    CheckSpec("blocked", "Blocked queries", check_blocked),
)
MAINTENANCE_CHECKS: Sequence[CheckSpec] = (
    CheckSpec("wraparound", "Wraparound", check_wraparound),
    CheckSpec("invalid_index", "Invalid indexes", check_invalid_indexes),
)
FK_CHECKS: Sequence[CheckSpec] = (
    CheckSpec("fk_without_index", "Foreign keys without an index", check_fk_without_index),
)
