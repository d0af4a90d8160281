"""The Slack text of alert messages and their thread replies.

Alerts are posted by scheduled jobs through the outbox, with no command or handler on the
path, so (like `audit_line` in bot/audit.py) their text is composed here: plain mrkdwn in
section and context blocks, data escaped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bot.health.checks import duration

SEVERITY_ICONS = {"critical": ":red_circle:", "warning": ":large_orange_circle:", "info": ":large_blue_circle:"}
SECTION_LIMIT = 2900


def escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "-"


def _section(markdown: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": markdown[:SECTION_LIMIT]}}


def _context(markdown: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": markdown[:SECTION_LIMIT]}]}


def alert_message(alert: Any) -> dict[str, Any]:
    """The alert's one message, as first posted and as every update rewrites it."""
    resolved = alert.state == "resolved"
    status = "RESOLVED" if resolved else alert.severity.upper()
    icon = ":white_check_mark:" if resolved else SEVERITY_ICONS.get(alert.severity, ":warning:")
    title = escape(alert.title)
    shown_title = f"~{title}~" if resolved else title
    blocks = [
        _section(f"{icon} *{status}* on stage *{escape(alert.stage)}*: {shown_title}"),
        _section(escape(alert.detail)),
    ]
    if not resolved and alert.advice:
        blocks.append(_section(f"*What to do*\n{escape(alert.advice)}"))
    timeline = f"firing since {_when(alert.fired_at)}"
    if resolved:
        timeline += f", resolved {_when(alert.resolved_at)}"
    else:
        timeline += f", last seen {_when(alert.last_seen_at)}"
    blocks.append(_context(f"`{escape(alert.check_name)}` · {escape(alert.object)} · {timeline}"))
    return {"text": f"[{status}] {alert.stage}: {alert.title}"[:3000], "blocks": blocks}


def reply_text(alert: Any, kind: str, now: datetime | None = None) -> str:
    """A reply in the alert's thread: its resolution, its escalation, or a reminder that it still fires."""
    fired = alert.fired_at
    if kind == "resolved":
        lasted = duration((alert.resolved_at - fired).total_seconds()) if fired and alert.resolved_at else "a while"
        return f":white_check_mark: Resolved after {lasted}: {escape(alert.title)}"
    if kind == "escalated":
        icon = SEVERITY_ICONS.get(alert.severity, ":warning:")
        return f"{icon} Escalated to *{alert.severity.upper()}* on stage *{escape(alert.stage)}*: {escape(alert.title)}"
    since = duration(((now or alert.last_notified_at) - fired).total_seconds()) if fired else "a while"
    return f":repeat: Still firing after {since} on stage *{escape(alert.stage)}*: {escape(alert.title)}"


def orphan_message(alert: Any, kind: str) -> dict[str, Any]:
    """When the alert's first post never reached Slack, its resolution or reminder is a message of its own."""
    message = alert_message(alert)
    message["blocks"].insert(0, _section(reply_text(alert, kind)))
    return message
