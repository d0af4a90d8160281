"""Sequences and identity columns close to the largest value they can hand out.

What runs out first is the smaller of the sequence's own maximum and the column's type: a `serial`
(integer) column stops at 2,147,483,647 whatever its sequence could still give. The rate of use
comes from samples the bot keeps of each alerting sequence (bot/health/history.py). Reading a
sequence's position needs SELECT or USAGE on it; sequences the role cannot read are counted
and reported once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, text

from bot.health.checks.base import (
    CheckContext,
    CheckReport,
    Finding,
    check,
    duration,
    ignored,
    unavailable_finding,
)
from bot.health.history import Sample

LABEL = "Sequences"
TYPE_MAX = {"smallint": 2**15 - 1, "integer": 2**31 - 1, "bigint": 2**63 - 1}
KIND = "sequence"

SEQUENCES_SQL = """
SELECT format('%I.%I', n.nspname, c.relname) AS name, s.seqmin, s.seqmax, s.seqincrement,
       format_type(s.seqtypid, NULL) AS seq_type, has_sequence_privilege(c.oid, 'SELECT,USAGE') AS visible,
       -- (an unlogged sequence has no position on a standby: PostgreSQL before 17 raises an error for it)
       CASE WHEN has_sequence_privilege(c.oid, 'SELECT,USAGE') AND (c.relpersistence = 'p' OR NOT pg_is_in_recovery())
            THEN pg_sequence_last_value(c.oid) END AS last_value,
       col.table_name, col.column_name, col.col_type, col.identity
  FROM pg_sequence s
  JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN LATERAL (
       -- The column it feeds: the one that owns it (serial, identity, OWNED BY), or any whose DEFAULT calls
       -- it (a sequence of another schema, or shared by several tables); the narrowest type runs out first.
       SELECT format('%I.%I', tn.nspname, t.relname) AS table_name, quote_ident(a.attname) AS column_name,
              format_type(coalesce(nullif(ty.typbasetype, 0), a.atttypid), NULL) AS col_type,
              a.attidentity <> '' AS identity, tn.nspname AS table_schema, t.relname AS table_relname
         FROM (SELECT d.refobjid AS relid, d.refobjsubid AS attnum, 0 AS how FROM pg_depend d
                WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.refclassid = 'pg_class'::regclass
                  AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0
               UNION ALL
               SELECT ad.adrelid, ad.adnum, 1 FROM pg_depend d JOIN pg_attrdef ad ON ad.oid = d.objid
                WHERE d.classid = 'pg_attrdef'::regclass AND d.refclassid = 'pg_class'::regclass
                  AND d.refobjid = c.oid) feeds
         JOIN pg_class t ON t.oid = feeds.relid JOIN pg_namespace tn ON tn.oid = t.relnamespace
         JOIN pg_attribute a ON a.attrelid = feeds.relid AND a.attnum = feeds.attnum AND NOT a.attisdropped
         JOIN pg_type ty ON ty.oid = a.atttypid
        ORDER BY CASE coalesce(nullif(ty.typbasetype, 0), a.atttypid)
                 WHEN 'smallint'::regtype THEN 1 WHEN 'integer'::regtype THEN 2 ELSE 3 END, feeds.how
        LIMIT 1) col ON true
 WHERE NOT s.seqcycle AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND c.relpersistence <> 't'
   AND {keep_seq} AND (col.table_name IS NULL OR {keep_table})
 ORDER BY 1
"""


def _limit(r: Any) -> tuple[int, str]:
    """The value it stops at, and what sets it (the column's type or the sequence)."""
    column_max = TYPE_MAX.get(r.col_type or "", 2**63 - 1)
    if r.seqincrement < 0:  # a descending sequence runs out at its minimum
        column_min = -column_max - 1
        if column_min > r.seqmin:
            return column_min, f"the column's type {r.col_type}"
        type_min = -TYPE_MAX.get(r.seq_type, 2**63 - 1) - 1
        return r.seqmin, f"the sequence's type {r.seq_type}" if r.seqmin == type_min else "its MINVALUE"
    if column_max < r.seqmax:
        return column_max, f"the column's type {r.col_type}"
    return r.seqmax, f"the sequence's type {r.seq_type}" if r.seqmax == TYPE_MAX.get(r.seq_type) else "its MAXVALUE"


def _fix(r: Any, limited_by: str) -> str:
    steps = []
    if r.col_type in ("smallint", "integer"):
        steps.append(
            f"`ALTER TABLE {r.table_name} ALTER COLUMN {r.column_name} TYPE bigint;` (rewrites the table under an "
            "ACCESS EXCLUSIVE lock: on a large table, add a bigint column, backfill it in batches and swap instead)"
        )
    if r.seq_type != "bigint" and not (r.identity and steps):
        steps.append(f"`ALTER SEQUENCE {r.name} AS bigint;` (instant)")
    if limited_by in ("its MAXVALUE", "its MINVALUE"):
        steps.append(f"`ALTER SEQUENCE {r.name} NO {limited_by[4:]};`")
    referencing = (
        " Columns of other tables holding these values (foreign keys) need the same type." if r.table_name else ""
    )
    return (
        f"When it runs out, every insert fails (`reached {'minimum' if r.seqincrement < 0 else 'maximum'} value of "
        "sequence`). Widen it now: "
        + "; then ".join(steps or [f"`ALTER SEQUENCE {r.name} NO {'MINVALUE' if r.seqincrement < 0 else 'MAXVALUE'};`"])
        + "."
        + referencing
    )


def _rate(ctx: CheckContext, names: list[str], now: dict[str, int]) -> dict[str, float]:
    """Values used per day, from the oldest kept sample within the growth window."""
    window = timedelta(days=ctx.settings.checks.growth_window_days)
    rates = {}
    for name, point in ctx.past.oldest(KIND, names, within=window).items():
        days = (datetime.now(UTC) - point.taken_at).total_seconds() / 86_400
        if days >= 1 / 24:
            rates[name] = abs(now[name] - point.value) / days
    return rates


@check("sequences", LABEL, group="maintenance", clear_at_once=True)
def check_sequences(conn: Connection, ctx: CheckContext) -> CheckReport:
    t = ctx.settings.checks
    rows = conn.execute(
        text(
            SEQUENCES_SQL.format(
                keep_seq=ignored("n.nspname", "c.relname"), keep_table=ignored("col.table_schema", "col.table_relname")
            )
        ),
        ctx.ignore,
    ).all()
    hidden = [r.name for r in rows if not r.visible]
    alerting = []
    worst = 0.0
    for r in rows:
        if r.last_value is None:
            continue
        limit, limited_by = _limit(r)
        span = abs(limit - r.seqmin) if r.seqincrement > 0 else abs(r.seqmax - limit)
        used = abs(r.last_value - (r.seqmin if r.seqincrement > 0 else r.seqmax))
        pct = 100.0 * used / max(span, 1)
        worst = max(worst, pct)
        if pct >= t.sequence_warn_pct:
            alerting.append((r, pct, limit, limited_by))
    positions = {r.name: int(r.last_value) for r, *_ in alerting}
    rates = _rate(ctx, list(positions), positions)
    findings = []
    for r, pct, limit, limited_by in alerting:
        left = abs(limit - r.last_value) // abs(r.seqincrement)
        what = (
            f"{r.table_name}.{r.column_name} ({r.col_type}{', identity' if r.identity else ''})"
            if r.table_name
            else r.name
        )
        rate = rates.get(r.name)
        pace = (
            f"about {rate:,.0f} values a day, so about {duration(left / rate * 86_400)} left"
            if rate
            else "the rate of use is measured from the next runs"
            if rate is None
            else "no values used since the first sample"
        )
        findings.append(
            Finding(
                check="sequences",
                object=r.name,
                severity="critical" if pct >= t.sequence_critical_pct else "warning",
                title=f"{what} has used {pct:.0f}% of its values",
                detail=(
                    f"Sequence `{r.name}` is at {r.last_value:,} of {limit:,} (the limit set by {limited_by}): "
                    f"{left:,} values left; {pace}. Thresholds: warning {t.sequence_warn_pct}%, critical "
                    f"{t.sequence_critical_pct}%."
                ),
                advice=_fix(r, limited_by),
            )
        )
    readable = len(rows) - len(hidden)
    summary = f"{readable} sequences, the fullest at {worst:.0f}%" if readable else "no sequences"
    if hidden:
        summary += f"; {len(hidden)} not readable by this role"
        listed = ", ".join(hidden[:5]) + (f" and {len(hidden) - 5} more" if len(hidden) > 5 else "")
        findings.append(
            unavailable_finding(
                "sequences",
                LABEL,
                "SELECT on sequences",
                f"This role may not read the position of {len(hidden)} sequence{'s' if len(hidden) != 1 else ''} "
                f"({listed}), so they are not checked.",
                "`GRANT SELECT ON ALL SEQUENCES IN SCHEMA <schema> TO <the role of this stage's DATABASE_URL>;` "
                "(and `ALTER DEFAULT PRIVILEGES ... GRANT SELECT ON SEQUENCES` for new ones).",
            )
        )
    samples = [Sample(KIND, name, value) for name, value in positions.items()]
    return CheckReport("sequences", LABEL, "findings" if findings else "ok", summary, findings, samples=samples)
