"""The four catalog queries `catalog.load_catalog` reads the foreign-key graph with.

Split from catalog.py to keep it under the project's ~400-line limit: this module holds the SQL
(what is read from pg_catalog, and as which role), catalog.py the graph's data classes and the
code that builds them from these rows.
"""

from __future__ import annotations

from sqlalchemy import text

NOT_SYSTEM = r"n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'"

FOREIGN_KEYS = text(
    r"""
    SELECT con.conname AS name,
           n.nspname AS child_schema, cc.relname AS child_table,
           pn.nspname AS parent_schema, pc.relname AS parent_table,
           ARRAY(SELECT a.attname::text
                 FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
                 ORDER BY k.ord) AS child_columns,
           ARRAY(SELECT a.attname::text
                 FROM unnest(con.confkey) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum
                 ORDER BY k.ord) AS parent_columns,
           ARRAY(SELECT a.attname::text
                 FROM unnest(coalesce(con.confdelsetcols, '{}'::int2[])) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
                 ORDER BY k.ord) AS set_columns,
           con.confdeltype::text AS on_delete,
           con.condeferrable AS deferrable, con.condeferred AS deferred, con.convalidated AS validated,
           con.confmatchtype::text AS match,
           EXISTS (
               SELECT 1
               FROM pg_index i
               CROSS JOIN LATERAL (
                   SELECT (string_to_array(i.indkey::text, ' ')::int2[])[1:cardinality(con.conkey)] AS lead
               ) AS l
               WHERE i.indrelid = con.conrelid
                 AND i.indisvalid AND i.indpred IS NULL
                 AND i.indnkeyatts >= cardinality(con.conkey)
                 AND l.lead @> con.conkey AND l.lead <@ con.conkey
           ) AS indexed
    FROM pg_constraint con
    JOIN pg_class cc ON cc.oid = con.conrelid
    JOIN pg_namespace n ON n.oid = cc.relnamespace
    JOIN pg_class pc ON pc.oid = con.confrelid
    JOIN pg_namespace pn ON pn.oid = pc.relnamespace
    WHERE con.contype = 'f' AND con.conparentid = 0 AND """
    + NOT_SYSTEM
    + """
    ORDER BY n.nspname, cc.relname, con.conname
    """
)

# Every table with what the connected role may do to it and see of it. `rls_hides`: row-level
# security filters this role's reads (not a superuser, no BYPASSRLS, and not the owner or the owner
# under FORCE ROW LEVEL SECURITY), so counts taken as this role could be short.
TABLES = text(
    """
    WITH me AS (SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user)
    SELECT n.nspname AS schema, c.relname AS name, c.relkind::text AS kind, current_user::text AS role,
           CASE WHEN c.relkind = 'p' THEN
               coalesce((SELECT sum(greatest(x.reltuples, 0)) FROM pg_partition_tree(c.oid) pt
                         JOIN pg_class x ON x.oid = pt.relid WHERE pt.isleaf), 0)
           ELSE greatest(c.reltuples, 0) END::float8 AS estimated_rows,
           (pg_relation_size(c.oid) / current_setting('block_size')::int)::bigint AS pages,
           CASE WHEN c.relispartition THEN
               (SELECT ARRAY[rn.nspname::text, r.relname::text] FROM pg_class r
                JOIN pg_namespace rn ON rn.oid = r.relnamespace WHERE r.oid = pg_partition_root(c.oid))
           END AS partition_root,
           c.relrowsecurity AND NOT (me.rolsuper OR me.rolbypassrls)
               AND (c.relforcerowsecurity OR NOT pg_has_role(c.relowner, 'USAGE')) AS rls_hides,
           pg_has_role(c.relowner, 'USAGE') AS owned,
           has_schema_privilege(n.oid, 'USAGE') AS schema_usage,
           ARRAY(SELECT p FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) AS p
                 WHERE has_table_privilege(c.oid, p)) AS privileges,
           coalesce((SELECT json_agg(json_build_array(
                        a.attname::text, format_type(a.atttypid, a.atttypmod),
                        a.attnotnull OR coalesce(t.typnotnull, false), a.attgenerated::text,
                        coalesce(pg_get_expr(d.adbin, d.adrelid), pg_get_expr(t.typdefaultbin, 0)),
                        ty.typcategory = 'A')
                        ORDER BY a.attnum)
                     FROM pg_attribute a
                     JOIN pg_type ty ON ty.oid = a.atttypid
                     LEFT JOIN pg_type t ON t.oid = a.atttypid AND t.typtype = 'd'
                     LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]') AS columns
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace CROSS JOIN me
    WHERE c.relkind IN ('r', 'p') AND """
    + NOT_SYSTEM
)

# Primary keys, and unique indexes that could stand in for one (plain columns, all NOT NULL).
KEYS = text(
    """
    SELECT n.nspname AS schema, c.relname AS name, i.indisprimary AS is_primary,
           ARRAY(SELECT a.attname::text
                 FROM unnest(k.cols) WITH ORDINALITY AS u(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = u.attnum
                 ORDER BY u.ord) AS columns,
           NOT EXISTS (SELECT 1 FROM unnest(k.cols) AS u(attnum)
                       LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = u.attnum
                       WHERE u.attnum = 0 OR NOT a.attnotnull) AS usable
    FROM pg_index i
    JOIN pg_class c ON c.oid = i.indrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    CROSS JOIN LATERAL (SELECT (string_to_array(i.indkey::text, ' ')::int2[])[1:i.indnkeyatts] AS cols) AS k
    WHERE (i.indisprimary OR i.indisunique) AND i.indisvalid AND i.indpred IS NULL AND """
    + NOT_SYSTEM
)

# User triggers (not the ones foreign keys and partitioning make). tgtype bits: 1 row, 2 before,
# 4 insert, 8 delete, 16 update, 32 truncate, 64 instead of.
TRIGGERS = text(
    """
    SELECT n.nspname AS schema, c.relname AS table_name, t.tgname AS name, t.tgtype::int AS type,
           t.tgenabled::text AS enabled, t.tgfoid::regproc::text AS function, t.tgconstraint <> 0 AS constraint_trigger
    FROM pg_trigger t
    JOIN pg_class c ON c.oid = t.tgrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE NOT t.tgisinternal AND c.relkind IN ('r', 'p') AND t.tgparentid = 0 AND """
    + NOT_SYSTEM
    + """
    ORDER BY n.nspname, c.relname, t.tgname
    """
)
