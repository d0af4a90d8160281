"""An alert's Slack message, its thread replies and the actions under it (Block Kit).

The alert book (bot/health/alerts.py) posts and rewrites these through the outbox, from scheduled
jobs; it is handed this drawing at start-up (`install`, from handlers/alerts.py for every process
with the Bolt app; a runtime without one, a test's or a bench's, calls `install` itself). What is
drawn is the alert row and `alert_choices` (bot/health/messages.py): every value from a stage
(titles carry query text and application_name, which any client chooses) is data, escaped at
the text boundary (bot/slacktext).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bot.health.checks import duration
from bot.health.messages import AlertChoices, AlertRenderer, alert_choices
from handlers.blocks import (
    Block,
    Mrkdwn,
    button,
    code,
    context,
    md,
    mention,
    message,
    payload,
    plain_text,
    prose,
    section,
)
from handlers.render_operations import operation_buttons

if TYPE_CHECKING:
    from bot.runtime import Runtime

SEVERITY_ICONS = {"critical": ":red_circle:", "warning": ":large_orange_circle:", "info": ":large_blue_circle:"}
ACTIONS_LIMIT = 25  # elements in one actions block (Block Kit)
ACK_ACTION = "alert_ack"
SNOOZE_ACTION = "alert_snooze"
EXPLAIN_ACTION = "explain_query"  # handlers/actions.py runs the command in its value as if typed


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "-"


# -- the actions under an alert -------------------------------------------------------------------


def action_elements(choices: AlertChoices) -> list[Block]:
    """Acknowledge, the Snooze menu, Explain and the finding's operations, as far as one actions block holds."""
    elements: list[Block] = []
    if choices.acknowledge:
        elements.append(button("Acknowledge", ACK_ACTION, str(choices.alert_id)))
    options = [
        {"text": plain_text(f"{hours} h", 75), "value": f"{choices.alert_id}:{hours}"} for hours in choices.snooze_hours
    ]
    elements.append(
        {
            "type": "static_select",
            "action_id": SNOOZE_ACTION,
            "placeholder": plain_text("Snooze", 150),
            "options": options,
        }
    )
    if choices.explain:
        value = json.dumps({"t": choices.explain}, separators=(",", ":"))
        elements.append(
            {
                "type": "button",
                "action_id": EXPLAIN_ACTION,
                "text": {"type": "plain_text", "text": "Explain"},
                "value": value,
            }
        )
    elements.extend(operation_buttons(choices.stage, list(choices.operations)))
    return elements[:ACTIONS_LIMIT]


def actions_block(alert: Any) -> Block | None:
    choices = alert_choices(alert)
    elements = action_elements(choices) if choices is not None else []
    if not elements:
        return None
    return {"type": "actions", "block_id": f"alert:{alert.id}", "elements": elements}


# -- the message and its thread -------------------------------------------------------------------


def _attention(alert: Any) -> list[Mrkdwn]:
    """Who acknowledged it, and until when it is snoozed."""
    notes = []
    if getattr(alert, "acknowledged_by", None):
        notes.append(
            md(":eyes: Acknowledged by {} at {}", mention(alert.acknowledged_by), _when(alert.acknowledged_at))
        )
    if getattr(alert, "snoozed_until", None) and getattr(alert, "snoozed_by", None):
        notes.append(md(":zzz: Snoozed until {} by {}", _when(alert.snoozed_until), mention(alert.snoozed_by)))
    return notes


def alert_message(alert: Any) -> dict[str, Any]:
    """The alert's one message, as first posted and as every update rewrites it."""
    resolved = alert.state == "resolved"
    status = "RESOLVED" if resolved else alert.severity.upper()
    icon = Mrkdwn(":white_check_mark:" if resolved else SEVERITY_ICONS.get(alert.severity, ":warning:"))
    shown_title = md("~{}~", prose(alert.title)) if resolved else prose(alert.title)
    blocks = [
        section(md("{} *{}* on stage *{}*: {}", icon, status, alert.stage, shown_title)),
        section(prose(alert.detail)),
    ]
    if not resolved and alert.advice:
        blocks.append(section(md("*What to do*\n{}", prose(alert.advice))))
    timeline = f"firing since {_when(alert.fired_at)}"
    if resolved:
        timeline += f", resolved {_when(alert.resolved_at)}"
    blocks.append(context(md("{} · {} · {}", code(alert.check_name), alert.object, timeline)))
    notes = _attention(alert)
    if notes:
        blocks.append(context(Mrkdwn(" · ").join(notes)))
    actions = actions_block(alert)
    if actions:
        blocks.append(actions)
    return payload(message(f"[{status}] {alert.stage}: {alert.title}", blocks))


def reply_text(alert: Any, kind: str, now: datetime | None = None) -> Mrkdwn:
    """A reply in the alert's thread: its resolution, its escalation, or a reminder that it still fires."""
    fired = alert.fired_at
    if kind == "resolved":
        lasted = duration((alert.resolved_at - fired).total_seconds()) if fired and alert.resolved_at else "a while"
        return md(":white_check_mark: Resolved after {}: {}", lasted, prose(alert.title))
    title = prose(alert.title)
    if kind == "escalated":
        icon = Mrkdwn(SEVERITY_ICONS.get(alert.severity, ":warning:"))
        return md("{} Escalated to *{}* on stage *{}*: {}", icon, alert.severity.upper(), alert.stage, title)
    since = duration(((now or alert.last_notified_at) - fired).total_seconds()) if fired else "a while"
    return md(":repeat: Still firing after {} on stage *{}*: {}", since, alert.stage, title)


def thread_reply(alert: Any, kind: str, now: datetime) -> dict[str, Any]:
    """What chat.postMessage takes for a reply in the alert's thread (besides where)."""
    return {"text": reply_text(alert, kind, now)}


def orphan_message(alert: Any, kind: str) -> dict[str, Any]:
    """When the alert's first post never reached Slack, its resolution or reminder is a message of its own."""
    shown = alert_message(alert)
    shown["blocks"].insert(0, section(reply_text(alert, kind)))
    return shown


RENDERER = AlertRenderer(message=alert_message, reply=thread_reply, orphan=orphan_message)


def install(runtime: Runtime) -> None:
    """Give the runtime's alert book this drawing; until then it posts nothing (it waits, then fails)."""
    runtime.health.book.set_renderer(RENDERER)
