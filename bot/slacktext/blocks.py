"""Block Kit builders: every message, view and dialog the bot sends is built from these.

Each builder takes text as a `Mrkdwn` (markup the bot authored) or a plain `str` (data, escaped
here), scrubs secrets and masks emails in all of it, and cuts it to the limit of the field it
fills without breaking the markup (bot/slacktext/truncate.py). `message` and `view` keep the whole
payload within Slack's limits (bot/slacktext/limits.py).
"""

from __future__ import annotations

import json
from typing import Any

from bot.pii import scrub
from bot.slacktext import limits
from bot.slacktext.mrkdwn import Mrkdwn, escape, md
from bot.slacktext.truncate import cut_plain, truncate
from bot.slacktext.words import plural

Block = dict[str, Any]
Message = dict[str, Any]
EMPTY = "-"  # Slack refuses an empty text object


def as_mrkdwn(text: str) -> Mrkdwn:
    """The final form of any mrkdwn text: data escaped, and secrets and emails out of all of it."""
    return Mrkdwn(scrub(escape(text))) or Mrkdwn(EMPTY)


def mrkdwn_text(text: str, limit: int = limits.SECTION_TEXT) -> Block:
    return {"type": "mrkdwn", "text": truncate(as_mrkdwn(text), limit)}


def plain_text(text: object, limit: int, *, emoji: bool = True) -> Block:
    """A plain_text object: shown as is by Slack, so only scrubbed and cut, never escaped."""
    shown = cut_plain(" ".join(scrub(str(text)).split()) or EMPTY, limit)
    block: Block = {"type": "plain_text", "text": shown}
    if emoji:
        block["emoji"] = True
    return block


def header(text: object) -> Block:
    return {"type": "header", "text": plain_text(text, limits.HEADER_TEXT)}


def section(text: str, *, accessory: Block | None = None, block_id: str | None = None) -> Block:
    block: Block = {"type": "section", "text": mrkdwn_text(text, limits.SECTION_TEXT)}
    if accessory:
        block["accessory"] = accessory
    if block_id:
        block["block_id"] = block_id[: limits.BLOCK_ID]
    return block


def fields(pairs: list[tuple[str, str]]) -> Block:
    """A section of label/value fields (labels are the bot's words, values any text)."""
    return {
        "type": "section",
        "fields": [mrkdwn_text(md("*{}*\n{}", label, value), limits.FIELD_TEXT) for label, value in pairs][
            : limits.SECTION_FIELDS
        ],
    }


def context(*texts: str) -> Block:
    elements = [mrkdwn_text(t, limits.CONTEXT_TEXT) for t in texts[: limits.CONTEXT_ELEMENTS]]
    return {"type": "context", "elements": elements}


def divider() -> Block:
    return {"type": "divider"}


def button(
    label: str,
    action_id: str,
    value: str | dict[str, Any] = "",
    *,
    style: str | None = None,
    confirm: Block | None = None,
) -> Block:
    data = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    if len(data) > limits.BUTTON_VALUE or len(action_id) > limits.ACTION_ID:
        raise ValueError(f"button {action_id!r}: its value or action_id is over Slack's limit")
    element: Block = {"type": "button", "text": plain_text(label, limits.BUTTON_TEXT), "action_id": action_id}
    if data:
        element["value"] = data
    if style:
        element["style"] = style
    if confirm:
        element["confirm"] = confirm
    return element


def confirm_dialog(title: str, text: str, confirm: str, deny: str = "Cancel", *, danger: bool = False) -> Block:
    """Slack's confirmation dialog: every part of it is plain_text (mrkdwn would show its backticks)."""
    dialog: Block = {
        "title": plain_text(title, limits.CONFIRM_TITLE, emoji=False),
        "text": plain_text(text, limits.CONFIRM_TEXT, emoji=False),
        "confirm": plain_text(confirm, limits.CONFIRM_BUTTON, emoji=False),
        "deny": plain_text(deny, limits.CONFIRM_BUTTON, emoji=False),
    }
    if danger:
        dialog["style"] = "danger"
    return dialog


def actions(*elements: Block, block_id: str | None = None) -> Block:
    block: Block = {"type": "actions", "elements": list(elements[: limits.ACTIONS_ELEMENTS])}
    if block_id:
        block["block_id"] = block_id[: limits.BLOCK_ID]
    return block


def lines_sections(lines: list[str], *, limit: int = limits.SECTION_TEXT) -> list[Block]:
    """Pack lines (each markup or data) into as few sections as the section limit allows."""
    blocks: list[Block] = []
    chunk: list[str] = []
    size = 0
    for raw in lines:
        line = truncate(as_mrkdwn(raw), limit)
        if chunk and size + len(line) + 1 > limit:
            blocks.append(section(Mrkdwn("\n".join(chunk))))
            chunk, size = [], 0
        chunk.append(line)
        size += len(line) + 1
    if chunk:
        blocks.append(section(Mrkdwn("\n".join(chunk))))
    return blocks


def block_chars(node: Any) -> int:
    """Characters of text in a block (every text object, field and element), as Slack counts them
    for `msg_blocks_too_long`."""
    if isinstance(node, dict):
        own = len(node["text"]) if isinstance(node.get("text"), str) else 0
        return own + sum(block_chars(v) for k, v in node.items() if k != "text" or not isinstance(v, str))
    if isinstance(node, list):
        return sum(block_chars(v) for v in node)
    return 0


def fit(blocks: list[Block], *, max_blocks: int, budget: int | None) -> list[Block]:
    """The blocks, within `max_blocks` and `budget` characters of text.

    Renderers summarise long output themselves (and attach the whole of it as a file); this is the
    net under them: headers and buttons stay, other blocks are kept in order while they fit, and a
    last line says how many were left out.
    """
    sizes = [block_chars(b) for b in blocks]
    if len(blocks) <= max_blocks and (budget is None or sum(sizes) <= budget):
        return blocks
    keep_always = {i for i, b in enumerate(blocks) if b.get("type") in ("header", "actions")}
    room_blocks = max_blocks - len(keep_always) - 1
    room_chars = (budget if budget is not None else 10**9) - sum(sizes[i] for i in keep_always) - 200
    kept: list[int] = []
    for i, size in enumerate(sizes):
        if i in keep_always:
            continue
        if len(kept) < room_blocks and size <= room_chars:
            kept.append(i)
            room_chars -= size
        else:
            break
    left_out = len(blocks) - len(keep_always) - len(kept)
    note = context(md(":scissors: {} of this message did not fit in Slack's limits.", plural(left_out, "part")))
    chosen = sorted(keep_always | set(kept))
    tail_actions = [i for i in chosen if blocks[i].get("type") == "actions" and i > max(kept, default=-1)]
    body = [blocks[i] for i in chosen if i not in tail_actions]
    return [*body, note, *(blocks[i] for i in tail_actions)]


def message(text: str, blocks: list[Block], *, ephemeral: bool = False, replace_original: bool = False) -> Message:
    """A message: the fallback `text` (notifications, screen readers) is mrkdwn too, escaped the same way."""
    msg: Message = {
        "text": truncate(as_mrkdwn(text), limits.TEXT_RECOMMENDED),
        "blocks": fit(blocks, max_blocks=limits.MESSAGE_BLOCKS, budget=limits.MESSAGE_BLOCKS_BUDGET),
        "response_type": "ephemeral" if ephemeral else "in_channel",
    }
    if replace_original:
        msg["replace_original"] = True
    return msg


def payload(msg: Message) -> dict[str, Any]:
    """What chat.postMessage / chat.update take from a message: its text and blocks."""
    return {"text": msg["text"], "blocks": msg["blocks"]}


def view(kind: str, blocks: list[Block], **extra: Any) -> dict[str, Any]:
    """An App Home tab or a modal, within the blocks a view may hold."""
    return {"type": kind, "blocks": fit(blocks, max_blocks=limits.VIEW_BLOCKS, budget=None), **extra}
