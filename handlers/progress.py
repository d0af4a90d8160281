"""A Slack message that long work edits as it goes (the bot side is `bot.progress.Progress`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.progress import MessageRef
from handlers.blocks import Message

log = logging.getLogger(__name__)


class SlackProgress:
    """Posts once, edits with chat.update; the final edit is handed to the outbox by the domain."""

    def __init__(self, client: WebClient, channel: str, render: Callable[[Any], Message]) -> None:
        self.client = client
        self.channel = channel
        self.render = render
        self.ref: MessageRef | None = None

    def _payload(self, state: Any) -> dict[str, Any]:
        message = self.render(state)
        return {"text": message["text"], "blocks": message["blocks"]}

    def start(self, state: Any) -> MessageRef | None:
        try:
            response = self.client.chat_postMessage(channel=self.channel, unfurl_links=False, **self._payload(state))
        except (SlackApiError, OSError) as exc:
            # Not in the channel, or Slack is down: the work goes on and the reply still comes via response_url.
            log.warning("progress message not posted", extra={"error": type(exc).__name__})
            return None
        self.ref = MessageRef(str(response["channel"]), str(response["ts"]))
        return self.ref

    def update(self, state: Any) -> None:
        if self.ref is None:
            return
        try:
            self.client.chat_update(channel=self.ref.channel, ts=self.ref.ts, **self._payload(state))
        except (SlackApiError, OSError) as exc:
            log.info("progress update skipped", extra={"error": type(exc).__name__})

    def final_call(self, state: Any) -> tuple[str, dict[str, Any]] | None:
        if self.ref is None:
            return None
        return "chat.update", {"channel": self.ref.channel, "ts": self.ref.ts, **self._payload(state)}
