"""Settings from the environment.

Every problem is reported as one line that names the variable and never echoes its value,
because values here are tokens and database URLs.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from bot.edge_config import EdgeSettings, load_edge_settings
from bot.erasure.settings import ErasureSettings, SettingError, load_erasure_settings
from bot.health.thresholds import CheckThresholds, load_thresholds

DEFAULT_SLACK_API_URL = "https://slack.com/api/"
STAGE_URL_PREFIX = "DATABASE_URL_"
ALERT_CHANNEL_PREFIX = "ALERT_CHANNEL_"
ALERT_REPEAT_PREFIX = "ALERT_REPEAT_MINUTES_"
DEFAULT_REPEAT_MINUTES = 240  # on protected stages, when ALERT_REPEAT_MINUTES is not set
STAGE_SECRET_PREFIX = "DATABASE_SECRET_ARN_"  # noqa: S105 - a variable name, not a secret
RDS_SNAPSHOT_PREFIX = "RDS_SNAPSHOT_IDENTIFIER_"
SST_APP_VAR = "SST_RESOURCE_App"
SST_RESOURCE_PREFIX = "SST_RESOURCE_"
# The platform's sst.config.ts links `new sst.aws.Postgres("Postgres", ...)`, so `sst shell` sets SST_RESOURCE_Postgres.
SST_DEFAULT_DATABASE_RESOURCE = "Postgres"
SST_LINK_KEYS = ("host", "port", "username", "password", "database")
SST_RESOURCE_HINT = (
    "no SST_RESOURCE_<Name> holds a Postgres link (host, port, username, password, database); "
    "set SST_DATABASE_RESOURCE to the link's name"
)
SECRET_ID_RE = re.compile(r"^[A-Za-z0-9/_+=.@:!-]{1,2048}\Z")
HOST_RE = re.compile(r"^[A-Za-z0-9._:-]{1,253}\Z")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
PREFIX_RE = re.compile(r"^[A-Za-z0-9!_.*'()/-]{0,200}\Z")
KMS_KEY_RE = re.compile(r"^[A-Za-z0-9:/_-]{1,2048}\Z")
RDS_ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,62}\Z")
STAGE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}\Z")
SLACK_ID_RE = re.compile(r"^[A-Z][A-Z0-9]{2,31}\Z")
PG_DRIVERS = {"postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2", "postgresql+pg8000"}


class ConfigError(Exception):
    """A configuration problem, worded for a one-line startup failure."""


@dataclass(frozen=True)
class SecretRef:
    """A Secrets Manager secret with the stage's credentials; host/port/dbname may come from config."""

    secret_id: str
    host: str | None = None
    port: int | None = None
    dbname: str | None = None

    @property
    def region(self) -> str | None:
        parts = self.secret_id.split(":")
        return parts[3] if len(parts) > 4 and parts[0] == "arn" and parts[3] else None


@dataclass(frozen=True)
class RdsTarget:
    """What to snapshot before a backup: an RDS instance or an Aurora cluster."""

    kind: Literal["instance", "cluster"]
    identifier: str


@dataclass(frozen=True)
class StageConfig:
    name: str
    url: URL | None  # None when the credentials come from a secret (fetched when connecting)
    protected: bool
    secret: SecretRef | None = None
    source: Literal["url", "secret", "sst"] = "url"
    rds_snapshot: RdsTarget | None = None
    # sst only: the variable the credentials came from, and why that one ("default", "named", "detected").
    sst_link: str | None = None
    sst_choice: str | None = None

    @property
    def source_detail(self) -> str:
        """How check-config names where the credentials come from (never the values)."""
        if self.source == "sst" and self.sst_link:
            return f"sst: {self.sst_link}, {self.sst_choice}"
        return self.source


@dataclass(frozen=True)
class BackupSettings:
    bucket: str | None = None
    prefix: str = ""
    kms_key_id: str | None = None
    directory: Path | None = None
    retention_days: int | None = None
    snapshot_wait_s: int = 1800
    progress_interval_s: float = 2.0
    pg_dump: Path | None = None  # PG_DUMP: this pg_dump for full backups, else the newest suitable one installed

    @property
    def destination(self) -> str:
        if self.bucket:
            return f"s3://{self.bucket}/{self.prefix}" + (" (SSE-KMS)" if self.kms_key_id else "")
        if self.directory is not None:
            return f"directory {self.directory}"
        return "none"


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


@dataclass(frozen=True)
class SchemaSettings:
    """Drizzle bookkeeping and schema drift (issue 14): where migrations live, what to compare against."""

    migrations_dir: Path | None = None  # the platform's migrations folder as deployed
    migrations_schema: str = "drizzle"
    migrations_table: str = "__drizzle_migrations"
    reference_stage: str | None = "staging"  # None: not configured here, so no lag check or impact comparison
    lag_alert_hours: int = 72
    drift_ignore: tuple[str, ...] = ()  # schema/table globs that are not the app's (Inngest shares the database)


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


def _csv(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def _slack_ids(env: Mapping[str, str], name: str) -> frozenset[str]:
    ids = _csv(env.get(name, ""))
    for value in ids:
        if not SLACK_ID_RE.match(value):
            raise ConfigError(f"{name} is malformed: expected comma-separated Slack IDs such as U0123ABCD")
    return frozenset(ids)


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} is malformed: expected a whole number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} is out of range: expected {low}..{high}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} is malformed: expected a number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} is out of range: expected {low:g}..{high:g}")
    return value


def _one_of(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (the first is the default)."""
    raw = env.get(name, "").strip().lower() or choices[0]
    if raw not in choices:
        raise ConfigError(f"{name} is malformed: expected {' or '.join(choices)}")
    return raw


def _switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} is malformed: expected on or off")


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


def _health(env: Mapping[str, str], stages: Mapping[str, StageConfig]) -> HealthSettings:
    channels = _per_stage(env, ALERT_CHANNEL_PREFIX, stages)
    for stage, channel in channels.items():
        if not SLACK_ID_RE.match(channel):
            raise ConfigError(f"{ALERT_CHANNEL_PREFIX}{stage.upper()} is malformed: expected a channel ID")
    _per_stage(env, ALERT_REPEAT_PREFIX, stages)  # a suffix naming no stage is an error
    repeat = _int(env, "ALERT_REPEAT_MINUTES", 0, 0, 525_600) if env.get("ALERT_REPEAT_MINUTES", "").strip() else None
    # Per stage: its own variable, else ALERT_REPEAT_MINUTES, else 240 on protected stages and never elsewhere.
    repeats = {
        stage: _int(
            env,
            f"{ALERT_REPEAT_PREFIX}{stage.upper()}",
            repeat if repeat is not None else (DEFAULT_REPEAT_MINUTES if config.protected else 0),
            0,
            525_600,
        )
        for stage, config in stages.items()
    }
    warn = _int(env, "CONNECTIONS_WARN_PERCENT", 80, 1, 100)
    critical = _int(env, "CONNECTIONS_CRITICAL_PERCENT", 95, 1, 100)
    if critical < warn:
        raise ConfigError("CONNECTIONS_CRITICAL_PERCENT is out of range: expected at least CONNECTIONS_WARN_PERCENT")
    return HealthSettings(
        enabled=_switch(env, "HEALTH_CHECKS", True),
        interval_s=_int(env, "HEALTH_INTERVAL_SECONDS", 60, 10, 86_400),
        slow_query_interval_s=_int(env, "SLOW_QUERY_INTERVAL_SECONDS", 300, 10, 86_400),
        maintenance_interval_s=_int(env, "MAINTENANCE_INTERVAL_SECONDS", 3600, 60, 604_800),
        fk_index_interval_s=_int(env, "FK_INDEX_INTERVAL_SECONDS", 86_400, 60, 604_800),
        statement_timeout_ms=_int(env, "HEALTH_STATEMENT_TIMEOUT_MS", 3_000, 100, 60_000),
        unreachable_after=_int(env, "UNREACHABLE_AFTER_FAILURES", 2, 1, 100),
        connections_warn_pct=warn,
        connections_critical_pct=critical,
        long_query_s=_int(env, "LONG_QUERY_SECONDS", 300, 1, 86_400),
        idle_in_transaction_s=_int(env, "IDLE_IN_TRANSACTION_SECONDS", 300, 1, 86_400),
        blocked_s=_int(env, "BLOCKED_QUERY_SECONDS", 60, 1, 86_400),
        slow_query_ms=_int(env, "SLOW_QUERY_MS", 1_000, 1, 3_600_000),
        slow_query_min_calls=_int(env, "SLOW_QUERY_MIN_CALLS", 5, 1, 1_000_000),
        wraparound_warn_pct=_int(env, "WRAPAROUND_WARN_PERCENT", 50, 1, 99),
        latency_warn_ms=_int(env, "STAGE_LATENCY_WARN_MS", 1_000, 0, 600_000),
        clear_after_runs=_int(env, "ALERT_CLEAR_AFTER_RUNS", 2, 1, 100),
        failing_after_runs=_int(env, "CHECK_FAILING_AFTER_RUNS", 3, 1, 100),
        repeat_minutes=repeat,
        stage_repeat_minutes=repeats,
        stage_alert_channels=channels,
        checks=load_thresholds(env),
    )


def parse_database_url(name: str, raw: str) -> URL:
    """Accept URLs as people write them and pin the psycopg 3 driver."""
    try:
        url = make_url(raw.strip())
    except (ArgumentError, ValueError):
        raise ConfigError(f"{name} is malformed: expected postgresql://user:pass@host:port/db") from None
    if url.drivername not in PG_DRIVERS:
        raise ConfigError(f"{name} is malformed: only postgresql:// URLs are supported")
    if not url.database:
        raise ConfigError(f"{name} is malformed: the URL names no database")
    return url.set(drivername="postgresql+psycopg")


def _stage_name(key: str, prefix: str) -> str:
    name = key[len(prefix) :].lower()
    if not STAGE_NAME_RE.match(name):
        raise ConfigError(f"{key} is malformed: stage names are letters, digits and underscores")
    return name


def _secret_ref(env: Mapping[str, str], key: str, name: str) -> SecretRef:
    raw = env[key].strip()
    if not SECRET_ID_RE.match(raw):
        raise ConfigError(f"{key} is malformed: expected a Secrets Manager ARN")
    suffix = name.upper()
    host = env.get(f"DATABASE_HOST_{suffix}", "").strip() or None
    if host is not None and not HOST_RE.match(host):
        raise ConfigError(f"DATABASE_HOST_{suffix} is malformed: expected a host name")
    port = _int(env, f"DATABASE_PORT_{suffix}", 0, 1, 65535) or None
    dbname = env.get(f"DATABASE_NAME_{suffix}", "").strip() or None
    return SecretRef(secret_id=raw, host=host, port=port, dbname=dbname)


def _json_object(env: Mapping[str, str], name: str, expected: str) -> dict[str, object]:
    try:
        value = json.loads(env[name])
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ConfigError(f"{name} is malformed: expected JSON with {expected}")
    return value


def _sst_stage(
    env: Mapping[str, str], taken: Mapping[str, StageConfig], protected: frozenset[str]
) -> StageConfig | None:
    """The stage of `sst shell --stage S`, from the linked Postgres resource, unless S is configured otherwise."""
    if not env.get(SST_APP_VAR, "").strip():
        return None
    app = _json_object(env, SST_APP_VAR, '"name" and "stage"')
    stage = str(app.get("stage") or "").strip().lower().replace("-", "_")
    if not STAGE_NAME_RE.match(stage):
        raise ConfigError(f"{SST_APP_VAR} is malformed: its stage must be letters, digits, - and _")
    if stage in taken:
        return None
    chosen = _sst_link_var(env)
    if chosen is None:
        return None
    var, choice = chosen
    link = _json_object(env, var, "host, port, username, password and database")
    values = {key: link.get(key) for key in ("host", "port", "username", "password", "database")}
    if not all(isinstance(values[k], str) and values[k] for k in ("host", "username", "database")):
        raise ConfigError(f"{var} is malformed: expected JSON with host, port, username, password and database")
    try:
        port = int(str(values["port"] or 5432))
    except ValueError:
        raise ConfigError(f"{var} is malformed: its port is not a number") from None
    url = URL.create(
        "postgresql+psycopg",
        username=str(values["username"]),
        password=str(values["password"]) if values["password"] is not None else None,
        host=str(values["host"]),
        port=port,
        database=str(values["database"]),
    )
    return StageConfig(name=stage, url=url, protected=stage in protected, source="sst", sst_link=var, sst_choice=choice)


def _looks_like_postgres_link(raw: str) -> bool:
    try:
        value = json.loads(raw)
    except ValueError:
        return False
    return isinstance(value, dict) and all(key in value for key in SST_LINK_KEYS)


def _sst_link_var(env: Mapping[str, str]) -> tuple[str, str] | None:
    """Which SST_RESOURCE_<Name> holds the database link, and why: named, the default, or the only one shaped so."""
    explicit = env.get("SST_DATABASE_RESOURCE", "").strip()
    if explicit and not re.match(r"^[A-Za-z][A-Za-z0-9]{0,63}\Z", explicit):
        raise ConfigError("SST_DATABASE_RESOURCE is malformed: expected a resource name such as Postgres")
    if explicit:
        var = f"{SST_RESOURCE_PREFIX}{explicit}"
        if not env.get(var, "").strip():
            raise ConfigError(f"{var} is missing: the sst shell links no resource named {explicit}")
        return var, "named by SST_DATABASE_RESOURCE"
    default = f"{SST_RESOURCE_PREFIX}{SST_DEFAULT_DATABASE_RESOURCE}"
    if env.get(default, "").strip():
        return default, "the platform's default link"
    shaped = sorted(
        key
        for key, raw in env.items()
        if key.startswith(SST_RESOURCE_PREFIX) and key != SST_APP_VAR and _looks_like_postgres_link(raw)
    )
    if len(shaped) > 1:
        raise ConfigError(
            f"several sst links look like a Postgres database ({', '.join(shaped)}); "
            "set SST_DATABASE_RESOURCE to the one to use"
        )
    return (shaped[0], "the only linked resource shaped like a Postgres link") if shaped else None


def _rds_target(key: str, raw: str) -> RdsTarget:
    kind, sep, identifier = raw.strip().partition(":")
    if not sep:
        kind, identifier = "instance", kind
    if kind not in ("instance", "cluster") or not RDS_ID_RE.match(identifier):
        raise ConfigError(f"{key} is malformed: expected instance:<db-instance-id> or cluster:<db-cluster-id>")
    return RdsTarget(kind=kind, identifier=identifier)  # type: ignore[arg-type]


def _stages(env: Mapping[str, str], protected: frozenset[str]) -> dict[str, StageConfig]:
    stages: dict[str, StageConfig] = {}
    for key, raw in env.items():
        if key.startswith(STAGE_URL_PREFIX) and raw.strip():
            name = _stage_name(key, STAGE_URL_PREFIX)
            stages[name] = StageConfig(name=name, url=parse_database_url(key, raw), protected=name in protected)
    for key, raw in env.items():
        if key.startswith(STAGE_SECRET_PREFIX) and raw.strip():
            name = _stage_name(key, STAGE_SECRET_PREFIX)
            if name in stages:
                raise ConfigError(f"{key} and {STAGE_URL_PREFIX}{name.upper()} are both set; keep one")
            stages[name] = StageConfig(
                name=name,
                url=None,
                protected=name in protected,
                secret=_secret_ref(env, key, name),
                source="secret",
            )
    sst = _sst_stage(env, stages, protected)
    if sst is not None:
        stages[sst.name] = sst
    for key, raw in env.items():
        if key.startswith(RDS_SNAPSHOT_PREFIX) and raw.strip():
            name = key[len(RDS_SNAPSHOT_PREFIX) :].lower()
            if name not in stages:
                raise ConfigError(f"{key} names stage {name!r}, which is not configured")
            stages[name] = StageConfig(**{**stages[name].__dict__, "rds_snapshot": _rds_target(key, raw)})
    return stages


def _backup_settings(env: Mapping[str, str]) -> BackupSettings:
    bucket = env.get("BACKUP_BUCKET", "").strip() or None
    if bucket is not None and not BUCKET_RE.match(bucket):
        raise ConfigError("BACKUP_BUCKET is malformed: expected an S3 bucket name")
    prefix = env.get("BACKUP_PREFIX", "").strip().strip("/")
    if not PREFIX_RE.match(prefix) or ".." in prefix.split("/"):
        raise ConfigError("BACKUP_PREFIX is malformed: expected a key prefix such as mcp-ops/backups")
    kms = env.get("BACKUP_KMS_KEY_ID", "").strip() or None
    if kms is not None and not KMS_KEY_RE.match(kms):
        raise ConfigError("BACKUP_KMS_KEY_ID is malformed: expected a KMS key id, alias or ARN")
    if kms is not None and bucket is None:
        raise ConfigError("BACKUP_KMS_KEY_ID is set without BACKUP_BUCKET")
    raw_dir = env.get("BACKUP_DIR", "").strip()
    retention = _int(env, "BACKUP_RETENTION_DAYS", 0, 1, 36_500) or None
    if retention is not None and bucket is not None:
        raise ConfigError("BACKUP_RETENTION_DAYS applies to BACKUP_DIR only: for S3, use a lifecycle rule")
    return BackupSettings(
        bucket=bucket,
        prefix=f"{prefix}/" if prefix else "",
        kms_key_id=kms,
        directory=Path(raw_dir).expanduser() if raw_dir and bucket is None else None,
        retention_days=retention,
        snapshot_wait_s=_int(env, "RDS_SNAPSHOT_WAIT_SECONDS", 1800, 10, 7200),
        progress_interval_s=float(_int(env, "BACKUP_PROGRESS_SECONDS", 2, 1, 600)),
        pg_dump=Path(env["PG_DUMP"].strip()).expanduser() if env.get("PG_DUMP", "").strip() else None,
    )


IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}\Z")
IGNORE_PATTERN_RE = re.compile(r"^[A-Za-z0-9_$*?.\[\]-]{1,200}\Z")


def _schema_settings(env: Mapping[str, str], stages: Mapping[str, StageConfig]) -> SchemaSettings:
    raw_dir = env.get("MIGRATIONS_DIR", "").strip()
    directory = Path(raw_dir).expanduser() if raw_dir else None
    if directory is not None and not directory.is_dir():
        raise ConfigError("MIGRATIONS_DIR is not a directory: expected the platform's migrations folder")
    names = {}
    for var, default in (("MIGRATIONS_SCHEMA", "drizzle"), ("MIGRATIONS_TABLE", "__drizzle_migrations")):
        names[var] = env.get(var, "").strip() or default
        if not IDENTIFIER_RE.match(names[var]):
            raise ConfigError(f"{var} is malformed: expected a PostgreSQL identifier such as {default}")
    reference: str | None = env.get("MIGRATION_REFERENCE_STAGE", "").strip().lower()
    if reference and reference not in stages:
        raise ConfigError(f"MIGRATION_REFERENCE_STAGE names stage {reference!r}, which is not configured")
    if not reference:
        reference = "staging" if "staging" in stages else None
    patterns = _csv(env.get("DRIFT_IGNORE", ""))
    for pattern in patterns:
        if not IGNORE_PATTERN_RE.match(pattern):
            raise ConfigError("DRIFT_IGNORE is malformed: expected comma-separated schema.table patterns")
    return SchemaSettings(
        migrations_dir=directory,
        migrations_schema=names["MIGRATIONS_SCHEMA"],
        migrations_table=names["MIGRATIONS_TABLE"],
        reference_stage=reference,
        lag_alert_hours=_int(env, "MIGRATION_LAG_ALERT_HOURS", 72, 1, 87_600),
        drift_ignore=tuple(patterns),
    )


def _channel_stages(env: Mapping[str, str], stages: Mapping[str, StageConfig]) -> dict[str, str]:
    bindings: dict[str, str] = {}
    for pair in _csv(env.get("CHANNEL_STAGES", "")):
        channel, sep, stage = pair.partition("=")
        channel, stage = channel.strip(), stage.strip().lower()
        if not sep or not SLACK_ID_RE.match(channel) or not stage:
            raise ConfigError("CHANNEL_STAGES is malformed: expected CHANNEL_ID=stage pairs, comma-separated")
        if stage not in stages:
            raise ConfigError(f"CHANNEL_STAGES names stage {stage!r}, which is not configured")
        if stages[stage].protected:
            raise ConfigError(f"CHANNEL_STAGES binds a channel to protected stage {stage!r}; name it explicitly")
        bindings[channel] = stage
    return bindings


def load_settings(env: Mapping[str, str] | None = None, *, require_slack: bool = True) -> Settings:
    """Read and validate settings; raise ConfigError with one line on the first problem."""
    env = dict(os.environ if env is None else env)
    signing_secret = env.get("SLACK_SIGNING_SECRET", "").strip()
    bot_token = env.get("SLACK_BOT_TOKEN", "").strip()
    if require_slack and not signing_secret:
        raise ConfigError("SLACK_SIGNING_SECRET is missing")
    if require_slack and not bot_token:
        raise ConfigError("SLACK_BOT_TOKEN is missing")
    if bot_token and not bot_token.startswith("xoxb-"):
        raise ConfigError("SLACK_BOT_TOKEN is malformed: expected a bot token starting with xoxb-")
    app_token = env.get("SLACK_APP_TOKEN", "").strip()
    if app_token and not app_token.startswith("xapp-"):
        raise ConfigError("SLACK_APP_TOKEN is malformed: expected an app token starting with xapp-")
    api_url = env.get("SLACK_API_URL", "").strip() or DEFAULT_SLACK_API_URL
    if not re.match(r"^https?://[^\s/]+", api_url):
        raise ConfigError("SLACK_API_URL is malformed: expected an http(s) URL")
    if not api_url.endswith("/"):
        api_url += "/"

    raw_bot_db = env.get("BOT_DATABASE_URL", "").strip()
    if not raw_bot_db:
        raise ConfigError("BOT_DATABASE_URL is missing")
    bot_db = parse_database_url("BOT_DATABASE_URL", raw_bot_db)

    protected_raw = env.get("PROTECTED_STAGES")
    protected = frozenset(s.lower() for s in _csv(protected_raw if protected_raw is not None else "production"))
    stages = _stages(env, protected)
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
        signing_secret=signing_secret,
        bot_token=bot_token,
        app_token=app_token,
        slack_api_url=api_url,
        bot_database_url=bot_db,
        stages=stages,
        channel_stages=_channel_stages(env, stages),
        protected_stages=protected,
        operators=_slack_ids(env, "OPERATORS"),
        approvers=_slack_ids(env, "APPROVERS"),
        audit_channel=env.get("AUDIT_CHANNEL", "").strip(),
        alert_channel=env.get("ALERT_CHANNEL", "").strip(),
        connect_timeout_s=_int(env, "STAGE_CONNECT_TIMEOUT", 5, 1, 60),
        read_statement_timeout_ms=_int(env, "STAGE_STATEMENT_TIMEOUT_MS", 30_000, 100, 3_600_000),
        lock_timeout_ms=_int(env, "STAGE_LOCK_TIMEOUT_MS", 3_000, 10, 600_000),
        outbox_interval_s=float(_int(env, "OUTBOX_INTERVAL_SECONDS", 5, 1, 3600)),
        health=_health(env, stages),
        rate_limit_per_minute=_int(env, "RATE_LIMIT_PER_MINUTE", 10, 1, 10_000),
        backup=_backup_settings(env),
        delete_timeout_s=_int(env, "DELETE_TIMEOUT_SECONDS", 3600, 10, 86_400),
        index_build_timeout_s=_int(env, "INDEX_BUILD_TIMEOUT_SECONDS", 7200, 10, 86_400),
        required_approvals=_int(env, "REQUIRED_APPROVALS", 1, 1, 10),
        approval_ttl_minutes=_int(env, "APPROVAL_TTL_MINUTES", 30, 1, 10_080),
        approval_drift_percent=_float(env, "APPROVAL_DRIFT_PERCENT", 1.0, 0.0, 100.0),
        home_recent_minutes=_int(env, "HOME_RECENT_MINUTES", 60, 1, 10_080),
        home_publish_interval_s=_int(env, "HOME_PUBLISH_INTERVAL_SECONDS", 30, 1, 3600),
        no_action_edges=_one_of(env, "NO_ACTION_EDGES", ("delete", "block")),
        schema=_schema_settings(env, stages),
        erasure=erasure,
        edge=load_edge_settings(env),
    )
