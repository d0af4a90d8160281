"""Settings from the environment: the `Settings` every part of the bot reads, and `load_settings`.

Every problem is reported as one line that names the variable and never echoes its value,
because values here are tokens and database URLs. Each group of settings is read by its own module:
values.py (one variable: numbers, switches, lists), stages.py (where each stage's database is),
slack.py (tokens, Slack IDs, channel bindings), health.py (checks and alerts), backups.py, schema.py;
bot/edge_config.py, bot/erasure/settings.py and bot/health/thresholds.py likewise. Every name is
importable from `bot.config`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy.engine import URL

from bot.config.backups import BUCKET_RE, KMS_KEY_RE, PREFIX_RE, BackupSettings, read_backup
from bot.config.health import (
    ALERT_CHANNEL_PREFIX,
    ALERT_REPEAT_PREFIX,
    DEFAULT_REPEAT_MINUTES,
    HealthSettings,
    read_health,
)
from bot.config.schema import IDENTIFIER_RE, IGNORE_PATTERN_RE, SchemaSettings, read_schema
from bot.config.slack import (
    DEFAULT_SLACK_API_URL,
    SLACK_ID_RE,
    read_channel_stages,
    read_slack_access,
    read_slack_ids,
)
from bot.config.stages import (
    HOST_RE,
    PG_DRIVERS,
    RDS_ID_RE,
    RDS_SNAPSHOT_PREFIX,
    SECRET_ID_RE,
    SST_APP_VAR,
    SST_DEFAULT_DATABASE_RESOURCE,
    SST_LINK_KEYS,
    SST_RESOURCE_HINT,
    SST_RESOURCE_PREFIX,
    STAGE_NAME_RE,
    STAGE_SECRET_PREFIX,
    STAGE_URL_PREFIX,
    RdsTarget,
    SecretRef,
    StageConfig,
    parse_database_url,
    read_stages,
)
from bot.config.values import ConfigError, read_float, read_int, read_one_of, split_csv
from bot.edge_config import EdgeSettings, load_edge_settings
from bot.erasure.settings import ErasureSettings, SettingError, load_erasure_settings

__all__ = [
    "ALERT_CHANNEL_PREFIX",
    "ALERT_REPEAT_PREFIX",
    "BUCKET_RE",
    "DEFAULT_REPEAT_MINUTES",
    "DEFAULT_SLACK_API_URL",
    "HOST_RE",
    "IDENTIFIER_RE",
    "IGNORE_PATTERN_RE",
    "KMS_KEY_RE",
    "PG_DRIVERS",
    "PREFIX_RE",
    "RDS_ID_RE",
    "RDS_SNAPSHOT_PREFIX",
    "SECRET_ID_RE",
    "SLACK_ID_RE",
    "SST_APP_VAR",
    "SST_DEFAULT_DATABASE_RESOURCE",
    "SST_LINK_KEYS",
    "SST_RESOURCE_HINT",
    "SST_RESOURCE_PREFIX",
    "STAGE_NAME_RE",
    "STAGE_SECRET_PREFIX",
    "STAGE_URL_PREFIX",
    "BackupSettings",
    "ConfigError",
    "EdgeSettings",
    "ErasureSettings",
    "HealthSettings",
    "RdsTarget",
    "SchemaSettings",
    "SecretRef",
    "Settings",
    "StageConfig",
    "load_settings",
    "parse_database_url",
]


@dataclass(frozen=True)
class Settings:
    signing_secret: str
    bot_token: str
    app_token: str
    slack_api_url: str
    bot_database_url: URL
    stages: Mapping[str, StageConfig]
    channel_stages: Mapping[str, str]
    protected_stages: frozenset[str]
    operators: frozenset[str]
    approvers: frozenset[str]
    audit_channel: str
    alert_channel: str
    connect_timeout_s: int = 5
    read_statement_timeout_ms: int = 30_000
    lock_timeout_ms: int = 3_000
    outbox_interval_s: float = 5.0
    health: HealthSettings = field(default_factory=HealthSettings)
    rate_limit_per_minute: int = 10
    backup: BackupSettings = field(default_factory=BackupSettings)
    delete_timeout_s: int = 3600
    index_build_timeout_s: int = 7200  # INDEX_BUILD_TIMEOUT_SECONDS: the statement_timeout of CREATE INDEX CONCURRENTLY
    required_approvals: int = 1
    approval_ttl_minutes: int = 30
    approval_drift_percent: float = 1.0
    home_recent_minutes: int = 60  # App Home is refreshed for people who opened it this recently
    home_publish_interval_s: int = 30  # and at most once per person per this many seconds
    no_action_edges: str = "delete"  # NO_ACTION_EDGES: rows tied by ON DELETE NO ACTION are deleted, or block
    schema: SchemaSettings = field(default_factory=SchemaSettings)
    erasure: ErasureSettings = field(default_factory=ErasureSettings)
    edge: EdgeSettings = field(default_factory=EdgeSettings)

    def stage_names(self) -> list[str]:
        return sorted(self.stages)

    def alert_channel_for(self, stage: str) -> str:
        return self.health.stage_alert_channels.get(stage) or self.alert_channel


def load_settings(env: Mapping[str, str] | None = None, *, require_slack: bool = True) -> Settings:
    """Read and validate settings; raise ConfigError with one line on the first problem."""
    env = dict(os.environ if env is None else env)
    slack = read_slack_access(env, require_slack=require_slack)

    raw_bot_db = env.get("BOT_DATABASE_URL", "").strip()
    if not raw_bot_db:
        raise ConfigError("BOT_DATABASE_URL is missing")
    bot_db = parse_database_url("BOT_DATABASE_URL", raw_bot_db)

    protected_raw = env.get("PROTECTED_STAGES")
    protected = frozenset(s.lower() for s in split_csv(protected_raw if protected_raw is not None else "production"))
    stages = read_stages(env, protected)
    try:
        erasure = load_erasure_settings(env)
    except SettingError as exc:
        raise ConfigError(str(exc)) from None
    if not stages:
        hint = ""
        if env.get(SST_APP_VAR, "").strip():
            hint = f" (or link the database in sst: {SST_RESOURCE_HINT})"
        raise ConfigError(
            "no stage is configured: set DATABASE_URL_<STAGE> or DATABASE_SECRET_ARN_<STAGE>, e.g. DATABASE_URL_DEV"
            + hint
        )

    return Settings(
        signing_secret=slack.signing_secret,
        bot_token=slack.bot_token,
        app_token=slack.app_token,
        slack_api_url=slack.api_url,
        bot_database_url=bot_db,
        stages=stages,
        channel_stages=read_channel_stages(env, stages),
        protected_stages=protected,
        operators=read_slack_ids(env, "OPERATORS"),
        approvers=read_slack_ids(env, "APPROVERS"),
        audit_channel=env.get("AUDIT_CHANNEL", "").strip(),
        alert_channel=env.get("ALERT_CHANNEL", "").strip(),
        connect_timeout_s=read_int(env, "STAGE_CONNECT_TIMEOUT", 5, 1, 60),
        read_statement_timeout_ms=read_int(env, "STAGE_STATEMENT_TIMEOUT_MS", 30_000, 100, 3_600_000),
        lock_timeout_ms=read_int(env, "STAGE_LOCK_TIMEOUT_MS", 3_000, 10, 600_000),
        outbox_interval_s=float(read_int(env, "OUTBOX_INTERVAL_SECONDS", 5, 1, 3600)),
        health=read_health(env, stages),
        rate_limit_per_minute=read_int(env, "RATE_LIMIT_PER_MINUTE", 10, 1, 10_000),
        backup=read_backup(env),
        delete_timeout_s=read_int(env, "DELETE_TIMEOUT_SECONDS", 3600, 10, 86_400),
        index_build_timeout_s=read_int(env, "INDEX_BUILD_TIMEOUT_SECONDS", 7200, 10, 86_400),
        required_approvals=read_int(env, "REQUIRED_APPROVALS", 1, 1, 10),
        approval_ttl_minutes=read_int(env, "APPROVAL_TTL_MINUTES", 30, 1, 10_080),
        approval_drift_percent=read_float(env, "APPROVAL_DRIFT_PERCENT", 1.0, 0.0, 100.0),
        home_recent_minutes=read_int(env, "HOME_RECENT_MINUTES", 60, 1, 10_080),
        home_publish_interval_s=read_int(env, "HOME_PUBLISH_INTERVAL_SECONDS", 30, 1, 3600),
        no_action_edges=read_one_of(env, "NO_ACTION_EDGES", ("delete", "block")),
        schema=read_schema(env, stages),
        erasure=erasure,
        edge=load_edge_settings(env),
    )
