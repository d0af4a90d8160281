"""What keeps vacuum from cleaning up, and tables it has not cleaned.

The xmin horizon is the oldest transaction whose view of the data vacuum must keep: rows deleted
after it stay, bloating tables and indexes, and freezing cannot pass it. It is held by a session's
transaction or snapshot, a prepared transaction, a replication slot (a standby's
`hot_standby_feedback` through its slot, or a logical consumer's catalog needs) or a standby
without a slot. The check names the oldest holder, by kind, with the way to release it. Sessions in
other databases and prepared transactions of other databases do not hold this database back
(PostgreSQL 14+); slots and standbys hold back every database.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from bot.health.checks.base import (
    MAX_FINDINGS,
    NOT_OURS,
    OUR_SESSIONS,
    CheckContext,
    CheckReport,
    Finding,
    Needs,
    check,
    duration,
    ignored,
    safe_query_text,
    session_label,
    stamp,
)
from bot.pii import scrub

HORIZON_LABEL = "Vacuum horizon"
STALE_LABEL = "Tables not vacuumed"
MIN_DEAD_TUPLES = 50  # autovacuum_vacuum_threshold's default: fewer dead rows than this are noise
# A reloption is kept as written, and PostgreSQL reads every prefix of false, no and off (from "of"), and 0, as false.
AUTOVACUUM_OFF = "^autovacuum_enabled=(f|fa|fal|fals|false|n|no|of|off|0)$"

# One row per holder; `owned`: the xid it holds is its own transaction's (a session holding only a snapshot
# holds someone else's: the oldest transaction running when it was taken).
HOLDERS_SQL = """
SELECT 'backend' AS kind, pid::text AS ident, pid, usename, application_name, state, left(query, 1000) AS query,
       xact_start AS since, greatest(age(backend_xid), age(backend_xmin)) AS xid_age,
       (CASE WHEN coalesce(age(backend_xid) >= age(backend_xmin), true) THEN coalesce(backend_xid, backend_xmin)
             ELSE backend_xmin END)::text AS xid,
       coalesce(age(backend_xid) >= coalesce(age(backend_xmin), 0), false) AS owned,
       NULL::text AS slot_type, NULL::boolean AS active, NULL::text AS database, NULL::text AS client
  FROM pg_stat_activity
 WHERE (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL) AND pid <> pg_backend_pid()
   AND datname = current_database() AND coalesce(backend_type, 'client backend') = 'client backend'
   AND {not_ours}
UNION ALL
SELECT 'prepared', gid, NULL, owner, NULL, NULL, NULL, prepared, age(transaction), transaction::text, true,
       NULL, NULL, database, NULL
  FROM pg_prepared_xacts WHERE database = current_database()
UNION ALL
SELECT 'slot', slot_name, active_pid, NULL, NULL, NULL, NULL, {slot_since}, greatest(age(xmin), age(catalog_xmin)),
       coalesce(xmin, catalog_xmin)::text, true, slot_type, active, database,
       CASE WHEN xmin IS NULL THEN 'catalog' ELSE 'all' END
  FROM pg_replication_slots WHERE xmin IS NOT NULL OR catalog_xmin IS NOT NULL
UNION ALL
SELECT 'standby', application_name, pid, usename, application_name, state, NULL, NULL, age(backend_xmin),
       backend_xmin::text, true, NULL, NULL, NULL, host(client_addr)
  FROM pg_stat_replication WHERE backend_xmin IS NOT NULL
ORDER BY xid_age DESC, owned DESC
"""
KIND_RANK = {"prepared": 0, "backend": 1, "slot": 2, "standby": 3}


def _pick(rows: list[Any]) -> Any:
    """The holder of the horizon: the oldest xid, and among equals the one whose own transaction it is, then
    the longest held (sessions sharing one snapshot's xmin), so runs agree on which holder it is."""
    oldest = rows[0].xid_age
    tied = [r for r in rows if r.xid_age == oldest]
    return min(tied, key=lambda r: (not r.owned, KIND_RANK[r.kind], -(r.held_s or 0), r.ident))


def _describe(row: Any) -> tuple[str, str, str, str]:
    """(object, who in a few words, what holds it, what to do) for one holder."""
    if row.kind == "backend":
        held = (
            f"a session, {session_label(row)}, {row.state or 'state unknown'}, transaction open for "
            f"{duration(row.held_s)}: `{safe_query_text(row.query, 200)}`"
        )
        advice = (
            "Have the client commit or roll back (an idle-in-transaction session is a bug in its code); "
            f"`SELECT pg_terminate_backend({row.pid});` ends it now. `idle_in_transaction_session_timeout` and "
            "`statement_timeout` keep it from happening again."
        )
        return f"backend pid {row.pid} since {stamp(row.since)}", f"session pid {row.pid}", held, advice
    if row.kind == "prepared":
        gid = scrub(row.ident)[:100]
        held = (
            f"a prepared transaction `{gid}` (owner {scrub(row.usename or '?')}), prepared {duration(row.held_s)} ago"
        )
        advice = (
            "A two-phase commit its coordinator never finished. Ask the coordinator (or its logs) whether it "
            f"committed, then, as `{scrub(row.usename or 'its owner')}` or a superuser: "
            f"`COMMIT PREPARED '{gid}';` or `ROLLBACK PREPARED '{gid}';`. Unless the application uses two-phase "
            "commit, set `max_prepared_transactions = 0`."
        )
        return f"prepared {gid}", f"prepared transaction {gid}", held, advice
    if row.kind == "slot":
        name = scrub(row.ident)[:100]
        state = "active" if row.active else "inactive"
        scope = " (catalog tables only)" if row.client == "catalog" else ""
        drop = f"`SELECT pg_drop_replication_slot('{name}');`"
        if row.slot_type == "logical":
            held = f"logical replication slot `{name}` ({state}, database {row.database}){scope}"
            advice = (
                "Its consumer (a subscription, Debezium, a CDC tool) is behind or gone. Restart or fix the "
                f"consumer; if nothing uses the slot any more, {drop} (the consumer then needs a new snapshot)."
            )
        elif row.active:
            held = (
                f"physical replication slot `{name}` (active, walsender pid {row.pid}): a standby with "
                "`hot_standby_feedback`"
            )
            advice = (
                "A long query or transaction on that standby holds it. Cancel it there, or turn "
                "`hot_standby_feedback` off on the standby (its queries may then be cancelled by conflicts)."
            )
        else:
            held = f"physical replication slot `{name}` (inactive)"
            advice = f"Its standby is gone or disconnected: bring it back, or {drop} if it is not coming back."
        return f"slot {name} xmin {row.xid}", f"{row.slot_type} replication slot {name}", held, advice
    who = scrub(row.ident or "?")[:60]
    held = f"a standby `{who}` at {row.client or 'a local socket'} with `hot_standby_feedback`, without a slot"
    advice = (
        "A long query or transaction on that standby holds it. Cancel it there, or turn `hot_standby_feedback` "
        "off on the standby (its queries may then be cancelled by conflicts)."
    )
    return f"standby {who} xmin {row.xid}", f"standby {who}", held, advice


@check(
    "vacuum_horizon",
    HORIZON_LABEL,
    group="activity",
    clear_at_once=True,
    needs=Needs(
        "pg_read_all_stats",
        HORIZON_LABEL,
        "this role may not see how long other roles' sessions have held their transactions nor what they run: "
        "such a session holding the horizon is named by its pid and age in transactions only, once it has held "
        "the same xmin for the threshold.",
    ),
)
def check_vacuum_horizon(conn: Connection, ctx: CheckContext) -> CheckReport:
    limit_s = ctx.settings.checks.xmin_horizon_s
    slot_since = "CASE WHEN NOT active THEN inactive_since END" if ctx.server_version(conn) >= 170000 else "NULL"
    rows = conn.execute(
        text(
            "SELECT *, extract(epoch FROM now() - since) AS held_s FROM ("
            + HOLDERS_SQL.format(slot_since=f"{slot_since}::timestamptz", not_ours=NOT_OURS)
            + ") holders"
        ),
        {"ours": OUR_SESSIONS},
    ).all()
    # Without pg_read_all_stats, other roles' sessions show their xmin but not since when nor what they run:
    # said once, for this check and the session checks (`needs` above, bot/health/checks/base.py).
    if not rows:
        return CheckReport("vacuum_horizon", HORIZON_LABEL, "ok", "nothing holds it back")
    holder = _pick(rows)
    others = len(rows) - 1
    also = f" {others} other holder{'s are' if others != 1 else ' is'} younger." if others else ""
    if holder.kind == "backend" and holder.since is None:
        # Another role's session: its xmin is visible, its age and query are not. Like a slot, it must be seen
        # holding the same xmin for the threshold.
        summary = f"pid {holder.pid} holds it, {holder.xid_age:,} transactions old (its age is not visible)"
        finding = Finding(
            check="vacuum_horizon",
            object=f"backend pid {holder.pid} xmin {holder.xid}",
            severity="warning",
            title=f"vacuum held back by session pid {holder.pid} (another role's)",
            detail=(
                f"The oldest holder of the xmin horizon is session pid {holder.pid} of another role, "
                f"{holder.xid_age:,} transactions old; this role may not see since when or what it runs. It keeps "
                f"dead rows from being removed and stops freezing.{also} Threshold: {duration(limit_s)}."
            ),
            advice=(
                "Find it as a member of pg_read_all_stats: `SELECT pid, usename, application_name, state, xact_start, "
                f"query FROM pg_stat_activity WHERE pid = {holder.pid};`, then have its client commit or roll back, "
                f"or `SELECT pg_terminate_backend({holder.pid});`."
            ),
            pending_s=limit_s,
        )
        return CheckReport("vacuum_horizon", HORIZON_LABEL, "findings", summary, [finding])
    obj, who, held, advice = _describe(holder)
    age = f"{duration(holder.held_s)}, " if holder.held_s is not None else ""
    summary = f"held by {holder.kind} ({age}{holder.xid_age:,} transactions)"
    known = holder.held_s is not None
    if known and holder.held_s < limit_s:
        return CheckReport("vacuum_horizon", HORIZON_LABEL, "ok", summary)
    finding = Finding(
        check="vacuum_horizon",
        object=obj,
        severity="warning",
        title=f"vacuum held back by {who}",
        detail=(
            f"The oldest holder of the xmin horizon is {held}. It keeps {holder.xid_age:,} transactions' worth of "
            f"dead rows from being removed and stops freezing.{also} Threshold: {duration(limit_s)}."
        ),
        advice=advice,
        # Slots and standbys do not say since when they hold this xmin: it must be seen that long.
        pending_s=0 if known else limit_s,
    )
    return CheckReport("vacuum_horizon", HORIZON_LABEL, "findings", summary, [finding])


@check("stale_vacuum", STALE_LABEL, group="maintenance", clear_at_once=True)
def check_stale_vacuum(conn: Connection, ctx: CheckContext) -> CheckReport:
    t = ctx.settings.checks
    rows = conn.execute(
        text(
            "SELECT format('%I.%I', s.schemaname, s.relname) AS name, s.n_live_tup, s.n_dead_tup,"
            " greatest(s.last_vacuum, s.last_autovacuum) AS vacuumed,"
            " greatest(s.last_analyze, s.last_autoanalyze) AS analyzed,"
            " EXISTS (SELECT 1 FROM unnest(c.reloptions) AS o WHERE o ~* :autovacuum_off) AS autovacuum_off,"
            " count(*) OVER () AS total"
            " FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid"
            " WHERE s.n_dead_tup >= :min_dead AND s.n_dead_tup * 100.0 > :pct * (s.n_live_tup + s.n_dead_tup)"
            " AND coalesce(greatest(s.last_vacuum, s.last_autovacuum), '-infinity')"
            "     < now() - make_interval(hours => :hours)"
            " AND " + ignored("s.schemaname", "s.relname") + " ORDER BY s.n_dead_tup DESC LIMIT :max_findings"
        ),
        {
            "min_dead": MIN_DEAD_TUPLES,
            "pct": t.dead_tuples_pct,
            "hours": t.vacuum_stale_hours,
            "max_findings": MAX_FINDINGS,
            "autovacuum_off": AUTOVACUUM_OFF,
            **ctx.ignore,
        },
    ).all()
    total = rows[0].total if rows else 0
    since = duration(t.vacuum_stale_hours * 3600) if t.vacuum_stale_hours else "ever"
    summary = (
        f"{total} table{'s' if total != 1 else ''} over {t.dead_tuples_pct}% dead rows, not vacuumed in {since}"
        if total
        else f"no table over {t.dead_tuples_pct}% dead rows unvacuumed"
    )
    findings = []
    for r in rows:
        pct = 100.0 * r.n_dead_tup / max(r.n_live_tup + r.n_dead_tup, 1)
        vacuumed = f"last vacuumed {r.vacuumed:%Y-%m-%d %H:%M UTC}" if r.vacuumed else "never vacuumed"
        analyzed = f"last analysed {r.analyzed:%Y-%m-%d %H:%M UTC}" if r.analyzed else "never analysed"
        cause = (
            "Autovacuum is turned off for this table (`autovacuum_enabled = false`): turn it back on with "
            f"`ALTER TABLE {r.name} RESET (autovacuum_enabled);`. "
            if r.autovacuum_off
            else "Autovacuum has not got to it: check that it is on, not held back (the vacuum horizon check), "
            "and not cancelled by lock conflicts (`log_autovacuum_min_duration`). "
        )
        findings.append(
            Finding(
                check="stale_vacuum",
                object=r.name,
                severity="warning",
                title=f"{r.name}: {pct:.0f}% dead rows, {vacuumed}",
                detail=(
                    f"{r.n_dead_tup:,} dead and {r.n_live_tup:,} live rows; {vacuumed}, {analyzed}. Dead rows "
                    "bloat the table and its indexes and slow every scan."
                ),
                advice=cause + f"Now: `VACUUM (ANALYZE, VERBOSE) {r.name};` (it does not block reads or writes).",
            )
        )
    return CheckReport("stale_vacuum", STALE_LABEL, "findings" if findings else "ok", summary, findings)
