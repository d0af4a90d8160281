"""Deleting an MCP server exactly: one scope, computed from the live catalog, four uses.

- `catalog`  reads foreign keys, primary keys and index coverage from pg_constraint/pg_index.
- `scope`    decides which tables a delete reaches and builds each table's scope as SQL
             (subqueries for the read-only impact report, temp tables in the write transaction).
- `plan`     orders the steps (children before parents), finds blockers, unindexed foreign keys
             and the expected duration, and produces the impact report and its snapshot.
- `execute`  runs a plan in one transaction: materialise, re-count, compare, hook, delete, verify.
- `identity` binds a request to the server's primary key and the snapshot's hash.

The request to delete (its approvals, its run) is the `delete` kind of bot/requests (bot/kinds/delete.py).

Nothing here names a platform table except the root (`mcp_servers`, found by slug) and the
orphaned-user rule (`mcp_server_user` reached through `mcp_server_session`).
"""
