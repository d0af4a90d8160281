"""Settings from the environment.

Every problem is reported as one line that names the variable and never echoes its value,
because values here are tokens and database URLs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

DEFAULT_SLACK_API_URL = "https://slack.com/api/"
STAGE_URL_PREFIX = "DATABASE_URL_"
STAGE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
SLACK_ID_RE = re.compile(r"^[A-Z][A-Z0-9]{2,31}$")
PG_DRIVERS = {"postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2", "postgresql+pg8000"}


class ConfigError(Exception):
    """A configuration problem, worded for a one-line startup failure."""


@dataclass(frozen=True)
class StageConfig:
    name: str
    url: URL
    protected: bool


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

    def stage_names(self) -> list[str]:
        return sorted(self.stages)


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


def _stages(env: Mapping[str, str], protected: frozenset[str]) -> dict[str, StageConfig]:
    stages: dict[str, StageConfig] = {}
    for key, raw in env.items():
        if not key.startswith(STAGE_URL_PREFIX) or not raw.strip():
            continue
        name = key[len(STAGE_URL_PREFIX) :].lower()
        if not STAGE_NAME_RE.match(name):
            raise ConfigError(f"{key} is malformed: stage names are letters, digits and underscores")
        stages[name] = StageConfig(name=name, url=parse_database_url(key, raw), protected=name in protected)
    return stages


def _channel_stages(env: Mapping[str, str], stages: Mapping[str, StageConfig]) -> dict[str, str]:
    bindings: dict[str, str] = {}
    for pair in _csv(env.get("CHANNEL_STAGES", "")):
        channel, sep, stage = pair.partition("=")
        channel, stage = channel.strip(), stage.strip().lower()
        if not sep or not SLACK_ID_RE.match(channel) or not stage:
            raise ConfigError("CHANNEL_STAGES is malformed: expected CHANNEL_ID=stage pairs, comma-separated")
        if stage not in stages:
            raise ConfigError(f"CHANNEL_STAGES names stage {stage!r}, which has no DATABASE_URL_{stage.upper()}")
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
    if not stages:
        raise ConfigError("no stage is configured: set DATABASE_URL_<STAGE>, e.g. DATABASE_URL_DEV")

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
    )
