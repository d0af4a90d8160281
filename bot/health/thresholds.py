"""Thresholds of the catalog and vacuum checks (issue 17's defaults), and HEALTH_IGNORE.

Kept apart from bot/config/, which holds the settings every part of the bot reads; this module
imports nothing of the bot at module level, so bot/config/health.py can build these as part of
`HealthSettings.checks`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

IGNORE_PATTERN_RE = re.compile(r"[A-Za-z0-9_$*?\-]+(\.[A-Za-z0-9_$*?\-]+)?")  # whole string (fullmatch)


@dataclass(frozen=True)
class CheckThresholds:
    xmin_horizon_s: int = 3600  # the oldest holder of the xmin horizon (what keeps vacuum from cleaning up)
    multixact_warn_pct: int = 50  # MultiXact ID age as a share of the 2^31 limit
    sequence_warn_pct: int = 75  # sequences and identity columns: share of their type's range used
    sequence_critical_pct: int = 90
    slot_inactive_s: int = 3600  # a replication slot nobody consumes for this long
    slot_retained_mb: int = 1024  # or one keeping this much WAL
    replication_lag_s: int = 30  # replay lag of a standby
    unused_index_min_mb: int = 10  # unused indexes: this large, with statistics at least this old
    unused_index_stats_days: int = 7
    cache_hit_warn_pct: float = 99.0  # buffer cache hit ratio of the tables over cache_hit_min_table_mb
    cache_hit_min_table_mb: int = 1024
    dead_tuples_pct: int = 20  # dead tuples as a share of the table, when its last (auto)vacuum is older than:
    vacuum_stale_hours: int = 24
    growth_warn_pct: int = 20  # database and table size growth over growth_window_days
    growth_window_days: int = 7
    growth_min_mb: int = 100  # growth smaller than this is never reported, whatever its share
    # HEALTH_IGNORE: `schema` or `schema.table` globs (`*`, `?`) of objects no check reports
    ignore: tuple[str, ...] = ()


def parse_ignore(raw: str) -> tuple[str, ...]:
    """`inngest, public.function_*` -> ("inngest.*", "public.function_*"); a bare schema means all of it."""
    patterns = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        if not IGNORE_PATTERN_RE.fullmatch(part):
            raise ValueError(
                "HEALTH_IGNORE is malformed: expected comma-separated schema or schema.table patterns "
                "(letters, digits, _, $, -, and the wildcards * and ?)"
            )
        patterns.append(part if "." in part else f"{part}.*")
    return tuple(patterns)


def glob_regex(pattern: str) -> str:
    """A HEALTH_IGNORE glob as an anchored POSIX regular expression (PostgreSQL's `~`)."""
    out = []
    for char in pattern:
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        else:
            out.append(re.escape(char))
    return "^" + "".join(out) + "$"


def load_thresholds(env: Mapping[str, str]) -> CheckThresholds:
    from bot.config.values import ConfigError  # bot.config imports this module
    from bot.config.values import read_float as _float
    from bot.config.values import read_int as _int

    warn = _int(env, "SEQUENCE_WARN_PERCENT", 75, 1, 100)
    critical = _int(env, "SEQUENCE_CRITICAL_PERCENT", 90, 1, 100)
    if critical < warn:
        raise ConfigError("SEQUENCE_CRITICAL_PERCENT is out of range: expected at least SEQUENCE_WARN_PERCENT")
    try:
        ignore = parse_ignore(env.get("HEALTH_IGNORE", ""))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return CheckThresholds(
        xmin_horizon_s=_int(env, "XMIN_HORIZON_SECONDS", 3600, 0, 604_800),
        multixact_warn_pct=_int(env, "MULTIXACT_WARN_PERCENT", 50, 1, 99),
        sequence_warn_pct=warn,
        sequence_critical_pct=critical,
        slot_inactive_s=_int(env, "REPLICATION_SLOT_INACTIVE_SECONDS", 3600, 0, 2_592_000),
        slot_retained_mb=_int(env, "REPLICATION_SLOT_RETAINED_MB", 1024, 1, 10_000_000),
        replication_lag_s=_int(env, "REPLICATION_LAG_SECONDS", 30, 1, 86_400),
        unused_index_min_mb=_int(env, "UNUSED_INDEX_MIN_MB", 10, 0, 10_000_000),
        unused_index_stats_days=_int(env, "UNUSED_INDEX_STATS_DAYS", 7, 0, 3650),
        cache_hit_warn_pct=_float(env, "CACHE_HIT_WARN_PERCENT", 99.0, 1.0, 100.0),
        cache_hit_min_table_mb=_int(env, "CACHE_HIT_MIN_TABLE_MB", 1024, 0, 10_000_000),
        dead_tuples_pct=_int(env, "DEAD_TUPLES_PERCENT", 20, 1, 100),
        vacuum_stale_hours=_int(env, "VACUUM_STALE_HOURS", 24, 0, 8760),
        growth_warn_pct=_int(env, "GROWTH_WARN_PERCENT", 20, 1, 10_000),
        growth_window_days=_int(env, "GROWTH_WINDOW_DAYS", 7, 1, 90),
        growth_min_mb=_int(env, "GROWTH_MIN_MB", 100, 0, 10_000_000),
        ignore=ignore,
    )
