"""The Slack text of alert messages and their thread replies.

Alerts are posted by scheduled jobs through the outbox, with no command or handler on the
path, so (like `audit_line` in bot/audit.py) their text is composed here, through the text
boundary (bot/slacktext): every value from a stage (titles carry query text and
application_name, which any client chooses) is data.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from bot.health.checks import duration
from bot.slacktext import Mrkdwn, button, code, context, md, mention, message, payload, plain_text, prose, section

SEVERITY_ICONS = {"critical": ":red_circle:", "warning": ":large_orange_circle:", "info": ":large_blue_circle:"}


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "-"


# -- when is a change worth an edit ------------------------------------------------------------
#
# An alert's message is rewritten (chat.update) only when something a reader would act on changes:
# its severity, its state, or its text once every number is reduced to the step it stands on.
# Durations ("12 min", "1 h 5 min", "3 days") step at 10 s, 30 s, 1, 2, 5, 10, 15, 30 min, 1, 2, 4, 8,
# 12 h, 1, 2, 7 days; percentages every 10 points; other numbers on a 1-2-5 scale (…, 10, 20, 50,
# 100, …). A query running for 7 then 8 minutes, or a mean going from 52 to 61 ms, is not an edit;
# crossing 10 minutes or 100 ms is. Digits inside a name (`events_2024_03`) are the name, not a number.
# Between edits the stored row still follows every run.

DURATION_STEPS_S = (0, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14_400, 28_800, 43_200, 86_400, 172_800)
# One pass, so a step written in place is not read again as a number.
STEP_RE = re.compile(
    r"\b(?:(?P<hours>\d+) h )?(?P<amount>\d+) (?P<unit>s|min|h|days?)\b"  # a duration
    r"|(?P<percent>\d+(?:\.\d+)?)%"
    r"|(?<![\w.])(?P<number>\d[\d,]*(?:\.\d+)?)"  # not the digits of a name (events_2024_03, v2)
)
UNIT_S = {"s": 1, "min": 60, "h": 3600, "day": 86_400, "days": 86_400}


def _step(match: re.Match[str]) -> str:
    if match.group("unit"):
        seconds = int(match.group("hours") or 0) * 3600 + int(match.group("amount")) * UNIT_S[match.group("unit")]
        if seconds >= 604_800:
            return "⟨a week or more⟩"
        return f"⟨{max(step for step in DURATION_STEPS_S if step <= seconds)} s⟩"
    if match.group("percent"):
        return f"⟨{int(float(match.group('percent')) // 10 * 10)}%⟩"
    value = float(match.group("number").replace(",", ""))
    if value <= 0:
        return "⟨0⟩"
    decade = 10 ** math.floor(math.log10(value))
    return f"⟨{max(m for m in (1, 2, 5) if m * decade <= value * (1 + 1e-9)) * decade:g}⟩"


def material(alert: Any) -> tuple[str, str]:
    """What an edit of the alert's message would tell a reader: severity and the text with numbers as steps."""
    return alert.severity, STEP_RE.sub(_step, "\n".join((alert.title, alert.detail, alert.advice)))


# -- the actions under an alert -------------------------------------------------------------------
#
# Each feature appends a function to ALERT_ACTIONS (or decorates it with @alert_action) that returns the
# elements it adds under an open alert (possibly none). They are shown in one actions block, in
# registration order; Acknowledge and Snooze are first.

AlertActions = Callable[[Any], list[dict[str, Any]]]
ALERT_ACTIONS: list[AlertActions] = []
ACTIONS_LIMIT = 25  # elements in one actions block (Block Kit)
ACK_ACTION = "alert_ack"
SNOOZE_ACTION = "alert_snooze"
SNOOZE_HOURS = (1, 4, 24)


def alert_action(func: AlertActions) -> AlertActions:
    ALERT_ACTIONS.append(func)
    return func


def snoozed(alert: Any, now: datetime) -> bool:
    until = getattr(alert, "snoozed_until", None)
    return until is not None and until > now


@alert_action
def acknowledge_and_snooze(alert: Any) -> list[dict[str, Any]]:
    elements: list[dict[str, Any]] = []
    if not getattr(alert, "acknowledged_by", None):
        elements.append(button("Acknowledge", ACK_ACTION, str(alert.id)))
    options = [{"text": plain_text(f"{hours} h", 75), "value": f"{alert.id}:{hours}"} for hours in SNOOZE_HOURS]
    elements.append(
        {
            "type": "static_select",
            "action_id": SNOOZE_ACTION,
            "placeholder": plain_text("Snooze", 150),
            "options": options,
        }
    )
    return elements


EXPLAIN_ACTION = "explain_query"


def explain_command(stage: str, queryid: int | str) -> str:
    """The command an Explain button runs (handlers/actions.py runs it as if typed)."""
    return f"explain {queryid} --stage {stage}"


@alert_action
def explain_button(alert: Any) -> list[dict[str, Any]]:
    """Slow-query alerts (object `queryid N`) carry Explain: the query's generic plan, never run."""
    queryid = str(alert.object).removeprefix("queryid ")
    if alert.check_name != "slow_queries" or queryid == alert.object:
        return []
    value = json.dumps({"t": explain_command(alert.stage, queryid)}, separators=(",", ":"))
    return [
        {
            "type": "button",
            "action_id": EXPLAIN_ACTION,
            "text": {"type": "plain_text", "text": "Explain"},
            "value": value,
        }
    ]


def actions_block(alert: Any) -> dict[str, Any] | None:
    elements = [element for actions in ALERT_ACTIONS for element in actions(alert)]
    if not elements:
        return None
    return {"type": "actions", "block_id": f"alert:{alert.id}", "elements": elements[:ACTIONS_LIMIT]}


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
    actions = None if resolved else actions_block(alert)
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


def orphan_message(alert: Any, kind: str) -> dict[str, Any]:
    """When the alert's first post never reached Slack, its resolution or reminder is a message of its own."""
    shown = alert_message(alert)
    shown["blocks"].insert(0, section(reply_text(alert, kind)))
    return shown
