"""Backends of a stage and the two signals the bot may send them (cancel, terminate).

- `targets`  a backend's identity (pid *and* backend_start *and* query/transaction start) and the
             buttons a finding about it carries;
- `activity` what the session checks see, read from pg_stat_activity (`/mcp sessions`);
- `signal`   the re-check and the signal in one statement, the refusals, the report after it.
"""
