"""Slack settings: the app's tokens and API URL, people's and channels' IDs, channels bound to a stage.

Kept apart because the tokens are secrets (a problem names the variable, never its value) and every
Slack ID is checked by the same pattern.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

from bot.config.stages import StageConfig
from bot.config.values import ConfigError, split_csv

DEFAULT_SLACK_API_URL = "https://slack.com/api/"
SLACK_ID_RE = re.compile(r"^[A-Z][A-Z0-9]{2,31}\Z")


class SlackAccess(NamedTuple):
    signing_secret: str
    bot_token: str
    app_token: str
    api_url: str  # always ends with /


def read_slack_access(env: Mapping[str, str], *, require_slack: bool) -> SlackAccess:
    """The tokens and API URL; the signing secret and bot token may be absent when Slack is not needed."""
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
    return SlackAccess(signing_secret, bot_token, app_token, api_url)


def read_slack_ids(env: Mapping[str, str], name: str) -> frozenset[str]:
    ids = split_csv(env.get(name, ""))
    for value in ids:
        if not SLACK_ID_RE.match(value):
            raise ConfigError(f"{name} is malformed: expected comma-separated Slack IDs such as U0123ABCD")
    return frozenset(ids)


def read_channel_stages(env: Mapping[str, str], stages: Mapping[str, StageConfig]) -> dict[str, str]:
    """CHANNEL_STAGES: channels where a command without --stage runs on that (unprotected) stage."""
    bindings: dict[str, str] = {}
    for pair in split_csv(env.get("CHANNEL_STAGES", "")):
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
