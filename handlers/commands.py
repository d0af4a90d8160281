"""The `/mcp` slash command: prepare, ack within Slack's 3 seconds, work, respond."""

from __future__ import annotations

from typing import Any

from slack_bolt import Ack, App, Respond

from bot.errors import UserFacingError
from bot.logs import new_request_id
from bot.service import CommandService, Invocation
from handlers import render


def register(app: App, service: CommandService) -> None:
    @app.command("/mcp")
    def mcp_command(ack: Ack, command: dict[str, Any], respond: Respond) -> None:
        new_request_id()
        invocation = Invocation(
            user_id=str(command.get("user_id", "")),
            channel_id=command.get("channel_id"),
            text=str(command.get("text", "")),
        )
        try:
            request = service.prepare(invocation)
        except UserFacingError as exc:
            ack(**render.error(exc))
            service.runtime.submit(service.refuse, invocation, exc)
            return
        ack()

        def work() -> None:
            respond(**render.outcome(service.run(request)))

        service.runtime.submit(work)
