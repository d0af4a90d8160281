"""Database credentials of a stage: from its URL, or from AWS Secrets Manager.

A secret is fetched when the first connection is made (never at start-up, so AWS being
slow cannot stop the bot), cached, and fetched again when PostgreSQL answers a new
connection with "password authentication failed" (SQLSTATE 28P01): that is what a
rotation looks like from here. Credentials are never logged; `repr` hides the password.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import boto3
import psycopg
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import Engine, event
from sqlalchemy.engine import URL

from bot.config import SecretRef, StageConfig
from bot.errors import StageUnavailable

log = logging.getLogger(__name__)

AUTH_FAILED = "28P01"
# libpq parameters that may ride along in a URL's query, and the environment variable pg_dump reads for each.
LIBPQ_ENV = {
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "options": "PGOPTIONS",
}


@dataclass(frozen=True)
class DbCredentials:
    host: str
    port: int
    user: str
    password: str | None = field(repr=False)
    dbname: str
    params: Mapping[str, str] = field(default_factory=dict)

    def connect_params(self) -> dict[str, Any]:
        """Keyword arguments for psycopg.connect (what SQLAlchemy's do_connect receives)."""
        values: dict[str, Any] = {"host": self.host, "port": self.port, "user": self.user, "dbname": self.dbname}
        if self.password is not None:
            values["password"] = self.password
        values.update({k: v for k, v in self.params.items() if k in LIBPQ_ENV})
        return values

    def libpq_env(self) -> dict[str, str]:
        """The same credentials as PG* environment variables, for pg_dump (never on its command line)."""
        env = {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user, "PGDATABASE": self.dbname}
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        for key, value in self.params.items():
            if key in LIBPQ_ENV:
                env[LIBPQ_ENV[key]] = value
        return env


class CredentialSource(Protocol):
    refreshable: bool

    def current(self) -> DbCredentials: ...

    def refresh(self, stale: DbCredentials) -> DbCredentials: ...


class UrlCredentials:
    """Fixed credentials from DATABASE_URL_<STAGE> or an sst link."""

    refreshable = False

    def __init__(self, url: URL) -> None:
        query = {k: v if isinstance(v, str) else v[-1] for k, v in url.query.items()}
        self._credentials = DbCredentials(
            host=url.host or "localhost",
            port=url.port or 5432,
            user=url.username or "postgres",
            password=url.password,
            dbname=url.database or "postgres",
            params=query,
        )

    def current(self) -> DbCredentials:
        return self._credentials

    def refresh(self, stale: DbCredentials) -> DbCredentials:
        return self._credentials


def _secrets_client(region: str | None) -> Any:
    config = BotoConfig(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=10)
    return boto3.session.Session().client("secretsmanager", region_name=region, config=config)


class SecretsManagerCredentials:
    """DATABASE_SECRET_ARN_<STAGE>: cached, re-read on authentication failure (rotation)."""

    refreshable = True

    def __init__(
        self,
        stage: str,
        ref: SecretRef,
        *,
        client_factory: Callable[[str | None], Any] = _secrets_client,
        min_refresh_interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stage = stage
        self.ref = ref
        self._client_factory = client_factory
        self._client: Any = None
        self._cached: DbCredentials | None = None
        self._futile_at = float("-inf")
        self._min_interval = min_refresh_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self.fetches = 0

    def current(self) -> DbCredentials:
        with self._lock:
            if self._cached is None:
                self._cached = self._fetch()
            return self._cached

    def refresh(self, stale: DbCredentials) -> DbCredentials:
        """Re-read the secret, unless another thread already did, or a re-read just found nothing new.

        The second rule keeps a wrong password from turning every connection attempt into an AWS call.
        """
        with self._lock:
            if self._cached is not None and self._cached != stale:
                return self._cached
            if self._clock() - self._futile_at < self._min_interval:
                return stale
            fresh = self._fetch()
            if fresh == self._cached:
                self._futile_at = self._clock()
            self._cached = fresh
            return fresh

    def _unavailable(self, why: str) -> StageUnavailable:
        return StageUnavailable(f"stage {self.stage} is unreachable (its database secret {why})")

    def _fetch(self) -> DbCredentials:
        if self._client is None:
            self._client = self._client_factory(self.ref.region)
        try:
            response = self._client.get_secret_value(SecretId=self.ref.secret_id)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            raise self._unavailable(f"could not be read: {code}") from None
        except BotoCoreError as exc:
            raise self._unavailable(f"could not be read: {type(exc).__name__}") from None
        self.fetches += 1
        log.info("stage credentials fetched", extra={"stage": self.stage, "fetches": self.fetches})
        return self._parse(response.get("SecretString"))

    def _parse(self, raw: str | None) -> DbCredentials:
        try:
            secret = json.loads(raw or "")
        except ValueError:
            secret = None
        if not isinstance(secret, dict):
            raise self._unavailable("is not a JSON object")
        user = secret.get("username") or secret.get("user")
        password = secret.get("password")
        host = self.ref.host or secret.get("host")
        dbname = self.ref.dbname or secret.get("dbname") or secret.get("database")
        port_value = self.ref.port or secret.get("port") or 5432
        if not isinstance(user, str) or not isinstance(password, str):
            raise self._unavailable("has no username and password")
        missing = [name for name, value in (("host", host), ("dbname", dbname)) if not value]
        if missing:
            hints = ", ".join(f"DATABASE_{m.replace('dbname', 'name').upper()}_{self.stage.upper()}" for m in missing)
            raise self._unavailable(f"has no {' or '.join(missing)}; set {hints}")
        try:
            port = int(port_value)
        except (TypeError, ValueError):
            raise self._unavailable("has a port that is not a number") from None
        return DbCredentials(host=str(host), port=port, user=user, password=password, dbname=str(dbname))


def credential_source(config: StageConfig) -> CredentialSource:
    if config.secret is not None:
        return SecretsManagerCredentials(config.name, config.secret)
    assert config.url is not None, "a stage without a secret has a URL"
    return UrlCredentials(config.url)


def is_auth_failure(exc: BaseException) -> bool:
    if getattr(exc, "sqlstate", None) == AUTH_FAILED:
        return True
    return "password authentication failed" in str(exc).lower()


def attach_credentials(engine: Engine, source: CredentialSource) -> None:
    """Every new connection gets the current credentials; one refresh and retry after an auth failure."""

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, conn_rec: Any, cargs: tuple[Any, ...], cparams: dict[str, Any]) -> Any:
        credentials = source.current()
        cparams.update(credentials.connect_params())
        try:
            return dialect.connect(*cargs, **cparams)
        except psycopg.OperationalError as exc:
            if not source.refreshable or not is_auth_failure(exc):
                raise
            fresh = source.refresh(credentials)
            if fresh == credentials:
                raise
            log.info("stage credentials rotated; reconnecting with the new ones")
            cparams.update(fresh.connect_params())
            return dialect.connect(*cargs, **cparams)
