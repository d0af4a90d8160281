"""AWS for the backup tests: moto in server mode on a free port, reached through AWS_ENDPOINT_URL."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer
from sqlalchemy import create_engine

from bot.audit import AuditLog
from bot.backups.index import BackupIndex
from bot.backups.store import LocalStore, S3Store
from bot.botdb import create_bot_engine, migrate
from bot.config import parse_database_url

REGION = "eu-west-1"


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Dummy credentials and the endpoint for the default credential chain; moto state reset per test."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")).read()
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    yield moto_server


@pytest.fixture
def make_bucket(aws: str) -> Callable[[str], str]:
    def make(name: str) -> str:
        boto3.client("s3").create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
        return name

    return make


@pytest.fixture
def s3_store(make_bucket: Callable[[str], str]) -> S3Store:
    return S3Store(make_bucket("mcp-ops-backups"), prefix="team/")


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "backups")


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> LocalStore | S3Store:
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture
def bot_engine(bot_db_url: str) -> Iterator[object]:
    engine = create_bot_engine(parse_database_url("BOT_DATABASE_URL", bot_db_url))
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def index(bot_engine) -> BackupIndex:
    return BackupIndex(bot_engine)


@pytest.fixture
def audit(bot_engine) -> AuditLog:
    return AuditLog(bot_engine, "")


@pytest.fixture
def stage_engine(stage_db):
    """The stage database through the same driver the bot uses (psycopg 3)."""
    engine = create_engine(parse_database_url("test", stage_db.url))
    yield engine
    engine.dispose()
