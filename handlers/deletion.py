"""Buttons on delete requests: ack at once, then let the deletion flow decide everything."""

from __future__ import annotations

from typing import Any

from slack_bolt import Ack, App, Respond

from bot.errors import UserFacingError
from bot.logs import new_request_id
from bot.service import CommandService
from handlers import render, render_deletion
from handlers.actions import button_value

ACTIONS = {
    render_deletion.CONFIRM_ACTION: "confirm",
    render_deletion.CANCEL_ACTION: "cancel",
}


def _request_id(body: dict[str, Any]) -> int:
    value = button_value(body)
    try:
        return int(value["r"])
    except (KeyError, TypeError, ValueError):
        raise UserFacingError("that button's data is not readable; run the command again") from None


def register(app: App, service: CommandService) -> None:
    runtime = service.runtime
    flow = runtime.deletion
    flow.set_renderer(render_deletion.request_message)

    def listener_for(action: str) -> Any:
        def on_click(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
            ack()
            new_request_id()
            user = str((body.get("user") or {}).get("id", ""))
            try:
                request_id = _request_id(body)
            except UserFacingError as exc:
                respond(**render.error(exc), replace_original=False)
                return

            def work() -> None:
                outcome = flow.click(request_id, user, action)
                if not outcome.ok and outcome.message:
                    respond(**render_deletion.refusal(outcome.message))

            runtime.submit(work)

        return on_click

    for action_id, action in ACTIONS.items():
        app.action(action_id)(listener_for(action))
