"""Buttons that ask for an operation where the trouble is shown: under an alert, in a listing.

An action is `{"kind", "label", "target", "confirm"?}`: a finding carries its actions (a health
check puts them on `Finding.actions`, the alert row keeps them, `alert_choices` in
bot/health/messages.py hands them to handlers/render_alerts.py), a listing builds them the same
way. The button's value names the kind, the stage and the target's identity; the click only
*asks* (handlers/operations.py): the machine checks who may ask, the kind re-reads the target,
and the policy table says whether the click was the confirmation (unprotected stages) or
approvers must agree.
"""

from __future__ import annotations

import json
from typing import Any

from bot.errors import CommandError
from handlers.blocks import button, confirm_dialog

ACTION_PREFIX = "op:"
DANGER = frozenset({"terminate", "drop-index"})


def operation_button(stage: str, action: dict[str, Any], index: int) -> dict[str, Any] | None:
    """The Block Kit button for one action on `stage`; None if its value would not fit."""
    kind = str(action["kind"])
    value = json.dumps({"k": kind, "s": stage, "t": action["target"]}, separators=(",", ":"), sort_keys=True)
    label = str(action.get("label") or kind)
    danger = kind in DANGER
    confirm = action.get("confirm")
    dialog = confirm_dialog(f"{label}?", str(confirm), label, "Back", danger=danger) if confirm else None
    style = "danger" if danger else None
    try:
        return button(label, f"{ACTION_PREFIX}{kind}:{index}", value, style=style, confirm=dialog)
    except ValueError:  # over Slack's limit for a button's value: the finding still says what to run
        return None


def operation_buttons(stage: str, actions: list[dict[str, Any]], start: int = 0) -> list[dict[str, Any]]:
    found = (operation_button(stage, action, start + i) for i, action in enumerate(actions))
    return [element for element in found if element is not None]


def read_value(value: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(kind, stage, target) from a clicked button's value; CommandError when it is not one of ours."""
    kind, stage, target = value.get("k"), value.get("s"), value.get("t")
    if not isinstance(kind, str) or not isinstance(stage, str) or not isinstance(target, dict):
        raise CommandError("that button's data is not readable; look at the alert or the list again")
    return kind, stage, target
