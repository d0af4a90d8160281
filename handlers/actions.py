"""Buttons on read-only replies: paging, and Explain (under slow-query alerts and `/mcp slow-queries`)."""

from __future__ import annotations

import json
import logging
from typing import Any

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient

from bot.audit import AuditEntry
from bot.errors import CommandError, UserFacingError
from bot.lanes import Busy
from bot.logs import new_request_id
from bot.service import CommandService, Invocation
from handlers import render, replies
from handlers.render_alerts import EXPLAIN_ACTION

log = logging.getLogger(__name__)


MAX_ID = 2**63 - 1  # the bot database's bigint


def whole_id(raw: object) -> int | None:
    """A button's id (a request's, an alert's): a whole number the bot database can hold, from an int or
    ASCII digits (not `1e3`, `-1`, `٣` or `True`); None otherwise, so it is unreadable, not a database error."""
    if isinstance(raw, str) and raw.isascii() and raw.isdigit():
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_ID:
        return None
    return raw


def button_value(body: dict[str, Any]) -> dict[str, Any]:
    """The JSON value of the clicked button; a malformed one is bad input, not a crash."""
    try:
        value = json.loads(body["actions"][0]["value"])
    except (KeyError, IndexError, TypeError, ValueError):
        raise CommandError("that button's data is not readable; run the command again") from None
    if not isinstance(value, dict):
        raise CommandError("that button's data is not readable; run the command again")
    return value


def refuse_click(service: CommandService, body: dict[str, Any], reason: str, *, command: str = "click") -> None:
    """Audit a click (or shortcut, or slash command) refused before anything ran: after the ack, on the
    audit lane, as `bad_input` with the action_id (or callback_id) it named."""
    user = body.get("user")
    actor = str(user.get("id", "")) if isinstance(user, dict) else str(body.get("user_id") or "")
    actions = body.get("actions")
    named = actions[0].get("action_id") if isinstance(actions, list) and actions else body.get("callback_id")
    entry = AuditEntry(actor or "unknown", command, "bad_input", args=str(named or "")[:80], detail={"reason": reason})
    try:
        service.runtime.submit(service.runtime.audit.record, entry, lane="audit")
    except Busy:
        log.warning("refusal not audited: the audit lane is full", extra={"outcome": "bad_input"})


def refuse_unreadable(
    service: CommandService, body: dict[str, Any], respond: Respond, client: WebClient, message: str, **audit: str
) -> None:
    """A click refused before anything ran: only the clicker is told (under the message they clicked, or in
    a small form for an App Home button, which has no response_url), and it is audited (`refuse_click`)."""
    if body.get("response_url"):
        respond(**render.error(CommandError(message)), replace_original=False)
    elif isinstance(body.get("trigger_id"), str):
        client.views_open(trigger_id=body["trigger_id"], view=render.notice_modal("mcp-ops", message))
    refuse_click(service, body, message, **audit)


def register(app: App, service: CommandService) -> None:
    @app.action(render.PAGE_ACTION)
    @app.action(EXPLAIN_ACTION)  # runs `explain <queryid> --stage S` as if typed
    def page_more(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
        ack()
        new_request_id()
        user = str((body.get("user") or {}).get("id", ""))
        channel = (body.get("channel") or {}).get("id")
        invocation = Invocation(user_id=user, channel_id=channel, text="")
        try:
            value = button_value(body)
            invocation = Invocation(user_id=user, channel_id=channel, text=str(value.get("t", "")))
            seen = value.get("n") if isinstance(value.get("n"), int) else 0
            request = service.prepare(invocation, cursor=str(value.get("c") or "") or None, seen=seen)

            def work() -> None:
                replies.send(respond, service.runtime.slack, channel, render.outcome(service.run(request)))

            service.start(request, work)
        except UserFacingError as exc:
            respond(**render.error(exc))
            service.refuse_later(invocation, exc)
