"""Where each stage's database is: URLs, Secrets Manager ARNs, the `sst shell` link, RDS snapshot ids.

Kept apart because these variables hold credentials: every problem names the variable, never its value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from bot.config.values import ConfigError, read_int

STAGE_URL_PREFIX = "DATABASE_URL_"
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
RDS_ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,62}\Z")
STAGE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}\Z")
PG_DRIVERS = {"postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2", "postgresql+pg8000"}


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
    port = read_int(env, f"DATABASE_PORT_{suffix}", 0, 1, 65535) or None
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


def read_stages(env: Mapping[str, str], protected: frozenset[str]) -> dict[str, StageConfig]:
    """Every configured stage: URLs, then secrets, then the `sst shell` link; then their RDS snapshot targets."""
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
