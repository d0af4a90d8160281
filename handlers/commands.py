"""The `/mcp` slash command: prepare, ack within Slack's 3 seconds, work, respond."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from slack_bolt import Ack, App, Respond

from bot.deliveries import DuplicateDelivery
from bot.errors import UserFacingError
from bot.logs import new_request_id
from bot.service import CommandRequest, CommandService, Invocation
from handlers import render, replies
from handlers.charts import attach_chart
from handlers.progress import SlackProgress


def with_progress(service: CommandService, request: CommandRequest) -> CommandRequest:
    """Long verbs get a status message in the command's channel that their work edits."""
    renderer = render.PROGRESS_RENDERERS.get(request.verb)
    channel = request.invocation.channel_id
    if renderer is None or not channel:
        return request
    progress = SlackProgress(service.runtime.slack, channel, lambda state: renderer(request, state))
    return replace(request, progress=progress)


def register(app: App, service: CommandService) -> None:
    @app.command("/mcp")
    def mcp_command(ack: Ack, command: dict[str, Any], respond: Respond) -> None:
        new_request_id()
        invocation = Invocation(
            user_id=str(command.get("user_id", "")),
            channel_id=command.get("channel_id"),
            text=str(command.get("text", "")),
            delivery=str(command.get("trigger_id") or "") or None,
        )
        try:
            request = service.prepare(invocation)

            def work() -> None:
                outcome = service.run(with_progress(service, request))
                message = replies.send(respond, service.runtime.slack, invocation.channel_id, render.outcome(outcome))
                attach_chart(service.runtime, request, outcome, message, respond)

            service.start(request, work)  # held back until this ack is out (Runtime.submit)
        except DuplicateDelivery:
            ack()  # Slack retried a command that is already running: it answers once
            return
        except UserFacingError as exc:
            ack(**render.error(exc))
            service.refuse_later(invocation, exc)
            return
        ack()
