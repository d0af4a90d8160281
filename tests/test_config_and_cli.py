"""Start-up configuration: one clear line per problem, never a secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import ConfigError, load_settings
from bot.platform.migrate import FOLDER

SECRET = "sup3r-s3cret-pa55"
GOOD = {
    "SLACK_SIGNING_SECRET": "signing",
    "SLACK_BOT_TOKEN": "xoxb-1",
    "BOT_DATABASE_URL": f"postgresql://bot:{SECRET}@db.internal:5432/bot",
    "DATABASE_URL_DEV": f"postgres://app:{SECRET}@dev.internal/app",
    "DATABASE_URL_PRODUCTION": f"postgresql://app:{SECRET}@prod.internal:6432/app",
}


def test_valid_settings_pick_the_psycopg_driver_and_protect_production():
    settings = load_settings({**GOOD, "OPERATORS": "U1AAA, U2BBB", "CHANNEL_STAGES": "C0DEV=dev"})
    assert settings.stage_names() == ["dev", "production"]
    assert settings.stages["dev"].url.drivername == "postgresql+psycopg"
    assert settings.stages["production"].protected and not settings.stages["dev"].protected
    assert settings.operators == {"U1AAA", "U2BBB"}
    assert settings.approvers == frozenset()
    assert settings.channel_stages == {"C0DEV": "dev"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"SLACK_SIGNING_SECRET": ""}, "SLACK_SIGNING_SECRET is missing"),
        ({"SLACK_BOT_TOKEN": SECRET}, "SLACK_BOT_TOKEN is malformed"),
        ({"BOT_DATABASE_URL": ""}, "BOT_DATABASE_URL is missing"),
        ({"BOT_DATABASE_URL": f"mysql://u:{SECRET}@h/db"}, "BOT_DATABASE_URL is malformed"),
        ({"DATABASE_URL_DEV": f"not a url {SECRET}"}, "DATABASE_URL_DEV is malformed"),
        (
            {"DATABASE_URL_DEV": f"postgresql://u:{SECRET}@h"},
            "DATABASE_URL_DEV is malformed: the URL names no database",
        ),
        ({"DATABASE_URL_DEV": "", "DATABASE_URL_PRODUCTION": ""}, "no stage is configured"),
        ({"OPERATORS": f"U1,{SECRET}"}, "OPERATORS is malformed"),
        ({"CHANNEL_STAGES": "C0PROD=production"}, "protected stage 'production'"),
        ({"CHANNEL_STAGES": "C0QA=qa"}, "CHANNEL_STAGES names stage 'qa'"),
        ({"CHANNEL_STAGES": "garbage"}, "CHANNEL_STAGES is malformed"),
        ({"STAGE_CONNECT_TIMEOUT": "soon"}, "STAGE_CONNECT_TIMEOUT is malformed"),
        ({"SLACK_API_URL": "ftp://x"}, "SLACK_API_URL is malformed"),
    ],
)
def test_each_problem_is_one_line_naming_the_variable(change, message):
    with pytest.raises(ConfigError) as caught:
        load_settings({**GOOD, **change})
    text = str(caught.value)
    assert message in text
    assert "\n" not in text
    assert SECRET not in text


def test_any_number_of_stages_and_custom_protection():
    settings = load_settings(
        {**GOOD, "DATABASE_URL_QA_EU": "postgresql://h/qa", "PROTECTED_STAGES": "production,qa_eu"}
    )
    assert settings.stage_names() == ["dev", "production", "qa_eu"]
    assert settings.stages["qa_eu"].protected


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], **env},
        cwd=Path(__file__).parent.parent,
        timeout=60,
        check=False,
    )


def test_the_cli_fails_start_up_with_one_line():
    result = _cli("serve", env={**GOOD, "SLACK_SIGNING_SECRET": ""})
    assert result.returncode == 2
    assert result.stderr.strip() == "mcp-ops: SLACK_SIGNING_SECRET is missing"
    result = _cli("check-config", env=GOOD)
    assert result.returncode == 0
    assert "stages: dev, production (protected: production)" in result.stdout
    assert SECRET not in result.stdout + result.stderr
    assert "warning: SLACK_TEAM_ID is not set" in result.stdout


def test_check_config_names_the_served_workspaces_and_refuses_malformed_ids():
    result = _cli("check-config", env={**GOOD, "SLACK_TEAM_ID": "T0123ABCD, E0ORG1"})
    assert result.returncode == 0
    assert "workspaces: E0ORG1, T0123ABCD" in result.stdout and "warning" not in result.stdout
    result = _cli("check-config", env={**GOOD, "SLACK_TEAM_ID": "acme"})
    assert result.returncode == 2
    assert "SLACK_TEAM_ID is malformed" in result.stderr


def test_socket_mode_needs_an_app_token():
    result = _cli("socket", env=GOOD)
    assert result.returncode == 2
    assert result.stderr.strip() == "mcp-ops: SLACK_APP_TOKEN is missing (Socket Mode needs an xapp- token)"


def test_the_data_generator_fills_an_empty_database(pg):
    from sqlalchemy import create_engine, text

    from bot.config import parse_database_url

    url = pg.create_database("generated_cli", drop=True)
    result = _cli(
        "demo-data",
        "--url",
        url,
        "--tool-calls",
        "1234",
        "--sessions",
        "100",
        "--users",
        "40",
        "--completions",
        "50",
        "--small-servers",
        "2",
        env={},
    )
    assert result.returncode == 0, result.stderr
    journal = json.loads((FOLDER / "meta" / "_journal.json").read_text())["entries"]
    assert f"migrated: {', '.join(e['tag'] for e in journal)}\n" in result.stdout
    engine = create_engine(parse_database_url("x", url))
    with engine.connect() as conn:
        big_calls = conn.execute(text("SELECT count(*) FROM mcp_tool_calls WHERE id LIKE 'tc_big_%'")).scalar()
        servers = conn.execute(text("SELECT count(*) FROM mcp_servers")).scalar()
        completions = conn.execute(
            text("SELECT count(*) FROM walkthrough_step_completions WHERE mcp_server_id = 'srv_big'")
        ).scalar()
        # Migrated as `make demo` migrates: every migration run and recorded as drizzle-orm records it.
        recorded = conn.execute(text("SELECT created_at FROM drizzle.__drizzle_migrations ORDER BY id")).scalars()
        assert list(recorded) == [e["when"] for e in journal]
    engine.dispose()
    pg.drop_database("generated_cli")
    assert (big_calls, servers, completions) == (1234, 3, 50)

    # One behind, as the demo's production stage: the newest migration is pending, the data the same.
    url = pg.create_database("generated_cli_behind", drop=True)
    small = ("--tool-calls", "10", "--sessions", "5", "--users", "5", "--completions", "5", "--small-servers", "1")
    result = _cli("demo-data", "--url", url, "--migrations-behind", "1", *small, env={})
    assert result.returncode == 0, result.stderr
    assert "(1 pending)" in result.stdout
    engine = create_engine(parse_database_url("x", url))
    with engine.connect() as conn:
        recorded = conn.execute(text("SELECT created_at FROM drizzle.__drizzle_migrations ORDER BY id")).scalars()
        assert list(recorded) == [e["when"] for e in journal[:-1]]
        assert conn.execute(text("SELECT count(*) FROM mcp_servers")).scalar() == 2
    engine.dispose()
    pg.drop_database("generated_cli_behind")
    result = _cli("demo-data", "--url", url, "--migrations-behind", str(len(journal)), env={})
    assert result.returncode == 2 and f"--migrations-behind must be 0 to {len(journal) - 1}" in result.stderr
