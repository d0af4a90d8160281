"""The health checks: one module per group of related checks, each check registered with `@check`.

Importing this package imports every module named in `MODULES`, which registers its checks in
`REGISTRY` (bot/health/checks/base.py); the monitor runs them group by group. To add a check,
write a module with a function decorated with `@check(name, label, group=...)` and name the
module here.
"""

from __future__ import annotations

import importlib

from bot.health.checks.base import (
    MAX_FINDINGS,
    OUR_SESSIONS,
    QUERY_CHARS,
    REGISTRY,
    UNAVAILABLE_PREFIX,
    Check,
    CheckContext,
    CheckReport,
    CheckSpec,
    Finding,
    Severity,
    Status,
    check,
    checks_in,
    denied_report,
    distinct,
    duration,
    safe_query_text,
)

# In the order `/mcp health` lists them within a group.
MODULES = (
    "sessions",
    "vacuum",
    "replication",
    "wraparound",
    "sequences",
    "cache",
    "indexes",
    "foreign_keys",
    "constraints",
    "growth",
)

for _module in MODULES:
    importlib.import_module(f"{__name__}.{_module}")

from bot.health.checks.foreign_keys import check_fk_without_index  # noqa: E402
from bot.health.checks.indexes import check_invalid_indexes  # noqa: E402
from bot.health.checks.sessions import (  # noqa: E402
    check_blocked,
    check_connections,
    check_idle_in_transaction,
    check_long_running,
    latency_report,
)
from bot.health.checks.wraparound import check_wraparound  # noqa: E402

# The checks of each scheduled group (the slow-query check lives in bot/health/statements.py).
ACTIVITY_CHECKS = checks_in("activity")
MAINTENANCE_CHECKS = checks_in("maintenance")
FK_CHECKS = checks_in("fk_indexes")

__all__ = [
    "ACTIVITY_CHECKS",
    "FK_CHECKS",
    "MAINTENANCE_CHECKS",
    "MAX_FINDINGS",
    "MODULES",
    "OUR_SESSIONS",
    "QUERY_CHARS",
    "REGISTRY",
    "UNAVAILABLE_PREFIX",
    "Check",
    "CheckContext",
    "CheckReport",
    "CheckSpec",
    "Finding",
    "Severity",
    "Status",
    "check",
    "check_blocked",
    "check_connections",
    "check_fk_without_index",
    "check_idle_in_transaction",
    "check_invalid_indexes",
    "check_long_running",
    "check_wraparound",
    "checks_in",
    "denied_report",
    "distinct",
    "duration",
    "latency_report",
    "safe_query_text",
]
