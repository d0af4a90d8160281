"""Health-check settings: the issue's defaults, per-stage overrides, one-line errors."""

from __future__ import annotations

import pytest

from bot.config import ConfigError, load_settings
from tests.test_config_and_cli import GOOD, SECRET


def test_health_settings_have_the_issue_defaults_and_per_stage_overrides():
    health = load_settings(GOOD).health
    assert health.enabled
    assert (health.interval_s, health.slow_query_interval_s, health.fk_index_interval_s) == (60, 300, 86_400)
    assert (health.slow_query_ms, health.slow_query_min_calls) == (1000, 5)
    assert (health.connections_warn_pct, health.connections_critical_pct) == (80, 95)
    assert (health.long_query_s, health.idle_in_transaction_s, health.wraparound_warn_pct) == (300, 300, 50)
    assert health.unreachable_after == 2
    assert (health.clear_after_runs, health.failing_after_runs, health.latency_warn_ms) == (2, 3, 1000)
    settings = load_settings(
        {
            **GOOD,
            "ALERT_CHANNEL": "C0ALERTS",
            "ALERT_CHANNEL_PRODUCTION": "C0PRODALERTS",
            "ALERT_REPEAT_MINUTES_DEV": "0",
            "HEALTH_CHECKS": "off",
            "SLOW_QUERY_MS": "250",
        }
    )
    assert settings.alert_channel_for("production") == "C0PRODALERTS"
    assert settings.alert_channel_for("dev") == "C0ALERTS"
    assert settings.health.repeat_minutes_for("dev") == 0
    assert settings.health.repeat_minutes_for("production") == 240
    assert not settings.health.enabled and settings.health.slow_query_ms == 250


def test_alert_reminders_default_to_240_minutes_on_protected_stages_and_never_elsewhere():
    stages = {**GOOD, "DATABASE_URL_STAGING": f"postgres://app:{SECRET}@staging.internal/app"}
    health = load_settings(stages).health  # PROTECTED_STAGES defaults to production
    assert health.repeat_minutes is None
    assert {s: health.repeat_minutes_for(s) for s in ("dev", "staging", "production")} == {
        "dev": 0,
        "staging": 0,
        "production": 240,
    }
    health = load_settings({**stages, "PROTECTED_STAGES": "staging,production"}).health
    assert (health.repeat_minutes_for("staging"), health.repeat_minutes_for("dev")) == (240, 0)
    # ALERT_REPEAT_MINUTES sets every stage; ALERT_REPEAT_MINUTES_<STAGE> wins over it.
    health = load_settings({**stages, "ALERT_REPEAT_MINUTES": "30", "ALERT_REPEAT_MINUTES_PRODUCTION": "0"}).health
    assert {s: health.repeat_minutes_for(s) for s in ("dev", "staging", "production")} == {
        "dev": 30,
        "staging": 30,
        "production": 0,
    }
    health = load_settings({**stages, "ALERT_REPEAT_MINUTES": "0", "ALERT_REPEAT_MINUTES_DEV": "15"}).health
    assert {s: health.repeat_minutes_for(s) for s in ("dev", "staging", "production")} == {
        "dev": 15,
        "staging": 0,
        "production": 0,
    }


def test_clear_after_failing_after_and_latency_settings():
    health = load_settings(
        {**GOOD, "ALERT_CLEAR_AFTER_RUNS": "1", "CHECK_FAILING_AFTER_RUNS": "5", "STAGE_LATENCY_WARN_MS": "0"}
    ).health
    assert (health.clear_after_runs, health.failing_after_runs, health.latency_warn_ms) == (1, 5, 0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ALERT_CHANNEL_QA": "C0QA"}, "ALERT_CHANNEL_QA names stage 'qa'"),
        ({"ALERT_CHANNEL_DEV": f"#{SECRET}"}, "ALERT_CHANNEL_DEV is malformed"),
        ({"ALERT_REPEAT_MINUTES_DEV": "often"}, "ALERT_REPEAT_MINUTES_DEV is malformed"),
        ({"SLOW_QUERY_MS": "slow"}, "SLOW_QUERY_MS is malformed"),
        ({"SLOW_QUERY_MIN_CALLS": "0"}, "SLOW_QUERY_MIN_CALLS is out of range"),
        ({"HEALTH_CHECKS": "maybe"}, "HEALTH_CHECKS is malformed"),
        ({"CONNECTIONS_WARN_PERCENT": "90", "CONNECTIONS_CRITICAL_PERCENT": "85"}, "CONNECTIONS_CRITICAL_PERCENT"),
        ({"HEALTH_INTERVAL_SECONDS": "1"}, "HEALTH_INTERVAL_SECONDS is out of range"),
        ({"ALERT_REPEAT_MINUTES": "-5"}, "ALERT_REPEAT_MINUTES is out of range"),
        ({"ALERT_REPEAT_MINUTES": "daily"}, "ALERT_REPEAT_MINUTES is malformed"),
        ({"ALERT_REPEAT_MINUTES_QA": "5"}, "ALERT_REPEAT_MINUTES_QA names stage 'qa'"),
        ({"ALERT_CLEAR_AFTER_RUNS": "0"}, "ALERT_CLEAR_AFTER_RUNS is out of range"),
        ({"CHECK_FAILING_AFTER_RUNS": "x"}, "CHECK_FAILING_AFTER_RUNS is malformed"),
        ({"STAGE_LATENCY_WARN_MS": "-1"}, "STAGE_LATENCY_WARN_MS is out of range"),
    ],
)
def test_each_health_setting_problem_is_one_line_naming_the_variable(change, message):
    with pytest.raises(ConfigError) as caught:
        load_settings({**GOOD, **change})
    assert message in str(caught.value)
    assert SECRET not in str(caught.value)
