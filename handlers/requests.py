"""Buttons and the reject form on requests of every kind: ack at once, then let the request machine decide."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient
from sqlalchemy.exc import SQLAlchemyError

from bot.commands import control_character, typed_text
from bot.errors import UserFacingError
from bot.logs import new_request_id
from bot.service import CommandService

# Each kind's look (and its verbs' renderers) registers itself when its module is imported.
from handlers import render, render_deletion, render_erasure, render_indexes, render_requests, render_sessions  # noqa: F401
from handlers.actions import button_value, refuse_unreadable, whole_id
from handlers.blocks import payload

BUTTONS = {
    render_requests.CONFIRM_ACTION: "confirm",
    render_requests.CANCEL_ACTION: "cancel",
    render_requests.APPROVE_ACTION: "approve",
}


REASON_MAX_CHARS = (
    500  # the form's max_length (render_requests.reject_modal); Slack enforces it, a crafted form may not
)


def _request_id(value: dict[str, Any]) -> int:
    """The request a button or form names: a whole number the bot database can hold, else unreadable."""
    request_id = whole_id(value.get("r"))
    if request_id is None:
        raise UserFacingError("that button's data is not readable; run the command again")
    return request_id


def _dig(node: Any, *keys: str) -> Any:
    """`node[k1][k2]...` through dicts only; None where the payload has something else."""
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _reason_problem(reason: str) -> str | None:
    """What is wrong with a typed reject reason, for the form to show under its field; None if nothing."""
    if not reason:
        return "Say why you reject it."
    control = control_character(reason)
    if control:
        return f"The reason contains a control character ({control}); type it again without it."
    if len(reason) > REASON_MAX_CHARS:
        return f"At most {REASON_MAX_CHARS} characters, please (this is {len(reason):,})."
    return None


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
                refuse_unreadable(service, body, respond, client, exc.message)
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
            refuse_unreadable(service, body, respond, client, exc.message)
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
        typed = _dig(view, "state", "values", render_requests.REASON_BLOCK, render_requests.REASON_INPUT, "value")
        reason = typed_text(typed if isinstance(typed, str) else "").strip()
        problem = _reason_problem(reason)
        if problem:
            ack(response_action="errors", errors={render_requests.REASON_BLOCK: problem})
            return
        user = _user(body)
        try:
            metadata = json.loads(view.get("private_metadata") or "{}")
            request_id = _request_id(metadata if isinstance(metadata, dict) else {})
        except (UserFacingError, ValueError, TypeError):
            problem = "This form can't be read; close it and press Reject on the request again."
        else:
            # One quick bot-database read, like the check before the form opened: a gone request is said here
            # (if the database is down, the click after the ack says so).
            with contextlib.suppress(SQLAlchemyError):
                if flow.store.get(request_id) is None:
                    problem = "That request no longer exists; close this form."
        if problem:
            ack(response_action="errors", errors={render_requests.REASON_BLOCK: problem})
            return
        ack()

        def work() -> None:
            outcome = flow.click(request_id, user, "reject", reason=reason)
            if not outcome.ok and outcome.message and outcome.channel:
                refusal = payload(render_deletion.refusal(outcome.message))
                client.chat_postEphemeral(channel=outcome.channel, user=user, **refusal)

        runtime.submit(work, lane="approvals")
