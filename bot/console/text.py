"""Block Kit rendered as terminal text, for the console."""

from __future__ import annotations

import re
from typing import Any

LINK_RE = re.compile(r"<([^|>]+)\|([^>]+)>")
MENTION_RE = re.compile(r"<@([A-Z0-9]+)>")


def mrkdwn(text: str) -> str:
    text = MENTION_RE.sub(r"@\1", text)
    text = LINK_RE.sub(r"\2 (\1)", text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _text_of(obj: dict[str, Any] | None) -> str:
    if not obj:
        return ""
    return mrkdwn(str(obj.get("text", "")))


def menu_choices(element: dict[str, Any]) -> list[dict[str, Any]]:
    """A select menu's options as pressable elements labelled `<placeholder> <option>` (`Snooze 4 h`)."""
    if element.get("type") not in ("static_select", "overflow"):
        return []
    prefix = _text_of(element.get("placeholder"))
    return [
        {
            **element,
            "text": {"type": "plain_text", "text": f"{prefix} {_text_of(option.get('text'))}".strip()},
            "selected_option": option,
        }
        for option in element.get("options", [])
    ]


def buttons_in(blocks: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
    """Every button (and select menu option) with the block_id of its actions block (or section accessory)."""
    found: list[tuple[dict[str, Any], str]] = []
    for index, block in enumerate(blocks or []):
        block_id = block.get("block_id", f"b{index}")
        if block.get("type") == "actions":
            found += [(el, block_id) for el in block.get("elements", []) if el.get("type") == "button"]
            found += [(choice, block_id) for el in block.get("elements", []) for choice in menu_choices(el)]
        accessory = block.get("accessory")
        if block.get("type") == "section" and accessory and accessory.get("type") == "button":
            found.append((accessory, block_id))
    return found


def render_blocks(blocks: list[dict[str, Any]], fallback: str = "") -> str:
    if not blocks:
        return mrkdwn(fallback)
    lines: list[str] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "header":
            lines.append(f"== {_text_of(block.get('text'))} ==")
        elif kind == "section":
            if block.get("text"):
                lines.append(_text_of(block["text"]))
            for fld in block.get("fields", []):
                label, _, value = _text_of(fld).partition("\n")
                lines.append(f"  {label.strip('*')}: {value}")
            accessory = block.get("accessory")
            if accessory and accessory.get("type") == "button":
                lines.append(f"  [ {_text_of(accessory.get('text'))} ]")
        elif kind == "context":
            lines.append("  " + " ".join(_text_of(el) for el in block.get("elements", [])))
        elif kind == "divider":
            lines.append("-" * 40)
        elif kind == "actions":
            labels = [
                f"[ {_text_of(el.get('placeholder'))}: {' | '.join(_text_of(o.get('text')) for o in el['options'])} ]"
                if el.get("options")
                else f"[ {_text_of(el.get('text'))} ]"
                for el in block.get("elements", [])
            ]
            lines.append("  " + " ".join(labels) + "   (type: press <label>)")
        elif kind == "image":
            lines.append(f"  [chart: {block.get('alt_text', '')}]")
        elif kind == "input":
            lines.append(f"  {_text_of(block.get('label'))}: ____")
    return "\n".join(lines)
