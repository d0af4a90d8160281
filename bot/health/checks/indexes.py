"""Indexes: invalid ones left behind by a failed `CREATE INDEX CONCURRENTLY`, duplicate and redundant
ones, and large ones nothing has used since the statistics began.

An index is redundant when another index of the same table, same method, predicate and expressions,
starts with its key columns (same operator classes, collations and orderings): every lookup it
serves, the other serves too. A unique index is redundant only beside an identical unique one, and
an index backing a constraint (primary key, unique, exclusion) is never the one to drop. For exact
duplicates the one to drop is the one without a constraint, else the plain one beside a unique one,
else the newer. Unused means no scan since the statistics were reset, large enough to matter, on
statistics old enough to mean something (and an index the bot has watched that long): indexes
that back a constraint or lead with a foreign key's columns (they serve deletes of the parent, which
may be rare) are never called unused.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, text

from bot.health.checks.base import (
    MAX_FINDINGS,
    MB,
    CheckContext,
    CheckReport,
    Finding,
    check,
    duration,
    ignored,
    safe_query_text,
    size,
)
from bot.health.checks.foreign_keys import covers_foreign_key
from bot.health.history import Sample
from bot.indexes.targets import drop_index_action

DUPLICATE_LABEL = "Duplicate indexes"
UNUSED_LABEL = "Unused indexes"


@check("invalid_index", "Invalid indexes", group="maintenance", clear_at_once=True)
def check_invalid_indexes(conn: Connection, ctx: CheckContext) -> CheckReport:
    rows = conn.execute(
        text(
            "SELECT format('%I.%I', n.nspname, c.relname) AS name, pg_get_indexdef(c.oid) AS definition,"
            " pg_relation_size(c.oid) AS bytes, n.nspname AS schema_name, c.relname AS index_name"
            " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_class t ON t.oid = i.indrelid"
            " WHERE NOT i.indisvalid AND " + ignored("n.nspname", "t.relname") + " AND NOT EXISTS"
            " (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = i.indexrelid)"
            " ORDER BY 1"
        ),
        ctx.ignore,
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
            actions=(drop_index_action(r.schema_name, r.index_name, r.definition, "invalid"),),
        )
        for r in rows
    ]
    summary = f"{len(rows)} invalid" if rows else "none"
    return CheckReport("invalid_index", "Invalid indexes", "findings" if rows else "ok", summary, findings)


# Each valid index with its key columns, operator classes, collations and orderings as 1-based arrays.
_INDEXES = """
SELECT i.indexrelid, i.indrelid, c.relam, i.indisunique, i.indnatts, i.indnkeyatts,
       (i.indkey::int2[])[0:i.indnkeyatts - 1] AS keys, i.indkey::int2[] AS all_keys,
       (i.indclass::oid[])[0:i.indnkeyatts - 1] AS classes, (i.indcollation::oid[])[0:i.indnkeyatts - 1] AS colls,
       (i.indoption::int2[])[0:i.indnkeyatts - 1] AS opts,
       pg_get_expr(i.indexprs, i.indrelid) AS exprs, pg_get_expr(i.indpred, i.indrelid) AS pred,
       EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.contype IN ('p', 'u', 'x'))
         AS constraint_backed,
       format('%I.%I', n.nspname, c.relname) AS name, format('%I.%I', n.nspname, t.relname) AS table_name,
       n.nspname AS schema_name, c.relname AS index_name, c.relispartition AS attached,
       c.relkind = 'I' AS partitioned
  FROM pg_index i
  JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid
  JOIN pg_namespace n ON n.oid = t.relnamespace
 WHERE i.indisvalid AND i.indisready AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
   AND {keep}
"""
DUPLICATES_SQL = (
    "WITH idx AS ({indexes})"
    # a partitioned index's size is its partitions' (pg_partition_tree has no rows for an index outside one)
    " SELECT *, coalesce((SELECT sum(pg_relation_size(relid)) FROM pg_partition_tree(dropped)),"
    "   pg_relation_size(dropped))::bigint AS bytes, pg_get_indexdef(dropped) AS definition,"
    " coalesce((SELECT sum(pg_relation_size(relid)) FROM pg_partition_tree(kept)),"
    "   pg_relation_size(kept))::bigint AS keeper_bytes, pg_get_indexdef(kept) AS keeper_definition FROM ("
    " SELECT DISTINCT ON (a.indexrelid) a.indexrelid AS dropped, b.indexrelid AS kept, a.name, a.table_name,"
    " a.schema_name, a.index_name, a.partitioned,"
    " b.name AS keeper, a.all_keys = b.all_keys AS exact, coalesce(s.idx_scan, 0) AS scans"
    " FROM idx a JOIN idx b ON b.indrelid = a.indrelid AND b.indexrelid <> a.indexrelid AND b.relam = a.relam"
    "  AND a.exprs IS NOT DISTINCT FROM b.exprs AND a.pred IS NOT DISTINCT FROM b.pred"
    "  AND b.keys[1:cardinality(a.keys)] = a.keys AND b.classes[1:cardinality(a.keys)] = a.classes"
    "  AND b.colls[1:cardinality(a.keys)] = a.colls AND b.opts[1:cardinality(a.keys)] = a.opts"
    " LEFT JOIN pg_stat_all_indexes s ON s.indexrelid = a.indexrelid"
    # a partition's index attached to a partitioned index goes with it: the partitioned one is reported
    " WHERE NOT a.constraint_backed AND NOT a.attached"
    # INCLUDE columns of its own would be lost, unless the other has exactly the same columns.
    "  AND (a.indnatts = a.indnkeyatts OR a.all_keys = b.all_keys)"
    "  AND CASE WHEN a.keys = b.keys AND a.all_keys <> b.all_keys THEN"
    # the same keys, and the other also covers INCLUDE columns: drop this one, unless it alone is unique
    "    b.indisunique OR NOT a.indisunique"
    "   WHEN a.keys = b.keys THEN"
    # exact duplicates: drop the one without a constraint, else the plain one, else the newer
    "    (a.constraint_backed::int, a.indisunique::int, -a.indexrelid::bigint)"
    "      < (b.constraint_backed::int, b.indisunique::int, -b.indexrelid::bigint)"
    # a shorter prefix: only a plain b-tree index is redundant (a unique one enforces more)
    "   ELSE NOT a.indisunique AND a.relam = (SELECT oid FROM pg_am WHERE amname = 'btree') END"
    " ORDER BY a.indexrelid, b.constraint_backed DESC, b.indisunique DESC, b.indexrelid) pairs"
)


@check("duplicate_index", DUPLICATE_LABEL, group="fk_indexes", clear_at_once=True)
def check_duplicate_indexes(conn: Connection, ctx: CheckContext) -> CheckReport:
    rows = conn.execute(
        text(DUPLICATES_SQL.format(indexes=_INDEXES.format(keep=ignored("n.nspname", "t.relname")))), ctx.ignore
    ).all()
    findings = []
    for r in rows:
        relation = "a duplicate of" if r.exact else "made redundant by"
        findings.append(
            Finding(
                check="duplicate_index",
                object=r.name,
                severity="info",
                title=f"index {r.name} is {relation} {r.keeper}",
                detail=(
                    f"On {r.table_name}: `{safe_query_text(r.definition, 250)}` ({size(r.bytes)}, {r.scans:,} scans) "
                    f"is {relation} `{safe_query_text(r.keeper_definition, 250)}` ({size(r.keeper_bytes)}): "
                    "every lookup it serves, the other serves too, and both are written on every insert and update."
                ),
                advice=(
                    f"Drop {r.name} and keep {r.keeper}: "
                    + (
                        f"`DROP INDEX {r.name};` (an index of a partitioned table cannot be dropped CONCURRENTLY: "
                        "this locks the table and its partitions while it runs, so pick a quiet moment)."
                        if r.partitioned
                        else f"`DROP INDEX CONCURRENTLY {r.name};` (outside a transaction; it waits for queries "
                        "using the index, blocking nothing else)."
                    )
                ),
                remind=False,
                # The button drops CONCURRENTLY, which PostgreSQL refuses for a partitioned index.
                actions=()
                if r.partitioned
                else (
                    drop_index_action(
                        r.schema_name, r.index_name, r.definition, "duplicate", r.keeper, r.keeper_definition
                    ),
                ),
            )
        )
    summary = f"{len(rows)} to drop ({size(sum(r.bytes for r in rows))})" if rows else "none"
    return CheckReport("duplicate_index", DUPLICATE_LABEL, "findings" if rows else "ok", summary, findings)


STATS_KIND = "stats_epoch"
SEEN_KIND = "index_seen"
NEVER_RESET = "never reset"


def _stats_age(conn: Connection, ctx: CheckContext) -> tuple[float, str, list[Sample]]:
    """How old this database's statistics are (seconds), how that is known, and the sample that remembers it."""
    reset = conn.execute(
        text("SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()")
    ).scalar_one_or_none()
    now = datetime.now(UTC)
    if reset is not None:
        return (now - reset).total_seconds(), f"reset {reset:%Y-%m-%d}", []
    # Never reset (PostgreSQL 15+ keeps statistics across restarts): at least as old as the bot's first look.
    first = ctx.past.oldest(STATS_KIND, [NEVER_RESET]).get(NEVER_RESET)
    age = (now - first.taken_at).total_seconds() if first else 0.0
    return (
        age,
        "never reset, watched by mcp-ops since " + (f"{first.taken_at:%Y-%m-%d}" if first else "now"),
        [Sample(STATS_KIND, NEVER_RESET, 0)],
    )


@check("unused_index", UNUSED_LABEL, group="fk_indexes", clear_at_once=True)
def check_unused_indexes(conn: Connection, ctx: CheckContext) -> CheckReport:
    t = ctx.settings.checks
    rows = conn.execute(
        text(
            # relpages (as of the last VACUUM, ANALYZE or CREATE INDEX) to choose; real sizes of those shown only.
            # pg_stat_get_numscans is pg_stat_user_indexes.idx_scan, without the view's walk of all of pg_class.
            "SELECT *, pg_relation_size(indexrelid) AS bytes, pg_get_indexdef(indexrelid) AS definition FROM ("
            " SELECT i.indexrelid, format('%I.%I', n.nspname, c.relname) AS name,"
            " format('%I.%I', n.nspname, t.relname) AS table_name, c.relpages, count(*) OVER () AS total"
            " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid"
            " JOIN pg_namespace n ON n.oid = t.relnamespace"
            " WHERE i.indisvalid AND NOT i.indisunique AND NOT i.indisprimary AND NOT i.indisexclusion"
            " AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'"
            " AND c.relpages::bigint * current_setting('block_size')::int >= :min_bytes"
            " AND pg_stat_get_numscans(i.indexrelid) = 0"
            " AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)"
            " AND NOT EXISTS (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' AND "
            + covers_foreign_key("i", "f")
            + ") AND "
            + ignored("n.nspname", "t.relname")
            + " ORDER BY c.relpages DESC LIMIT :max_findings) candidates ORDER BY bytes DESC"
        ),
        {"min_bytes": t.unused_index_min_mb * MB, "max_findings": MAX_FINDINGS, **ctx.ignore},
    ).all()
    stats_age, stats_how, samples = _stats_age(conn, ctx)
    needed = timedelta(days=t.unused_index_stats_days).total_seconds()
    names = [r.name for r in rows]
    seen = ctx.past.oldest(SEEN_KIND, names)
    samples += [Sample(SEEN_KIND, r.name, int(r.bytes)) for r in rows]
    now = datetime.now(UTC)
    findings = []
    young = 0
    for r in rows:
        watched = (now - seen[r.name].taken_at).total_seconds() if r.name in seen else 0.0
        age = min(stats_age, watched)
        if age < needed:
            young += 1  # never suggested on young statistics
            continue
        findings.append(
            Finding(
                check="unused_index",
                object=r.name,
                severity="info",
                title=f"index {r.name} ({size(r.bytes)}) has not been used in {duration(age)}",
                detail=(
                    f"On {r.table_name}: `{safe_query_text(r.definition, 250)}`. No scan since the statistics began "
                    f"({stats_how}; statistics {duration(stats_age)} old), yet it is written on every insert and "
                    "update and takes space in the cache."
                ),
                advice=(
                    "Scans on read replicas are not counted here: check `pg_stat_user_indexes` there first. Then "
                    f"`DROP INDEX CONCURRENTLY {r.name};` (keep its definition above to create it again if needed)."
                ),
                remind=False,
            )
        )
    total = rows[0].total if rows else 0
    summary = (f"{len(findings)} unused for {t.unused_index_stats_days}+ days" if findings else "none") + (
        f" ({young} more on statistics younger than {t.unused_index_stats_days} days)" if young else ""
    )
    if total > len(rows):
        summary += f", {total - len(rows)} smaller not listed"
    return CheckReport(
        "unused_index", UNUSED_LABEL, "findings" if findings else "ok", summary, findings, samples=samples
    )
