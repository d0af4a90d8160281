"""Operation buttons under alerts and listings (Cancel query, Terminate session, Create index, ...).

Ack at once; then the request machine decides: who may ask, is the target still there, does
the click run it (unprotected) or ask approvers (protected). Its request message goes to the
thread of the clicked message (an alert's); refusals are shown only to the clicker.
"""

from __future__ import annotations

import re
from typing import Any

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient

from bot.errors import UserFacingError
from bot.logs import new_request_id
from bot.service import CommandService
from handlers.actions import button_value, refuse_unreadable
from handlers.blocks import payload
from handlers.render_operations import ACTION_PREFIX, read_value
from handlers.render_requests import refusal


def _where(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """The clicked message's channel, and its ts when a thread can hang under it (not an ephemeral reply)."""
    container = body.get("container") or {}
    channel = container.get("channel_id") or (body.get("channel") or {}).get("id")
    thread = None if container.get("is_ephemeral") else container.get("message_ts")
    return channel, thread


def register(app: App, service: CommandService) -> None:
    runtime = service.runtime

    @app.action(re.compile(f"^{re.escape(ACTION_PREFIX)}"))
    def on_operation(ack: Ack, body: dict[str, Any], respond: Respond, client: WebClient) -> None:
        ack()
        new_request_id()
        user = str((body.get("user") or {}).get("id", ""))
        channel, thread = _where(body)
        try:
            kind, stage, target = read_value(button_value(body))
        except UserFacingError as exc:
            refuse_unreadable(service, body, respond, client, exc.message)
            return

        def work() -> None:
            asked = runtime.requests.ask(kind, stage, target, requester=user, channel=channel, thread=thread)
            if isinstance(asked, str):
                if body.get("response_url"):
                    respond(**refusal(asked))
                elif channel:
                    client.chat_postEphemeral(channel=channel, user=user, **payload(refusal(asked)))

        runtime.submit(work)
