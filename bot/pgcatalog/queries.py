"""The catalog queries behind a schema snapshot: one per kind of object, whatever the number of tables.

Every query skips the system schemas and anything an extension owns (`pg_depend.deptype = 'e'`),
so an extension's tables, functions and types appear once, as the extension and its version.
Definitions come from PostgreSQL's own deparsers (`format_type`, `pg_get_expr`,
`pg_get_constraintdef`, `pg_get_indexdef`, `pg_get_triggerdef`, `pg_get_viewdef`), so two
stages that ran the same DDL read the same text. NOT NULL constraints, which PostgreSQL 18 also
lists in pg_constraint, are read as the columns' nullability only, so a 15 and an 18 server agree.
"""

from __future__ import annotations

from sqlalchemy import text

USER_SCHEMA = r"n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'"


def _not_extension_member(catalog: str, oid: str) -> str:
    return (
        f"NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{catalog}'::regclass"
        f" AND d.objid = {oid} AND d.deptype = 'e')"
    )


USER_RELATION = USER_SCHEMA + " AND " + _not_extension_member("pg_class", "c.oid")

RELATIONS = text(
    """
    SELECT n.nspname AS schema, c.relname AS name, c.relkind::text AS kind,
           c.relrowsecurity AS rls, c.relforcerowsecurity AS force_rls,
           CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END AS view_definition,
           CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END AS partition_bound,
           (SELECT pn.nspname || '.' || p.relname FROM pg_inherits h JOIN pg_class p ON p.oid = h.inhparent
              JOIN pg_namespace pn ON pn.oid = p.relnamespace WHERE h.inhrelid = c.oid LIMIT 1) AS parent
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND """
    + USER_RELATION
)

COLUMNS = text(
    """
    SELECT n.nspname AS schema, c.relname AS table_name, a.attname AS name, a.attnum AS position,
           format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS not_null,
           pg_get_expr(ad.adbin, ad.adrelid) AS default_expr, a.attgenerated::text AS generated,
           a.attidentity::text AS identity,
           CASE WHEN a.attcollation <> t.typcollation THEN co.collname END AS collation
    FROM pg_attribute a
    JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_type t ON t.oid = a.atttypid
    LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
    LEFT JOIN pg_collation co ON co.oid = a.attcollation
    WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'f') AND """
    + USER_RELATION
)

CONSTRAINTS = text(
    """
    SELECT n.nspname AS schema, c.relname AS table_name, con.conname AS name, con.contype::text AS type,
           pg_get_constraintdef(con.oid) AS definition, con.convalidated AS valid,
           -- ON DELETE / ON UPDATE are read from the definition, with SET NULL (columns) lists kept
           con.condeferrable AS deferrable, con.condeferred AS deferred
    FROM pg_constraint con
    JOIN pg_class c ON c.oid = con.conrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE con.contype IN ('p', 'u', 'c', 'f', 'x') AND con.conparentid = 0 AND """
    + USER_RELATION
)

# Indexes that back a constraint are the constraint's business (compared there).
INDEXES = text(
    """
    SELECT n.nspname AS schema, c.relname AS table_name, ic.relname AS name,
           pg_get_indexdef(i.indexrelid) AS definition, i.indisvalid AS valid
    FROM pg_index i
    JOIN pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_class c ON c.oid = i.indrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.contype IN ('p', 'u', 'x'))
      AND """
    + USER_RELATION
)

TRIGGERS = text(
    """
    SELECT n.nspname AS schema, c.relname AS table_name, tg.tgname AS name,
           pg_get_triggerdef(tg.oid) AS definition, tg.tgenabled::text AS enabled
    FROM pg_trigger tg
    JOIN pg_class c ON c.oid = tg.tgrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE NOT tg.tgisinternal AND """
    + USER_RELATION
)

POLICIES = text(
    """
    SELECT n.nspname AS schema, c.relname AS table_name, p.polname AS name, p.polcmd::text AS command,
           p.polpermissive AS permissive,
           ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r) END
                 FROM unnest(p.polroles) AS r ORDER BY 1) AS roles,
           pg_get_expr(p.polqual, p.polrelid) AS using_expr,
           pg_get_expr(p.polwithcheck, p.polrelid) AS check_expr
    FROM pg_policy p
    JOIN pg_class c ON c.oid = p.polrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE """
    + USER_RELATION
)

ENUMS = text(
    """
    SELECT n.nspname AS schema, t.typname AS name,
           ARRAY(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder) AS labels
    FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE t.typtype = 'e' AND """
    + USER_SCHEMA
    + " AND "
    + _not_extension_member("pg_type", "t.oid")
)

# Sequences, with the table column that owns them (serial); identity sequences belong to their column.
SEQUENCES = text(
    """
    SELECT n.nspname AS schema, c.relname AS name, format_type(s.seqtypid, NULL) AS data_type,
           s.seqstart AS start, s.seqincrement AS increment, s.seqmin AS min, s.seqmax AS max,
           s.seqcycle AS cycle, s.seqcache AS cache,
           (SELECT tn.nspname || '.' || tc.relname FROM pg_depend d
              JOIN pg_class tc ON tc.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = tc.relnamespace
            WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.refclassid = 'pg_class'::regclass
              AND d.deptype = 'a' LIMIT 1) AS owned_by
    FROM pg_sequence s
    JOIN pg_class c ON c.oid = s.seqrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                        AND d.deptype = 'i')
      AND """
    + USER_RELATION
)

EXTENSIONS = text("SELECT x.extname AS name, x.extversion AS version FROM pg_extension x")

# Every catalog statement of a snapshot, in the order read_snapshot runs them (the bench runs them raw).
ALL = (RELATIONS, COLUMNS, CONSTRAINTS, INDEXES, TRIGGERS, POLICIES, SEQUENCES, ENUMS, EXTENSIONS)
