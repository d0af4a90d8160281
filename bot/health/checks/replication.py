"""Replication: slots nobody consumes (they keep WAL until the disk fills) and standbys that lag.

A slot's `inactive_since` exists from PostgreSQL 17; before, an inactive slot's alert waits until
it has been seen inactive for REPLICATION_SLOT_INACTIVE_SECONDS (the alert lifecycle's pending
time). Lag is read on the primary from `pg_stat_replication` (it needs pg_read_all_stats to see
other roles' walsenders); when the stage itself is a standby, its own replay delay is checked.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

from bot.health.checks.base import (
    MB,
    CheckContext,
    CheckReport,
    Finding,
    check,
    duration,
    size,
    unavailable_report,
)
from bot.pii import scrub

SLOTS_LABEL = "Replication slots"
LAG_LABEL = "Replication lag"


CURRENT_LSN = "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END"


@check("replication_slots", SLOTS_LABEL, group="activity", clear_at_once=True)
def check_replication_slots(conn: Connection, ctx: CheckContext) -> CheckReport:
    t = ctx.settings.checks
    v17 = ctx.server_version(conn) >= 170000
    rows = conn.execute(
        text(
            "SELECT slot_name, slot_type, database, active, wal_status,"
            f" pg_wal_lsn_diff({CURRENT_LSN}, restart_lsn) AS retained,"
            + (" extract(epoch FROM now() - inactive_since) AS inactive_s" if v17 else " NULL::float AS inactive_s")
            + " FROM pg_replication_slots ORDER BY slot_name"
        )
    ).all()
    limit_bytes = t.slot_retained_mb * MB
    findings = []
    for r in rows:
        retained = float(r.retained or 0)
        heavy = retained >= limit_bytes
        lost = r.wal_status in ("unreserved", "lost")
        if r.active and not heavy and not lost:
            continue
        if not r.active and r.inactive_s is not None and r.inactive_s < t.slot_inactive_s and not heavy and not lost:
            continue
        name = scrub(r.slot_name)[:100]
        where = f", database {r.database}" if r.database else ""
        state = "active" if r.active else "inactive"
        since = f" for {duration(r.inactive_s)}" if r.inactive_s is not None else ""
        consumer = "its standby" if r.slot_type == "physical" else "its logical consumer (subscription, CDC tool)"
        findings.append(
            Finding(
                check="replication_slots",
                object=f"slot {name}",
                severity="critical" if lost or retained >= 10 * limit_bytes else "warning",
                title=(
                    f"replication slot {name} ({r.slot_type}) lost WAL it needs"
                    if lost
                    else f"replication slot {name} ({r.slot_type}) keeps over {size(limit_bytes)} of WAL"
                    if heavy
                    else f"inactive replication slot {name} ({r.slot_type})"
                ),
                detail=(
                    f"Slot `{name}` ({r.slot_type}{where}) is {state}{since} and keeps {size(retained)} of WAL"
                    + (f" (wal_status {r.wal_status}: WAL it needs is already gone or going)" if lost else "")
                    + f". Thresholds: inactive over {duration(t.slot_inactive_s)} or over {size(limit_bytes)} kept."
                    " WAL kept by a slot is never recycled: the disk fills, and the slot holds back vacuum if it "
                    "has an xmin."
                ),
                advice=(
                    f"Bring {consumer} back, or if it is gone for good: `SELECT pg_drop_replication_slot('{name}');`. "
                    "`max_slot_wal_keep_size` caps what a slot may keep."
                ),
                # Before PostgreSQL 17 nothing says since when a slot is inactive: it must be seen that long.
                pending_s=t.slot_inactive_s if not r.active and r.inactive_s is None and not heavy and not lost else 0,
            )
        )
    inactive = sum(not r.active for r in rows)
    summary = (
        f"{len(rows)} slot{'s' if len(rows) != 1 else ''}, {inactive} inactive, "
        f"{size(max((float(r.retained or 0) for r in rows), default=0))} the most WAL kept"
        if rows
        else "no replication slots"
    )
    return CheckReport("replication_slots", SLOTS_LABEL, "findings" if findings else "ok", summary, findings)


@check("replication_lag", LAG_LABEL, group="activity")
def check_replication_lag(conn: Connection, ctx: CheckContext) -> CheckReport:
    limit_s = ctx.settings.checks.replication_lag_s
    if conn.execute(text("SELECT pg_is_in_recovery()")).scalar_one():
        return _standby_lag(conn, ctx)
    rows = conn.execute(
        text(
            "SELECT pid, application_name, host(client_addr) AS client, state, sync_state,"
            " extract(epoch FROM replay_lag) AS replay_s, extract(epoch FROM write_lag) AS write_s,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) AS behind"
            " FROM pg_stat_replication ORDER BY application_name, pid"
        )
    ).all()
    if not rows:
        return CheckReport("replication_lag", LAG_LABEL, "ok", "no standby is connected")
    if all(r.state is None for r in rows):  # other roles' walsenders, their details hidden
        return unavailable_report(
            "replication_lag",
            LAG_LABEL,
            "pg_read_all_stats",
            (f"{len(rows)} standby connections exist" if len(rows) != 1 else "1 standby connection exists")
            + ", but this role may not see their positions and lag.",
            "`GRANT pg_read_all_stats TO <the role of this stage's DATABASE_URL>;` (or `pg_monitor`).",
        )
    findings = []
    for r in rows:
        lag = max(float(r.replay_s or 0), float(r.write_s or 0))
        if lag <= limit_s:
            continue
        who = scrub(r.application_name or f"pid {r.pid}")[:60]
        findings.append(
            Finding(
                check="replication_lag",
                object=f"standby {who} at {r.client or 'local'}",
                severity="critical" if lag >= 10 * limit_s else "warning",
                title=f"standby {who} lags {duration(lag)} behind",
                detail=(
                    f"Standby `{who}` at {r.client or 'a local socket'} ({r.state}, {r.sync_state}): replay "
                    f"{duration(float(r.replay_s or 0))} behind, {size(float(r.behind or 0))} of WAL not replayed yet. "
                    f"Threshold: {duration(limit_s)}. Reads there see old data"
                    + (", and every commit here waits for it." if r.sync_state in ("sync", "quorum") else ".")
                ),
                advice=(
                    "Look at the standby: I/O or CPU saturated, a long query conflicting with replay "
                    "(`max_standby_streaming_delay`), the network between the two. On RDS: the replica's "
                    "ReplicaLag metric and instance size."
                ),
            )
        )
    worst = max(max(float(r.replay_s or 0), float(r.write_s or 0)) for r in rows)
    summary = f"{len(rows)} standby{'s' if len(rows) != 1 else ''}, the most behind by {duration(worst)}"
    return CheckReport("replication_lag", LAG_LABEL, "findings" if findings else "ok", summary, findings)


def _standby_lag(conn: Connection, ctx: CheckContext) -> CheckReport:
    """The stage is itself a standby: how long since the last transaction it replayed, if WAL is waiting."""
    limit_s = ctx.settings.checks.replication_lag_s
    row = conn.execute(
        text(
            "SELECT CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
            " ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END AS lag_s"
        )
    ).one()
    lag = float(row.lag_s or 0)
    summary = f"this stage is a standby, {duration(lag)} behind its primary"
    if lag <= limit_s:
        return CheckReport("replication_lag", LAG_LABEL, "ok", summary)
    finding = Finding(
        check="replication_lag",
        object="this standby",
        severity="critical" if lag >= 10 * limit_s else "warning",
        title=f"this stage (a standby) lags {duration(lag)} behind its primary",
        detail=f"WAL is waiting to be replayed; the last replayed transaction is {duration(lag)} old.",
        advice="Look for long queries here conflicting with replay, and at the I/O of this server.",
    )
    return CheckReport("replication_lag", LAG_LABEL, "findings", summary, [finding])
