"""Scheduled health checks: intervals, alert thresholds, and where and how often each stage's alerts go.

Kept apart from the rest of the settings because it is the largest group and has its own rules
(per-stage ALERT_CHANNEL_<STAGE> and ALERT_REPEAT_MINUTES_<STAGE>, warn below critical).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from bot.config.slack import SLACK_ID_RE
from bot.config.stages import STAGE_URL_PREFIX, StageConfig
from bot.config.values import ConfigError, read_int, read_switch
from bot.health.thresholds import CheckThresholds, load_thresholds

ALERT_CHANNEL_PREFIX = "ALERT_CHANNEL_"
ALERT_REPEAT_PREFIX = "ALERT_REPEAT_MINUTES_"
DEFAULT_REPEAT_MINUTES = 240  # on protected stages, when ALERT_REPEAT_MINUTES is not set


@dataclass(frozen=True)
class HealthSettings:
    """Scheduled health checks: intervals, thresholds and where alerts go (defaults from issue 6)."""

    enabled: bool = True
    interval_s: int = 60  # connectivity, connections, long-running / idle / blocked sessions
    slow_query_interval_s: int = 300  # pg_stat_statements snapshots
    maintenance_interval_s: int = 3600  # wraparound age, invalid indexes
    fk_index_interval_s: int = 86_400  # foreign-key columns without an index
    statement_timeout_ms: int = 3_000
    unreachable_after: int = 2
    connections_warn_pct: int = 80
    connections_critical_pct: int = 95
    long_query_s: int = 300
    idle_in_transaction_s: int = 300
    blocked_s: int = 60
    slow_query_ms: int = 1_000
    slow_query_min_calls: int = 5
    wraparound_warn_pct: int = 50
    latency_warn_ms: int = 1_000  # round trip of SELECT 1; 0: never warn
    clear_after_runs: int = 2  # runs in a row without a finding before its alert resolves
    failing_after_runs: int = 3  # runs in a row a check fails before "check failing" fires
    # ALERT_REPEAT_MINUTES when set; unset, protected stages remind every 240 minutes, others never.
    repeat_minutes: int | None = None
    stage_repeat_minutes: Mapping[str, int] = field(default_factory=dict)
    stage_alert_channels: Mapping[str, str] = field(default_factory=dict)
    checks: CheckThresholds = field(default_factory=CheckThresholds)  # issue 17's checks and HEALTH_IGNORE

    def repeat_minutes_for(self, stage: str) -> int:
        fallback = self.repeat_minutes if self.repeat_minutes is not None else 0
        return self.stage_repeat_minutes.get(stage, fallback)


def _per_stage(env: Mapping[str, str], prefix: str, stages: Mapping[str, StageConfig]) -> dict[str, str]:
    """`<PREFIX><STAGE>` variables, keyed by stage; a suffix naming no configured stage is an error."""
    found: dict[str, str] = {}
    for key, raw in env.items():
        if not key.startswith(prefix) or not raw.strip():
            continue
        stage = key[len(prefix) :].lower()
        if stage not in stages:
            raise ConfigError(f"{key} names stage {stage!r}, which has no {STAGE_URL_PREFIX}{stage.upper()}")
        found[stage] = raw.strip()
    return found


def read_health(env: Mapping[str, str], stages: Mapping[str, StageConfig]) -> HealthSettings:
    channels = _per_stage(env, ALERT_CHANNEL_PREFIX, stages)
    for stage, channel in channels.items():
        if not SLACK_ID_RE.match(channel):
            raise ConfigError(f"{ALERT_CHANNEL_PREFIX}{stage.upper()} is malformed: expected a channel ID")
    _per_stage(env, ALERT_REPEAT_PREFIX, stages)  # a suffix naming no stage is an error
    repeat = (
        read_int(env, "ALERT_REPEAT_MINUTES", 0, 0, 525_600) if env.get("ALERT_REPEAT_MINUTES", "").strip() else None
    )
    # Per stage: its own variable, else ALERT_REPEAT_MINUTES, else 240 on protected stages and never elsewhere.
    repeats = {
        stage: read_int(
            env,
            f"{ALERT_REPEAT_PREFIX}{stage.upper()}",
            repeat if repeat is not None else (DEFAULT_REPEAT_MINUTES if config.protected else 0),
            0,
            525_600,
        )
        for stage, config in stages.items()
    }
    warn = read_int(env, "CONNECTIONS_WARN_PERCENT", 80, 1, 100)
    critical = read_int(env, "CONNECTIONS_CRITICAL_PERCENT", 95, 1, 100)
    if critical < warn:
        raise ConfigError("CONNECTIONS_CRITICAL_PERCENT is out of range: expected at least CONNECTIONS_WARN_PERCENT")
    return HealthSettings(
        enabled=read_switch(env, "HEALTH_CHECKS", True),
        interval_s=read_int(env, "HEALTH_INTERVAL_SECONDS", 60, 10, 86_400),
        slow_query_interval_s=read_int(env, "SLOW_QUERY_INTERVAL_SECONDS", 300, 10, 86_400),
        maintenance_interval_s=read_int(env, "MAINTENANCE_INTERVAL_SECONDS", 3600, 60, 604_800),
        fk_index_interval_s=read_int(env, "FK_INDEX_INTERVAL_SECONDS", 86_400, 60, 604_800),
        statement_timeout_ms=read_int(env, "HEALTH_STATEMENT_TIMEOUT_MS", 3_000, 100, 60_000),
        unreachable_after=read_int(env, "UNREACHABLE_AFTER_FAILURES", 2, 1, 100),
        connections_warn_pct=warn,
        connections_critical_pct=critical,
        long_query_s=read_int(env, "LONG_QUERY_SECONDS", 300, 1, 86_400),
        idle_in_transaction_s=read_int(env, "IDLE_IN_TRANSACTION_SECONDS", 300, 1, 86_400),
        blocked_s=read_int(env, "BLOCKED_QUERY_SECONDS", 60, 1, 86_400),
        slow_query_ms=read_int(env, "SLOW_QUERY_MS", 1_000, 1, 3_600_000),
        slow_query_min_calls=read_int(env, "SLOW_QUERY_MIN_CALLS", 5, 1, 1_000_000),
        wraparound_warn_pct=read_int(env, "WRAPAROUND_WARN_PERCENT", 50, 1, 99),
        latency_warn_ms=read_int(env, "STAGE_LATENCY_WARN_MS", 1_000, 0, 600_000),
        clear_after_runs=read_int(env, "ALERT_CLEAR_AFTER_RUNS", 2, 1, 100),
        failing_after_runs=read_int(env, "CHECK_FAILING_AFTER_RUNS", 3, 1, 100),
        repeat_minutes=repeat,
        stage_repeat_minutes=repeats,
        stage_alert_channels=channels,
        checks=load_thresholds(env),
    )
