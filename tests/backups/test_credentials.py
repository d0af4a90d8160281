"""Stage credentials from AWS Secrets Manager (moto server) and from an `sst shell` link."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from unittest.mock import patch

import boto3
import psycopg
import pytest

from bot.backups.full import run_full_backup
from bot.backups.index import BackupIndex
from bot.backups.store import LocalStore
from bot.cli import main
from bot.config import ConfigError, load_settings
from bot.credentials import SecretsManagerCredentials
from bot.errors import StageUnavailable
from bot.localpg import LocalPostgres
from bot.stages import Stage
from tests.conftest import TEST_SPEC, dead_database_url, unique_name

PW1, PW2, PW3 = "pw-Alpha-7731", "pw-Bravo-4410", "pw-Charlie-9025"


@pytest.fixture(scope="module")
def scram_pg():
    """A cluster that really checks passwords (the shared one trusts 127.0.0.1)."""
    base = Path(tempfile.mkdtemp(prefix="mcp-ops-scram-pg-"))
    base.chmod(0o755)
    cluster = LocalPostgres(
        base / "pg", fast_unsafe=True, settings={"password_encryption": "scram-sha-256", "shared_buffers": "32MB"}
    )
    cluster.start()
    cluster.require_passwords()
    yield cluster
    cluster.destroy()
    shutil.rmtree(base, ignore_errors=True)


def admin(cluster: LocalPostgres, statement: str, dbname: str = "postgres") -> None:
    with psycopg.connect(cluster.dsn(dbname), autocommit=True) as conn:
        conn.execute(statement)


def make_secret(name: str, value: dict) -> str:
    return boto3.client("secretsmanager").create_secret(Name=name, SecretString=json.dumps(value))["ARN"]


def stage_from(env: dict[str, str], name: str = "dev") -> Stage:
    settings = load_settings({"BOT_DATABASE_URL": "postgresql://u@127.0.0.1/bot", **env}, require_slack=False)
    return Stage(settings.stages[name], settings)


def test_a_rotated_secret_is_fetched_again_on_authentication_failure(scram_pg, aws, caplog):
    role, db = unique_name("app"), unique_name("appdb")
    admin(scram_pg, f"CREATE ROLE {role} LOGIN PASSWORD '{PW1}'")
    scram_pg.create_database(db)
    admin(scram_pg, f"CREATE TABLE t (id int); INSERT INTO t VALUES (1); GRANT SELECT ON t TO {role}", db)
    arn = make_secret(
        "dev/platform-db",
        {"username": role, "password": PW1, "host": "127.0.0.1", "port": scram_pg.port, "dbname": db},
    )
    caplog.set_level(logging.DEBUG, logger="bot")
    stage = stage_from({"DATABASE_SECRET_ARN_DEV": arn})
    source = stage.credentials
    assert isinstance(source, SecretsManagerCredentials) and source.ref.region == "eu-west-1"
    try:
        assert stage.ping() >= 0
        assert source.fetches == 1
        with stage.read() as conn:  # the cached credentials serve every new connection
            assert conn.exec_driver_sql("SELECT current_user").scalar() == role

        # Rotation: the password changes in the database and in the secret; new connections fail once, then work.
        admin(scram_pg, f"ALTER ROLE {role} PASSWORD '{PW2}'")
        boto3.client("secretsmanager").put_secret_value(
            SecretId=arn,
            SecretString=json.dumps(
                {"username": role, "password": PW2, "host": "127.0.0.1", "port": scram_pg.port, "dbname": db}
            ),
        )
        stage.dispose()
        assert stage.ping() >= 0
        assert source.fetches == 2

        # A password the secret does not know: one refresh, then a plain "authentication failed".
        admin(scram_pg, f"ALTER ROLE {role} PASSWORD '{PW3}'")
        stage.dispose()
        with pytest.raises(StageUnavailable) as caught:
            stage.ping()
        assert caught.value.message == "stage dev is unreachable (authentication failed)"
        assert source.fetches <= 3
    finally:
        stage.dispose()
        scram_pg.drop_database(db)
        admin(scram_pg, f"DROP ROLE {role}")
    logged = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records if r.name.startswith("bot"))
    assert PW1 not in logged and PW2 not in logged and PW3 not in logged
    assert PW2 not in repr(source.current())


def test_pg_dump_of_a_secret_stage_authenticates_through_the_environment(scram_pg, aws, bot_engine, tmp_path):
    role, db = unique_name("dumper"), unique_name("dumpdb")
    admin(scram_pg, f"CREATE ROLE {role} LOGIN PASSWORD '{PW1}'")
    scram_pg.create_database(db)
    admin(scram_pg, f"CREATE TABLE t (id int); GRANT SELECT ON t TO {role}", db)
    # An RDS-managed secret holds only username and password; host, port and database come from config.
    arn = make_secret("rds!db-1234", {"username": role, "password": PW1})
    stage = stage_from(
        {
            "DATABASE_SECRET_ARN_DEV": arn,
            "DATABASE_HOST_DEV": "127.0.0.1",
            "DATABASE_PORT_DEV": str(scram_pg.port),
            "DATABASE_NAME_DEV": db,
        }
    )
    store = LocalStore(tmp_path / "b")
    try:
        state = run_full_backup(
            stage, store, BackupIndex(bot_engine), actor="UOPERATOR1", lock_timeout_ms=3000, connect_timeout_s=5
        )
    finally:
        stage.dispose()
        scram_pg.drop_database(db)
        admin(scram_pg, f"DROP ROLE {role}")
    assert state.state == "complete" and state.bytes > 0
    [dump] = [p for p in (tmp_path / "b").rglob("*.dump")]
    assert dump.read_bytes().startswith(b"PGDMP")


def test_a_secret_stage_answers_slash_commands(make_bot, stage_db, pg, aws):
    role = unique_name("reader")
    admin(pg, f"CREATE ROLE {role} LOGIN PASSWORD '{PW1}'; GRANT pg_read_all_data TO {role}")
    try:
        arn = make_secret(
            "staging/platform",
            {"username": role, "password": PW1, "host": "127.0.0.1", "port": pg.port, "dbname": stage_db.name},
        )
        bot = make_bot({}, DATABASE_SECRET_ARN_STAGING=arn)
        text = bot.command(f"find {TEST_SPEC.big_slug} --stage staging").text()
        assert "srv_big" in text
        stage = bot.runtime.stages.get("staging")
        with stage.read() as conn:
            assert conn.exec_driver_sql("SELECT current_setting('application_name')").scalar() == "mcp-ops/staging"
            assert conn.exec_driver_sql("SELECT current_user").scalar() == role
    finally:
        bot.runtime.stages.dispose()
        admin(pg, f"DROP ROLE {role}")


def test_an_unreadable_or_incomplete_secret_is_a_clear_stage_error(aws):
    missing = stage_from({"DATABASE_SECRET_ARN_DEV": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:nope"})
    with pytest.raises(StageUnavailable) as caught:
        missing.ping()
    assert caught.value.message == (
        "stage dev is unreachable (its database secret could not be read: ResourceNotFoundException)"
    )
    arn = make_secret("rds!partial", {"username": "u", "password": PW1})
    partial = stage_from({"DATABASE_SECRET_ARN_DEV": arn})
    with pytest.raises(StageUnavailable) as caught:
        partial.ping()
    assert "has no host or dbname; set DATABASE_HOST_DEV, DATABASE_NAME_DEV" in caught.value.message
    assert PW1 not in caught.value.message


def sst_env(stage: str, database: dict, name: str = "Database") -> dict[str, str]:
    return {
        "SST_RESOURCE_App": json.dumps({"name": "platform", "stage": stage}),
        f"SST_RESOURCE_{name}": json.dumps({"type": "sst.aws.Postgres", **database}),
    }


def test_sst_shell_links_the_stage_database(make_bot, stage_db, pg):
    link = {"host": "127.0.0.1", "port": pg.port, "username": "postgres", "password": PW1, "database": stage_db.name}
    bot = make_bot({}, **sst_env("dev", link))
    assert bot.settings.stages["dev"].source == "sst"
    assert "srv_big" in bot.command(f"find {TEST_SPEC.big_slug} --stage dev").text()

    # The link's name is configurable; a production link makes a protected stage.
    settings = load_settings(
        {
            "BOT_DATABASE_URL": "postgresql://u@h/bot",
            "SST_DATABASE_RESOURCE": "Postgres",
            **sst_env("production", link, "Postgres"),
        },
        require_slack=False,
    )
    assert settings.stages["production"].protected and settings.stages["production"].url.password == PW1


def test_the_platforms_postgres_link_is_the_default_and_a_lone_postgres_shaped_link_is_found(capsys):
    link = {"host": "db.internal", "port": 5432, "username": "app", "password": PW1, "database": "postgres"}
    base = {"BOT_DATABASE_URL": "postgresql://u@h/bot"}
    # What `sst shell --stage production` sets for the platform: SST_RESOURCE_Postgres, no setting needed.
    settings = load_settings({**base, **sst_env("production", link, "Postgres")}, require_slack=False)
    production = settings.stages["production"]
    assert production.sst_link == "SST_RESOURCE_Postgres" and production.url.host == "db.internal"

    # Another name, and beside it a link that is no database (a bucket): the one shaped like Postgres is used.
    env = {
        **base,
        **sst_env("staging", link, "MainDb"),
        "SST_RESOURCE_Uploads": json.dumps({"type": "sst.aws.Bucket", "name": "uploads-bucket"}),
    }
    assert load_settings(env, require_slack=False).stages["staging"].sst_link == "SST_RESOURCE_MainDb"
    with patch.dict(os.environ, env, clear=True):
        assert main(["check-config", "--no-slack"]) == 0
    out = capsys.readouterr().out
    assert "staging (sst: SST_RESOURCE_MainDb, the only linked resource shaped like a Postgres link)" in out
    assert PW1 not in out

    # Two database-shaped links and no name: ambiguous, said in one line naming both variables, no value.
    two = {**env, "SST_RESOURCE_Analytics": json.dumps({**link, "database": "analytics"})}
    with pytest.raises(ConfigError) as caught:
        load_settings(two, require_slack=False)
    assert "SST_RESOURCE_Analytics, SST_RESOURCE_MainDb" in str(caught.value)
    assert "SST_DATABASE_RESOURCE" in str(caught.value) and PW1 not in str(caught.value)
    # Naming it settles it.
    named = load_settings({**two, "SST_DATABASE_RESOURCE": "Analytics"}, require_slack=False).stages["staging"]
    assert named.sst_link == "SST_RESOURCE_Analytics" and named.url.database == "analytics"


def test_a_configured_url_wins_over_the_sst_link(make_bot, stage_db, pg):
    link = {"host": "127.0.0.1", "port": pg.port, "username": "postgres", "password": PW1, "database": stage_db.name}
    bot = make_bot({"dev": dead_database_url()}, **sst_env("dev", link))
    assert bot.settings.stages["dev"].source == "url"
    assert "unreachable" in bot.command(f"find {TEST_SPEC.big_slug} --stage dev").text()


def test_sst_and_secret_configuration_errors_name_the_variable():
    base = {"BOT_DATABASE_URL": "postgresql://u@h/bot"}
    cases = [
        ({"SST_RESOURCE_App": "not json"}, "SST_RESOURCE_App is malformed"),
        ({"SST_RESOURCE_App": '{"stage": "dev"}', "SST_DATABASE_RESOURCE": "Pg"}, "SST_RESOURCE_Pg is missing"),
        (
            {"SST_RESOURCE_App": '{"stage": "dev"}', "SST_RESOURCE_Postgres": '{"host": "h"}'},
            "SST_RESOURCE_Postgres is malformed",
        ),
        ({"SST_RESOURCE_App": '{"stage": "dev"}'}, "no stage is configured"),
        ({"DATABASE_SECRET_ARN_DEV": "arn:x", "DATABASE_URL_DEV": "postgresql://u@h/d"}, "DATABASE_SECRET_ARN_DEV and"),
        ({"DATABASE_SECRET_ARN_DEV": "arn with spaces"}, "DATABASE_SECRET_ARN_DEV is malformed"),
        ({"DATABASE_SECRET_ARN_DEV": "arn:x", "DATABASE_PORT_DEV": "http"}, "DATABASE_PORT_DEV is malformed"),
        (
            {"DATABASE_URL_DEV": "postgresql://u@h/d", "RDS_SNAPSHOT_IDENTIFIER_QA": "db-1"},
            "RDS_SNAPSHOT_IDENTIFIER_QA",
        ),
        (
            {"DATABASE_URL_DEV": "postgresql://u@h/d", "RDS_SNAPSHOT_IDENTIFIER_DEV": "table:x"},
            "RDS_SNAPSHOT_IDENTIFIER_DEV is malformed",
        ),
    ]
    for env, expected in cases:
        with pytest.raises(ConfigError) as caught:
            load_settings({**base, **env}, require_slack=False)
        assert str(caught.value).startswith(expected) or expected in str(caught.value), (env, caught.value)
        for value in env.values():
            if len(value) > 8:
                assert value not in str(caught.value)
