"""What no other listener takes: Slack still gets its ack, a person a short private answer, the audit a line.

Registered after every other listener (handlers/app.py), so these match only what the others left:
a button whose action_id this version does not know (a message from an older one, a crafted payload),
a shortcut or message action, a slash command other than `/mcp`, a form the bot did not open, a closed
form, a select menu asking for options, an event nobody subscribes to. Slack shows an error on a click
that is not acknowledged and turns off event subscriptions whose deliveries keep failing, so each gets
a 200; what cannot be a Slack payload at all is refused at the HTTP edge (handlers/http.py).
"""

from __future__ import annotations

import re
from typing import Any

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient

from bot.errors import CommandError
from bot.logs import new_request_id
from bot.service import CommandService
from handlers import render
from handlers.actions import refuse_click

ANY = re.compile(r".*", re.DOTALL)
UNKNOWN_BUTTON = "That button is not one this version of mcp-ops knows (an older message?); run the command again."
NO_SHORTCUTS = "mcp-ops has no shortcuts; type `/mcp help` in any channel to see its commands."


def register(app: App, service: CommandService) -> None:
    @app.block_action(ANY)
    def unknown_button(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
        ack()
        new_request_id()
        if body.get("response_url"):
            respond(**render.error(CommandError(UNKNOWN_BUTTON)), replace_original=False)
        refuse_click(service, body, "a button this version does not know")

    @app.shortcut(ANY)  # global shortcuts and message actions
    def unknown_shortcut(ack: Ack, body: dict[str, Any], respond: Respond, client: WebClient) -> None:
        ack()
        new_request_id()
        if body.get("response_url"):  # a message action: answered under the message
            respond(**render.error(CommandError(NO_SHORTCUTS)), replace_original=False)
        elif body.get("trigger_id"):  # a global shortcut has no channel: a small form only they see
            client.views_open(trigger_id=body["trigger_id"], view=render.notice_modal("mcp-ops", NO_SHORTCUTS))
        refuse_click(service, body, "mcp-ops has no shortcuts", command="shortcut")

    @app.command(ANY)
    def other_command(ack: Ack, command: dict[str, Any]) -> None:
        new_request_id()
        name = str(command.get("command", ""))[:40]
        ack(**render.error(CommandError(f"mcp-ops answers `/mcp` only, not `{name}`; try `/mcp help`.")))
        refuse_click(service, command, "a slash command mcp-ops does not answer", command=name or "?")

    @app.view_submission(ANY)
    def other_form(ack: Ack) -> None:
        ack()  # closes a form this version did not open; nothing was asked of it

    @app.view_closed(ANY)
    def form_closed(ack: Ack) -> None:
        ack()

    @app.options(ANY)
    def no_options(ack: Ack) -> None:
        ack(options=[])

    @app.event(ANY)
    def other_event() -> None:
        """Acknowledged and dropped: an event this app does not act on."""
