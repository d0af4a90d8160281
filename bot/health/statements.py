"""Slow queries from pg_stat_statements, measured between two snapshots.

The extension's counters are cumulative since its last reset, so its `mean_exec_time`
keeps an old slow query slow forever and dilutes a new one. Each scheduled run instead
stores a snapshot (calls and total time per query) in the bot database and compares it with
the previous one: a query is slow when its calls and time *in that interval* cross the
threshold. A reset (`pg_stat_statements_info.stats_reset`) or a counter that went down
(an entry evicted or reset on its own) counts from zero, which is what happened since.
Query text is read only for the queries that alert or are shown. The snapshots are kept in the bot
database by bot/health/statement_store.py.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, bindparam, text
from sqlalchemy.exc import DBAPIError

from bot.health.checks import CheckContext, CheckReport, Finding, duration, safe_query_text
from bot.slacktext.words import plural

log = logging.getLogger(__name__)

# SQLSTATEs meaning "pg_stat_statements is not there": undefined_table, undefined_function
# (CREATE EXTENSION was never run here) and object_not_in_prerequisite_state (not preloaded).
# An extension older than 1.9 has neither pg_stat_statements_info nor `toplevel` (42P01, 42703):
# `outdated` once the catalog confirms the version.
UNAVAILABLE_SQLSTATES = {"42P01": "missing", "42883": "missing", "42703": "missing", "55000": "not_preloaded"}
UNAVAILABLE_TITLES = {"missing": "not installed", "not_preloaded": "not preloaded", "outdated": "too old"}
FIRST_VERSION = (1, 9)  # pg_stat_statements_info (resets) and `toplevel`
TEXT_WORK_MEM = "32MB"
KEEP_QUERIES = 50  # per interval, by total time: what /mcp slow-queries can show

_THIS_DB = "(SELECT oid FROM pg_database WHERE datname = current_database())"


@dataclass(frozen=True)
class Snapshot:
    taken_at: datetime
    stats_reset: datetime | None
    counters: dict[str, tuple[int, float]]
    # False when the role lacks pg_read_all_stats: other roles' entries have no queryid and are left out.
    sees_all: bool = True


@dataclass(frozen=True)
class QueryInterval:
    queryid: int
    calls: int
    total_ms: float

    @property
    def mean_ms(self) -> float:
        return self.total_ms / self.calls if self.calls else 0.0


@dataclass(frozen=True)
class Interval:
    start: datetime
    end: datetime
    reset: bool
    queries: list[QueryInterval]  # busiest first

    @property
    def seconds(self) -> float:
        return max((self.end - self.start).total_seconds(), 0.0)


@dataclass(frozen=True)
class Stored:
    snapshot: Snapshot
    interval: Interval | None
    texts: dict[int, str]


class StatementsUnavailable(Exception):
    def __init__(self, kind: str, version: str | None = None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.version = version


def unavailable_advice(kind: str, version: str | None = None) -> str:
    if kind == "not_preloaded":
        return (
            "pg_stat_statements is installed but not loaded: add it to `shared_preload_libraries` "
            "(on RDS: the DB parameter group), restart the database, then it works at once."
        )
    if kind == "outdated":
        return (
            f"The extension here is version {version or 'older than 1.9'}; the check needs 1.9 or newer "
            "(pg_stat_statements_info, to detect resets). Run `ALTER EXTENSION pg_stat_statements UPDATE;` "
            "in this database: it keeps the statistics and takes effect at once."
        )
    return (
        "Run `CREATE EXTENSION pg_stat_statements;` in this database (it also needs `pg_stat_statements` in "
        "`shared_preload_libraries`, which on RDS is the default)."
    )


def _installed_version(conn: Connection) -> str | None:
    return conn.execute(
        text("SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements'")
    ).scalar_one_or_none()


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return ()


def _unavailable(conn: Connection, exc: DBAPIError) -> StatementsUnavailable | None:
    """What a failed read of the extension means, or None when it is another error."""
    kind = UNAVAILABLE_SQLSTATES.get(getattr(exc.orig, "sqlstate", None) or "")
    if kind is None or exc.connection_invalidated:
        return None
    if kind == "missing":
        version = _installed_version(conn)
        if version is not None and _version_tuple(version) < FIRST_VERSION:
            return StatementsUnavailable("outdated", version)
        if version is not None and getattr(exc.orig, "sqlstate", None) == "42703":
            return None  # a current extension without the column: not an install problem
    return StatementsUnavailable(kind)


def take_snapshot(conn: Connection) -> Snapshot:
    """This database's top-level statement counters; raises StatementsUnavailable by SQLSTATE."""
    try:
        with conn.begin_nested():
            info = conn.execute(
                text(
                    "SELECT now() AS now, stats_reset,"
                    " pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS sees_all"
                    " FROM pg_stat_statements_info"
                )
            ).one()
            rows = conn.execute(
                text(
                    # One row per (userid, queryid) once dbid and toplevel are fixed; no text is read.
                    "SELECT userid, queryid, calls, total_exec_time AS total_ms FROM pg_stat_statements(false)"
                    f" WHERE dbid = {_THIS_DB} AND toplevel AND queryid IS NOT NULL"
                )
            ).all()
    except DBAPIError as exc:
        unavailable = _unavailable(conn, exc)
        if unavailable is None:
            raise
        raise unavailable from None
    counters = {f"{r.userid}:{r.queryid}": (int(r.calls), float(r.total_ms)) for r in rows}
    return Snapshot(taken_at=info.now, stats_reset=info.stats_reset, counters=counters, sees_all=bool(info.sees_all))


def diff(previous: Snapshot, current: Snapshot) -> Interval:
    """What ran between two snapshots, per queryid; a reset or a counter that went down counts from zero."""
    reset = (
        previous.stats_reset is not None
        and current.stats_reset is not None
        and current.stats_reset != previous.stats_reset
    )
    calls: dict[int, int] = defaultdict(int)
    total: dict[int, float] = defaultdict(float)
    for key, (now_calls, now_total) in current.counters.items():
        base_calls, base_total = (0, 0.0) if reset else previous.counters.get(key, (0, 0.0))
        if now_calls < base_calls or now_total < base_total - 0.01:  # stored totals are rounded to 1 µs
            base_calls, base_total = 0, 0.0
        delta = now_calls - base_calls
        if delta <= 0:
            continue
        queryid = int(key.rsplit(":", 1)[1])
        calls[queryid] += delta
        total[queryid] += max(now_total - base_total, 0.0)
    queries = sorted(
        (QueryInterval(q, calls[q], total[q]) for q in calls), key=lambda q: (q.total_ms, q.calls), reverse=True
    )
    return Interval(start=previous.taken_at, end=current.taken_at, reset=reset, queries=queries)


def slow(interval: Interval, *, threshold_ms: float, min_calls: int) -> list[QueryInterval]:
    return [q for q in interval.queries if q.calls >= min_calls and q.mean_ms > threshold_ms]


def undecided(interval: Interval, *, threshold_ms: float, min_calls: int) -> list[QueryInterval]:
    """Queries that ran, too few times to be measured, and still slow in those calls: no evidence either way."""
    return [q for q in interval.queries if 0 < q.calls < min_calls and q.mean_ms > threshold_ms]


def unavailable(conn: Connection) -> StatementsUnavailable | None:
    """None when pg_stat_statements can be read here, else why not."""
    try:
        with conn.begin_nested():
            conn.execute(text("SELECT stats_reset FROM pg_stat_statements_info")).first()
    except DBAPIError as exc:
        found = _unavailable(conn, exc)
        if found is None:
            raise
        return found
    return None


def unavailable_kind(conn: Connection) -> str | None:
    """None when pg_stat_statements can be read here, else why not (`missing`, `not_preloaded`, `outdated`)."""
    found = unavailable(conn)
    return found.kind if found else None


def query_texts(conn: Connection, queryids: list[int]) -> dict[int, str]:
    """Normalised text (literals are `$n` already), made safe and short, for these queries only."""
    if not queryids:
        return {}
    # The extension returns every entry's text and filters after: with the default work_mem a
    # text file of a few MB spills to disk. Local to this short read-only transaction.
    conn.execute(text("SELECT set_config('work_mem', :wm, true)"), {"wm": TEXT_WORK_MEM})
    rows = conn.execute(
        text(
            "SELECT DISTINCT ON (queryid) queryid, left(query, 2000) AS query FROM pg_stat_statements(true)"
            f" WHERE dbid = {_THIS_DB} AND toplevel AND queryid IN :ids ORDER BY queryid"
        ).bindparams(bindparam("ids", expanding=True)),
        {"ids": queryids},
    )
    return {int(r.queryid): safe_query_text(r.query) for r in rows}


# -- the check ---------------------------------------------------------------------------------


@dataclass
class StatementsResult:
    reports: list[CheckReport]
    snapshot: Snapshot | None  # to store, when the run records
    interval: Interval | None
    texts: dict[int, str]  # of the queries that alert now


def visibility_finding() -> Finding:
    return Finding(
        check="pg_stat_statements",
        object="visibility",
        severity="info",
        title="slow-query check sees only its own role's statements (no pg_read_all_stats)",
        detail=(
            "The stage's database role is not a member of pg_read_all_stats (or pg_monitor), so "
            "pg_stat_statements hides other roles' statements (their queryid is NULL): the application's "
            "slow queries are not measured."
        ),
        advice=(
            "`GRANT pg_read_all_stats TO <the role of this stage's DATABASE_URL>;` (or `GRANT pg_monitor ...`, "
            "which also shows the activity checks other sessions' queries); on RDS, as the master user. "
            "It resolves at the next slow-query check."
        ),
        remind=False,
    )


BASELINE = "slow queries are measured from the next"
PARTIAL = " (only this role's statements are visible)"


def check_slow_queries(
    conn: Connection, ctx: CheckContext, previous: Stored | None, *, baseline: str = BASELINE
) -> StatementsResult:
    """Compare this database's counters with the `previous` snapshot; findings for queries slow in between.

    `baseline` ends the summary of a first snapshot: where the next measurement comes from.
    """
    s = ctx.settings
    try:
        current = take_snapshot(conn)
    except StatementsUnavailable as exc:
        version = f" ({exc.version})" if exc.version else ""
        finding = Finding(
            check="pg_stat_statements",
            object="extension",
            severity="info",
            title=f"slow-query check unavailable: pg_stat_statements is {UNAVAILABLE_TITLES[exc.kind]}{version}",
            detail="The other health checks keep running; slow queries are not measured until this is fixed.",
            advice=unavailable_advice(exc.kind, exc.version),
            remind=False,
        )
        report = CheckReport(
            "slow_queries", "Slow queries", "unavailable", finding.title, [finding], covers=("pg_stat_statements",)
        )
        return StatementsResult([report], None, None, {})
    partial = [] if current.sees_all else [visibility_finding()]
    if previous is None:
        summary = f"first snapshot taken ({len(current.counters)} statements); {baseline}"
        report = CheckReport(
            "slow_queries",
            "Slow queries",
            "findings" if partial else "ok",
            summary + ("" if current.sees_all else PARTIAL),
            partial,
            covers=("pg_stat_statements",),
        )
        return StatementsResult([report], current, None, {})
    interval = diff(previous.snapshot, current)
    offenders = slow(interval, threshold_ms=s.slow_query_ms, min_calls=s.slow_query_min_calls)
    texts = {q.queryid: previous.texts[q.queryid] for q in offenders if q.queryid in previous.texts}
    texts.update(query_texts(conn, [q.queryid for q in offenders if q.queryid not in texts]))
    findings = [
        Finding(
            check="slow_queries",
            object=f"queryid {q.queryid}",
            severity="critical" if q.mean_ms >= 10 * s.slow_query_ms else "warning",
            title=f"slow query: mean {q.mean_ms:,.0f} ms over {q.calls:,} call{'s' if q.calls != 1 else ''}",
            detail=(
                f"`{texts.get(q.queryid, '(query text no longer available)')}`\n"
                f"queryid {q.queryid}: {q.total_ms:,.0f} ms in total in the last {duration(interval.seconds)} "
                f"(threshold: mean over {s.slow_query_ms:,} ms with at least {plural(s.slow_query_min_calls, 'call')})."
            ),
            advice=(
                f"Explain (below, or `/mcp explain {q.queryid} --stage {ctx.stage}`) shows its generic plan without "
                "running it: sequential scans of large tables, the costliest step, missing indexes. With typical "
                "parameters, `EXPLAIN (ANALYZE, BUFFERS)` in a transaction you roll back (or on a replica) shows "
                f"where the time goes. `/mcp slow-queries --stage {ctx.stage}` shows the busiest queries."
            ),
        )
        for q in offenders
    ]
    # A query that alerted and ran only a few (still slow) times since is not evidence that it got fast:
    # its alert neither counts this run as seen nor as clear.
    holds = tuple(
        ("slow_queries", f"queryid {q.queryid}")
        for q in undecided(interval, threshold_ms=s.slow_query_ms, min_calls=s.slow_query_min_calls)
    )
    ran = sum(q.calls for q in interval.queries)
    summary = (
        f"{len(interval.queries)} statements ran {ran:,} times in the last {duration(interval.seconds)}; "
        + (f"{len(offenders)} slow" if offenders else "none slow")
        + (" (statistics were reset in between)" if interval.reset else "")
        + ("" if current.sees_all else PARTIAL)
    )
    findings += partial
    report = CheckReport(
        "slow_queries",
        "Slow queries",
        "findings" if findings else "ok",
        summary,
        findings,
        covers=("slow_queries", "pg_stat_statements"),
        holds=holds,
    )
    return StatementsResult([report], current, interval, texts)
