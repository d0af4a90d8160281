"""Slack Web API clients for work that happens outside a request (outbox, alerts, jobs)."""

from __future__ import annotations

from slack_sdk import WebClient

from bot.config import Settings


def make_web_client(settings: Settings, *, timeout: int = 10) -> WebClient:
    """A client pointed at SLACK_API_URL, without the SDK's retry handlers.

    Retries belong to the outbox, which keeps the message durable while it waits.
    """
    return WebClient(
        token=settings.bot_token or None, base_url=settings.slack_api_url, timeout=timeout, retry_handlers=[]
    )
