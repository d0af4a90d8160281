"""Buttons and the reject form on requests of every kind: ack at once, then let the request machine decide."""

from __future__ import annotations

import json
from typing import Any

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient

from bot.errors import UserFacingError
from bot.logs import new_request_id
from bot.service import CommandService

# Each kind's look (and its verbs' renderers) registers itself when its module is imported.
from handlers import render, render_deletion, render_erasure, render_indexes, render_requests, render_sessions  # noqa: F401
from handlers.actions import button_value
from handlers.blocks import payload

BUTTONS = {
    render_requests.CONFIRM_ACTION: "confirm",
    render_requests.CANCEL_ACTION: "cancel",
    render_requests.APPROVE_ACTION: "approve",
}


def _request_id(value: dict[str, Any]) -> int:
    try:
        return int(value["r"])
    except (KeyError, TypeError, ValueError):
        raise UserFacingError("that button's data is not readable; run the command again") from None


def _user(body: dict[str, Any]) -> str:
    return str((body.get("user") or {}).get("id", ""))


def _answer(body: dict[str, Any], respond: Respond, client: WebClient, message: str, channel: str | None) -> None:
    """Only the clicker sees it: under the message they clicked, or (an App Home button has no
    response_url) in the request's channel."""
    if body.get("response_url"):
        respond(**render_requests.refusal(message))
    elif channel:
        client.chat_postEphemeral(channel=channel, user=_user(body), **payload(render_deletion.refusal(message)))


def register(app: App, service: CommandService) -> None:
    runtime = service.runtime
    flow = runtime.requests
    # Each kind's look is registered by its render module (imported above); then the machine may render.
    flow.set_renderer(render_requests.request_message)

    def listener_for(action: str) -> Any:
        def on_click(ack: Ack, body: dict[str, Any], respond: Respond, client: WebClient) -> None:
            ack()
            new_request_id()
            user = _user(body)
            try:
                request_id = _request_id(button_value(body))
            except UserFacingError as exc:
                if body.get("response_url"):
                    respond(**render.error(exc), replace_original=False)
                return

            def work() -> None:
                outcome = flow.click(request_id, user, action)
                if not outcome.ok and outcome.message:
                    _answer(body, respond, client, outcome.message, outcome.channel)

            runtime.submit(work, lane="approvals")

        return on_click

    for action_id, action in BUTTONS.items():
        app.action(action_id)(listener_for(action))

    @app.action(render_requests.REJECT_ACTION)
    def on_reject(ack: Ack, body: dict[str, Any], respond: Respond, client: WebClient) -> None:
        ack()
        new_request_id()
        user = _user(body)
        try:
            request_id = _request_id(button_value(body))
        except UserFacingError as exc:
            if body.get("response_url"):
                respond(**render.error(exc), replace_original=False)
            return
        # The form needs the trigger_id within 3 seconds: the check is one quick bot-database read.
        checked = flow.check_click(request_id, user, "reject")
        if not checked.ok:
            _answer(body, respond, client, checked.message, checked.channel)
            return
        client.views_open(trigger_id=body["trigger_id"], view=render_requests.reject_modal(request_id))

    @app.view(render_requests.REJECT_MODAL)
    def on_reject_submitted(ack: Ack, body: dict[str, Any], view: dict[str, Any], client: WebClient) -> None:
        new_request_id()
        values = (view.get("state") or {}).get("values") or {}
        reason = str(
            ((values.get(render_requests.REASON_BLOCK) or {}).get(render_requests.REASON_INPUT) or {}).get("value")
            or ""
        ).strip()
        if not reason:
            ack(response_action="errors", errors={render_requests.REASON_BLOCK: "Say why you reject it."})
            return
        ack()
        user = _user(body)
        try:
            request_id = _request_id(json.loads(view.get("private_metadata") or "{}"))
        except (UserFacingError, ValueError):
            return

        def work() -> None:
            outcome = flow.click(request_id, user, "reject", reason=reason)
            if not outcome.ok and outcome.message and outcome.channel:
                refusal = payload(render_deletion.refusal(outcome.message))
                client.chat_postEphemeral(channel=outcome.channel, user=user, **refusal)

        runtime.submit(work, lane="approvals")
