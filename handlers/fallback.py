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
from handlers.actions import refuse_click, refuse_unreadable

ANY = re.compile(r".*", re.DOTALL)
UNKNOWN_BUTTON = "That button is not one this version of mcp-ops knows (an older message?); run the command again."
NO_SHORTCUTS = "mcp-ops has no shortcuts; type `/mcp help` in any channel to see its commands."


def register(app: App, service: CommandService) -> None:
    @app.block_action(ANY)
    def unknown_button(ack: Ack, body: dict[str, Any], respond: Respond, client: WebClient) -> None:
        ack()
        new_request_id()
        refuse_unreadable(service, body, respond, client, UNKNOWN_BUTTON)

    @app.shortcut(ANY)  # global shortcuts (no channel: a small form) and message actions (under the message)
    def unknown_shortcut(ack: Ack, body: dict[str, Any], respond: Respond, client: WebClient) -> None:
        ack()
        new_request_id()
        refuse_unreadable(service, body, respond, client, NO_SHORTCUTS, command="shortcut")

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
