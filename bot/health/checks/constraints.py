"""Constraints added NOT VALID and never validated: new rows are checked, old ones never were, and
the planner cannot rely on them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from bot.health.checks.base import CheckContext, CheckReport, Finding, check, ignored, safe_query_text

LABEL = "NOT VALID constraints"
KINDS = {"c": "check", "f": "foreign key", "n": "not-null"}


@check("not_valid_constraint", LABEL, group="fk_indexes", clear_at_once=True)
def check_not_valid_constraints(conn: Connection, ctx: CheckContext) -> CheckReport:
    rows = conn.execute(
        text(
            "SELECT format('%I.%I', n.nspname, t.relname) AS table_name, quote_ident(con.conname) AS conname,"
            " con.contype, pg_get_constraintdef(con.oid) AS definition"
            " FROM pg_constraint con JOIN pg_class t ON t.oid = con.conrelid"
            " JOIN pg_namespace n ON n.oid = t.relnamespace"
            " WHERE NOT con.convalidated AND con.contype IN ('c', 'f', 'n')"
            " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            # A partition's or child table's copy of a parent's NOT VALID constraint: the parent's alert covers
            # it (VALIDATE on the parent validates its partitions and children too).
            " AND NOT EXISTS (SELECT 1 FROM pg_constraint up WHERE NOT up.convalidated AND (up.oid = con.conparentid"
            "   OR (con.coninhcount > 0 AND up.conname = con.conname AND up.contype = con.contype"
            "       AND up.conrelid IN (SELECT inhparent FROM pg_inherits WHERE inhrelid = con.conrelid))))"
            " AND " + ignored("n.nspname", "t.relname") + " UNION ALL"
            # A domain's check added NOT VALID: columns of that type may hold values that break it.
            " SELECT format('%I.%I', n.nspname, d.typname), quote_ident(con.conname), 'd',"
            " pg_get_constraintdef(con.oid) FROM pg_constraint con"
            " JOIN pg_type d ON d.oid = con.contypid JOIN pg_namespace n ON n.oid = d.typnamespace"
            " WHERE NOT con.convalidated AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND " + ignored("n.nspname", "d.typname") + " ORDER BY 1, 2"
        ),
        ctx.ignore,
    ).all()
    findings = []
    for r in rows:
        if r.contype == "d":
            findings.append(_domain_finding(r))
            continue
        kind = KINDS.get(r.contype, "constraint")
        lock = (
            "it scans the table under a SHARE UPDATE EXCLUSIVE lock (reads and writes go on) and locks the "
            "referenced table in ROW SHARE mode"
            if r.contype == "f"
            else "it scans the table under a SHARE UPDATE EXCLUSIVE lock (reads and writes go on)"
        )
        findings.append(
            Finding(
                check="not_valid_constraint",
                object=f"{r.table_name}.{r.conname}",
                severity="info",
                title=f"{kind} constraint {r.conname} on {r.table_name} is NOT VALID",
                detail=(
                    f"`{safe_query_text(r.definition, 300)}` was added NOT VALID and never validated: rows written "
                    "before it may break it, and the planner does not trust it."
                ),
                advice=(
                    f"`ALTER TABLE {r.table_name} VALIDATE CONSTRAINT {r.conname};` ({lock}). If it fails, the error "
                    "names a violating row: fix those rows first."
                ),
                remind=False,
            )
        )
    summary = f"{len(rows)} not validated" if rows else "none"
    return CheckReport("not_valid_constraint", LABEL, "findings" if rows else "ok", summary, findings)


def _domain_finding(r: Any) -> Finding:
    return Finding(
        check="not_valid_constraint",
        object=f"{r.table_name}.{r.conname}",
        severity="info",
        title=f"check constraint {r.conname} of domain {r.table_name} is NOT VALID",
        detail=(
            f"`{safe_query_text(r.definition, 300)}` was added to the domain NOT VALID and never validated: columns "
            "of this type may hold values written before it that break it."
        ),
        advice=(
            f"`ALTER DOMAIN {r.table_name} VALIDATE CONSTRAINT {r.conname};` (it scans every column of this type, "
            "under a SHARE lock on each table: writes to them wait until it is done). If it fails, the error names "
            "a violating value: fix those rows first."
        ),
        remind=False,
    )
