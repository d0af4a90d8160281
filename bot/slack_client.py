"""Slack Web API clients for work that happens outside a request (outbox, alerts, jobs)."""

from __future__ import annotations

from slack_sdk import WebClient

from bot.config import Settings

# Every Web API method the bot calls, with the bot scope it needs (None: no scope needed).
# manifest.yml asks for exactly `commands` plus the scopes of the methods the code calls;
# tests/test_deploy_manifest.py finds those calls in the source and fails on a method missing here.
SLACK_METHOD_SCOPES: dict[str, str | None] = {
    "chat.postMessage": "chat:write",
    "chat.update": "chat:write",
    "chat.postEphemeral": "chat:write",
    "usergroups.users.list": "usergroups:read",
    "users.info": "users:read",  # not called today, so users:read is not in the manifest
    "views.publish": None,  # App Home: no scope, only the app_home_opened event subscription
    "views.open": None,
    "views.update": None,
    # Long output and charts as files (bot/slack_files.py): slack_sdk's files_upload_v2 is
    # files.getUploadURLExternal, a POST of the bytes to the URL it returns, and files.completeUploadExternal.
    "files.upload.v2": "files:write",
    "files.getUploadURLExternal": "files:write",
    "files.completeUploadExternal": "files:write",
}
# Scopes that come from manifest features rather than Web API calls.
FEATURE_SCOPES = frozenset({"commands"})


def make_web_client(settings: Settings, *, timeout: int = 10) -> WebClient:
    """A client pointed at SLACK_API_URL, without the SDK's retry handlers.

    Retries belong to the outbox, which keeps the message durable while it waits.
    """
    return WebClient(
        token=settings.bot_token or None, base_url=settings.slack_api_url, timeout=timeout, retry_handlers=[]
    )
