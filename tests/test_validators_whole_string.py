"""Every validator matches the whole value: `$` accepts a trailing newline, `\\Z` and fullmatch do not."""

from __future__ import annotations

import re

import pytest

from bot import commands, config, edge_config
from bot.config import ConfigError, load_settings
from bot.erasure import settings as erasure_settings
from bot.health import thresholds

GOOD = {
    "SLACK_SIGNING_SECRET": "signing",
    "SLACK_BOT_TOKEN": "xoxb-1",
    "BOT_DATABASE_URL": "postgresql://bot:pw@db.internal:5432/bot",
    "DATABASE_URL_DEV": "postgres://app:pw@dev.internal/app",
}

# (validator, a value it accepts)
ACCEPTED: list[tuple[re.Pattern[str], str]] = [
    (edge_config.TEAM_ID_RE, "T0123ABC"),
    (edge_config.METRICS_TOKEN_RE, "a-long-metrics-token-0123"),
    (thresholds.IGNORE_PATTERN_RE, "public.function_*"),
    (erasure_settings.TABLE_RE, "users"),
    (commands.SLUG_RE, "acme-prod"),
    (commands.ID_RE, "srv_123"),
    (commands.STAGE_RE, "production"),
    (config.STAGE_NAME_RE, "staging"),
    (config.SLACK_ID_RE, "C0DEV"),
    (config.SECRET_ID_RE, "prod/db"),
    (config.HOST_RE, "db.internal"),
    (config.BUCKET_RE, "my-backups"),
    (config.RDS_ID_RE, "prod-db"),
    (config.IDENTIFIER_RE, "users"),
    (config.IGNORE_PATTERN_RE, "public.*"),
]


@pytest.mark.parametrize(("pattern", "value"), ACCEPTED, ids=lambda v: getattr(v, "pattern", v))
def test_each_validator_refuses_a_trailing_newline(pattern: re.Pattern[str], value: str) -> None:
    assert pattern.fullmatch(value)
    for bad in (f"{value}\n", f"{value}\r\n", f"{value}\nextra"):
        assert pattern.fullmatch(bad) is None
        if pattern.pattern.startswith("^"):  # called with .match(): its end anchor must be \Z, not $
            assert pattern.match(bad) is None


def test_no_validator_is_anchored_with_a_dollar():
    for pattern, _ in ACCEPTED:
        assert not pattern.pattern.endswith("$"), pattern.pattern


def test_an_erasure_mode_for_a_table_name_with_a_trailing_newline_is_refused():
    with pytest.raises(ConfigError) as caught:
        load_settings({**GOOD, "ERASURE_MODE_users\n": "anonymise"})
    assert "the suffix must be a table name" in str(caught.value)
    assert load_settings({**GOOD, "ERASURE_MODE_users": "anonymise"}).erasure.mode("users") == "anonymise"


def test_a_workspace_id_or_metrics_token_with_a_newline_inside_is_refused():
    with pytest.raises(ConfigError, match="SLACK_TEAM_ID is malformed"):
        load_settings({**GOOD, "SLACK_TEAM_ID": "T0123ABC\nT0456DEF"})
    with pytest.raises(ConfigError, match="METRICS_TOKEN is malformed"):
        load_settings({**GOOD, "METRICS_TOKEN": "a-long-metrics-token\n-0123"})
    with pytest.raises(ConfigError, match="HEALTH_IGNORE is malformed"):
        load_settings({**GOOD, "HEALTH_IGNORE": "public\n.users"})
