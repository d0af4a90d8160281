"""What an alert's Slack message says, as data; no Slack imports.

Alerts are posted by scheduled jobs through the outbox, with no command or handler on the path,
so their Block Kit is drawn by a renderer the Slack layer injects into the alert book
(`AlertBook.set_renderer`; handlers/render_alerts.py), like requests' (bot/requests/messages.py).
Here: when a change is worth an edit (`material`), whether an alert is snoozed, and which actions
apply under an open alert and on what (`alert_choices`), as plain data.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

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

SNOOZE_HOURS = (1, 4, 24)


def snoozed(alert: Any, now: datetime) -> bool:
    until = getattr(alert, "snoozed_until", None)
    return until is not None and until > now


def explain_command(stage: str, queryid: int | str) -> str:
    """The command an Explain button runs (handlers/actions.py runs it as if typed)."""
    return f"explain {queryid} --stage {stage}"


@dataclass(frozen=True)
class AlertChoices:
    """What can be done under an open alert, in this order: Acknowledge (until someone has), Snooze for one
    of `snooze_hours`, Explain (slow-query alerts: the command it runs, the query's generic plan, never run),
    and the operations its finding carries (`{"kind", "label", "target", "confirm"?}` on `stage`:
    Cancel query, Terminate session, Create index, ...; bot/requests/kinds.py)."""

    alert_id: int
    stage: str
    acknowledge: bool
    snooze_hours: tuple[int, ...]
    explain: str | None
    operations: tuple[dict[str, Any], ...]


def alert_choices(alert: Any) -> AlertChoices | None:
    """The actions under `alert` (a row of `alerts`); None once it has resolved."""
    if alert.state == "resolved":
        return None
    queryid = str(alert.object).removeprefix("queryid ")
    slow_query = alert.check_name == "slow_queries" and queryid != alert.object
    actions = getattr(alert, "actions", None) or []
    return AlertChoices(
        alert_id=alert.id,
        stage=alert.stage,
        acknowledge=not getattr(alert, "acknowledged_by", None),
        snooze_hours=SNOOZE_HOURS,
        explain=explain_command(alert.stage, queryid) if slow_query else None,
        operations=tuple(a for a in actions if isinstance(a, dict) and "kind" in a),
    )


# -- drawing it ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertRenderer:
    """The Slack layer's drawing of an alert (handlers/render_alerts.py), given to `AlertBook.set_renderer`.

    message(alert): its one message, as first posted and as every update rewrites it.
    reply(alert, kind, now): a reply in its thread (`kind` resolved, escalated or reminder).
    orphan(alert, kind): that reply as a message of its own, when the first post never reached Slack.
    """

    message: Callable[[Any], dict[str, Any]]
    reply: Callable[[Any, str, datetime], dict[str, Any]]
    orphan: Callable[[Any, str], dict[str, Any]]
