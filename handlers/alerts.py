"""Acknowledge and Snooze under an alert: ack at once, then record it; the message is rewritten to say who."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import Ack, App, Respond

from bot.errors import UserFacingError
from bot.health.attention import AlertAttention, AttentionOutcome
from bot.logs import new_request_id
from bot.service import CommandService
from handlers import render_alerts, render_deletion
from handlers.actions import refuse_click, whole_id
from handlers.render_alerts import ACK_ACTION, SNOOZE_ACTION

log = logging.getLogger(__name__)


def _clicked(body: dict[str, Any]) -> tuple[int, int | None] | None:
    """(alert id, snooze hours or None) from the clicked element; None when it is not readable."""
    action = (body.get("actions") or [{}])[0]
    raw = str(action.get("value") or (action.get("selected_option") or {}).get("value") or "")
    alert, _, hours = raw.partition(":")
    alert_id = whole_id(alert)
    if alert_id is None or (hours and not hours.isascii()):
        return None
    try:
        return alert_id, (int(hours) if hours else None)
    except ValueError:
        return None


def _answer(outcome: AttentionOutcome) -> str | None:
    """What only the clicker is told; None when the rewritten alert message says it all."""
    if outcome.outcome == "already":
        return f"<@{outcome.who}> has already acknowledged this alert."
    if outcome.outcome == "resolved":
        return "This alert has resolved already; nothing to do."
    if outcome.outcome == "missing":
        return "This alert no longer exists."
    return None


def register(app: App, service: CommandService) -> None:
    runtime = service.runtime
    # The alert book draws its messages with handlers/render_alerts.py from now on.
    render_alerts.install(runtime)
    attention = AlertAttention(runtime.health.book)

    def listener(snooze: bool) -> Any:
        def on_click(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
            ack()
            new_request_id()
            user = str((body.get("user") or {}).get("id", ""))
            clicked = _clicked(body)

            def work() -> None:
                refusal = runtime.policy.alert_attention_refusal(user)
                if refusal is not None and clicked is not None:
                    attention.denied(clicked[0], user, "snooze" if snooze else "acknowledge", refusal)
                if clicked is None or (snooze and clicked[1] is None):
                    refusal = "that button's data is not readable; look at the alert again"
                    refuse_click(service, body, refusal)
                if refusal is None and clicked is not None:
                    alert_id, hours = clicked
                    try:
                        outcome = (
                            attention.snooze(alert_id, user, hours or 0)
                            if snooze
                            else attention.acknowledge(alert_id, user)
                        )
                    except UserFacingError as exc:  # a snooze of another length; the bot database down
                        refusal = exc.message
                    else:
                        refusal = _answer(outcome)
                        runtime.outbox_worker.notify()
                if refusal and body.get("response_url"):
                    respond(**render_deletion.refusal(refusal))

            runtime.submit(work)

        return on_click

    app.action(ACK_ACTION)(listener(snooze=False))
    app.action(SNOOZE_ACTION)(listener(snooze=True))
