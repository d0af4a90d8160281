"""Indexes the bot builds and drops on request (kinds `create-index`, `drop-index`).

- `naming`   predictable names: `<table>_<columns>_idx`, shortened within PostgreSQL's 63 bytes;
- `targets`  an index named by identity (table and columns; an index and its definition) and the
             buttons a finding about it carries;
- `catalog`  what exists now: the table and columns, an equivalent index, an index's state;
- `build`    `CREATE INDEX CONCURRENTLY` / `DROP INDEX CONCURRENTLY` outside any transaction, with
             `lock_timeout`, progress from `pg_stat_progress_create_index`, and the INVALID index a
             failed build leaves behind found and dropped;
- `listing`  `/mcp indexes`: unindexed foreign keys, invalid and duplicate indexes.
"""
