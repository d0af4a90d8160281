"""Is this payload one real Slack would accept? The fake Slack asks on every call.

Blocks and views are parsed with slack_sdk's own models (`Block.parse`, `View`) and checked with
`validate_json()`; a block that does not survive the round trip unchanged has an attribute or a
value Slack does not know (an empty text, an unknown key). Then the limits slack_sdk does not
check, each from Slack's documentation (the numbers live in bot/slacktext/limits.py, with the page
each comes from). The answer is the error code Slack itself gives for that mistake
(`invalid_blocks`, `msg_too_long`, `msg_blocks_too_long`, ...) plus a sentence for the test report.

One rule is ours, not Slack's: the bot never writes `<!channel>`, `<!here>`, `<!everyone>`,
a user-group ping or a link to anywhere but Slack itself, so one reaching Slack is injected data
(`unexpected_markup`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

from bot.slacktext import limits
from bot.slacktext.blocks import block_chars

MESSAGE_METHODS = ("chat.postMessage", "chat.postEphemeral", "chat.update", "response_url", "ack")
VIEW_METHODS = ("views.publish", "views.open", "views.update", "views.push")
# Special mentions, user-group pings, and links other than Slack's own (message permalinks, files).
INJECTED_MARKUP_RE = re.compile(
    r"<!(?:channel|here|everyone|subteam\^)[^>]*>|<(?!https://[a-z0-9.-]*slack\.com/)[a-z]+://"
)


@dataclass(frozen=True)
class Rejection:
    error: str  # Slack's error code
    detail: str  # what exactly, for the test report


def check(method: str, payload: dict[str, Any]) -> Rejection | None:
    """None when Slack would take `payload` for `method`, else why not."""
    if method in MESSAGE_METHODS:
        return _first(_message(payload, method))
    if method in VIEW_METHODS:
        return _first(_view(payload.get("view")))
    if method == "files.getUploadURLExternal":
        return _first(_upload_url(payload))
    if method == "files.completeUploadExternal":
        return _first(_complete_upload(payload))
    return None


def _first(problems: Iterator[Rejection]) -> Rejection | None:
    return next(problems, None)


def _message(payload: dict[str, Any], method: str) -> Iterator[Rejection]:
    if method == "ack" and "response_action" in payload:
        yield from _ack_action(payload)
        return
    text = payload.get("text")
    blocks = payload.get("blocks")
    if method in ("chat.postMessage", "chat.postEphemeral") and not text and not blocks:
        yield Rejection("no_text", "neither text nor blocks")
    if method == "chat.postEphemeral" and not payload.get("user"):
        yield Rejection("user_not_in_channel", "chat.postEphemeral without a user")
    if text is not None:
        if not isinstance(text, str):
            yield Rejection("invalid_arguments", "text is not a string")
            return
        if len(text) > limits.TEXT_HARD:
            yield Rejection("msg_too_long", f"text is {len(text):,} characters (Slack cuts at {limits.TEXT_HARD:,})")
        if len(text) > limits.TEXT_RECOMMENDED:
            yield Rejection(
                "msg_too_long", f"text is {len(text):,} characters (Slack asks for at most {limits.TEXT_RECOMMENDED:,})"
            )
        yield from _markup(text, "text")
    if payload.get("response_type") not in (None, "in_channel", "ephemeral"):
        yield Rejection("invalid_arguments", f"response_type {payload.get('response_type')!r}")
    if blocks is not None:
        yield from _blocks(blocks, limits.MESSAGE_BLOCKS)
        if isinstance(blocks, list) and (size := block_chars(blocks)) > limits.MESSAGE_BLOCKS_CHARS:
            yield Rejection("msg_blocks_too_long", f"{size:,} characters of text in blocks")


def _ack_action(payload: dict[str, Any]) -> Iterator[Rejection]:
    """A view_submission's ack: `errors` for input blocks, or a view to update/push."""
    action = payload.get("response_action")
    if action == "errors":
        errors = payload.get("errors")
        if not isinstance(errors, dict) or not errors:
            yield Rejection("invalid_arguments", "response_action errors without errors")
        return
    if action in ("update", "push"):
        yield from _view(payload.get("view"))
        return
    if action != "clear":
        yield Rejection("invalid_arguments", f"response_action {action!r}")


def _view(view: Any) -> Iterator[Rejection]:
    if not isinstance(view, dict):
        yield Rejection("invalid_arguments", "no view")
        return
    if len(json.dumps(view)) > limits.VIEW_JSON_BYTES:
        yield Rejection("invalid_arguments", "view over 250 kB")
    try:
        parsed = View(**view)
        parsed.validate_json()
    except (SlackObjectFormationError, TypeError, ValueError) as exc:
        yield Rejection("invalid_arguments", f"view: {exc}")
        return
    if len(str(view.get("private_metadata") or "")) > limits.VIEW_PRIVATE_METADATA:
        yield Rejection("invalid_arguments", "private_metadata over 3,000 characters")
    for key, limit in (("title", limits.VIEW_TITLE), ("submit", limits.VIEW_TITLE), ("close", limits.VIEW_TITLE)):
        if key in view:
            yield from _plain(view[key], limit, f"view {key}")
    yield from _blocks(view.get("blocks"), limits.VIEW_BLOCKS)


def _blocks(blocks: Any, max_blocks: int) -> Iterator[Rejection]:
    if not isinstance(blocks, list):
        yield Rejection("invalid_blocks_format", "blocks is not a list")
        return
    if len(blocks) > max_blocks:
        yield Rejection("invalid_blocks", f"{len(blocks)} blocks (at most {max_blocks})")
    for index, block in enumerate(blocks):
        for problem in _block(block):
            yield Rejection(problem.error, f"block {index} ({_type(block)}): {problem.detail}")


def _type(block: Any) -> str:
    return str(block.get("type")) if isinstance(block, dict) else type(block).__name__


def _block(block: Any) -> Iterator[Rejection]:
    if not isinstance(block, dict):
        yield Rejection("invalid_blocks", "not an object")
        return
    try:
        parsed = Block.parse(block)
        if parsed is None:
            yield Rejection("invalid_blocks", f"unknown block type {block.get('type')!r}")
            return
        parsed.validate_json()
        round_trip = parsed.to_dict()  # validates the elements inside too
    except (SlackObjectFormationError, TypeError, ValueError, KeyError) as exc:
        yield Rejection("invalid_blocks", str(exc))
        return
    if round_trip != block:
        yield Rejection("invalid_blocks", "an attribute Slack does not know, or an empty value")
    if len(str(block.get("block_id", ""))) > limits.BLOCK_ID:
        yield Rejection("invalid_blocks", "block_id over 255 characters")
    kind = block.get("type")
    if kind == "section":
        yield from _section(block)
    elif kind == "header":
        yield from _plain(block.get("text"), limits.HEADER_TEXT, "header")
    elif kind == "context":
        elements = block.get("elements") or []
        if len(elements) > limits.CONTEXT_ELEMENTS:
            yield Rejection("invalid_blocks", f"{len(elements)} context elements (at most 10)")
        for element in elements:
            if element.get("type") in ("mrkdwn", "plain_text"):
                yield from _text(element, limits.CONTEXT_TEXT, "context element")
    elif kind == "actions":
        elements = block.get("elements") or []
        if len(elements) > limits.ACTIONS_ELEMENTS:
            yield Rejection("invalid_blocks", f"{len(elements)} action elements (at most 25)")
        for element in elements:
            yield from _element(element)
    elif kind == "input":
        yield from _plain(block.get("label"), limits.INPUT_LABEL, "input label")
    elif kind == "image" and len(str(block.get("alt_text", ""))) > limits.IMAGE_ALT_TEXT:
        yield Rejection("invalid_blocks", "image alt_text over 2,000 characters")


def _section(block: dict[str, Any]) -> Iterator[Rejection]:
    if "text" in block:
        yield from _text(block["text"], limits.SECTION_TEXT, "section text")
    fields = block.get("fields") or []
    if len(fields) > limits.SECTION_FIELDS:
        yield Rejection("invalid_blocks", f"{len(fields)} fields (at most 10)")
    for field in fields:
        yield from _text(field, limits.FIELD_TEXT, "field")
    if "accessory" in block:
        yield from _element(block["accessory"])


def _element(element: dict[str, Any]) -> Iterator[Rejection]:
    if len(str(element.get("action_id", ""))) > limits.ACTION_ID:
        yield Rejection("invalid_blocks", "action_id over 255 characters")
    if element.get("type") == "button":
        yield from _plain(element.get("text"), limits.BUTTON_TEXT, "button text")
        if len(str(element.get("value", ""))) > limits.BUTTON_VALUE:
            yield Rejection("invalid_blocks", "button value over 2,000 characters")
    if "confirm" in element:
        yield from _confirm(element["confirm"])


def _confirm(dialog: dict[str, Any]) -> Iterator[Rejection]:
    """Every part of a confirmation dialog is plain_text; mrkdwn would show its markup literally."""
    for key, limit in (
        ("title", limits.CONFIRM_TITLE),
        ("text", limits.CONFIRM_TEXT),
        ("confirm", limits.CONFIRM_BUTTON),
        ("deny", limits.CONFIRM_BUTTON),
    ):
        if key in dialog:
            yield from _plain(dialog[key], limit, f"confirm dialog {key}")


def _plain(obj: Any, limit: int, where: str) -> Iterator[Rejection]:
    if not isinstance(obj, dict) or obj.get("type") != "plain_text":
        yield Rejection("invalid_blocks", f"{where} must be plain_text")
        return
    yield from _text(obj, limit, where)


def _text(obj: Any, limit: int, where: str) -> Iterator[Rejection]:
    if not isinstance(obj, dict) or obj.get("type") not in ("mrkdwn", "plain_text"):
        yield Rejection("invalid_blocks", f"{where} is not a text object")
        return
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        yield Rejection("invalid_blocks", f"{where} is empty")
        return
    if len(text) > limit:
        yield Rejection("invalid_blocks", f"{where} is {len(text):,} characters (at most {limit:,})")
    if obj["type"] == "mrkdwn":
        yield from _markup(text, where)


def _markup(text: str, where: str) -> Iterator[Rejection]:
    found = INJECTED_MARKUP_RE.search(text)
    if found:
        yield Rejection("unexpected_markup", f"{where} holds {found.group(0)!r}: data that was not escaped")


def _upload_url(payload: dict[str, Any]) -> Iterator[Rejection]:
    if not str(payload.get("filename") or "").strip():
        yield Rejection("invalid_arguments", "files.getUploadURLExternal without a filename")
    try:
        length = int(payload.get("length") or 0)
    except (TypeError, ValueError):
        length = 0
    if length <= 0:
        yield Rejection("invalid_arguments", "files.getUploadURLExternal without a length")


def _complete_upload(payload: dict[str, Any]) -> Iterator[Rejection]:
    files = payload.get("files")
    if isinstance(files, str):
        try:
            files = json.loads(files)
        except ValueError:
            files = None
    if not isinstance(files, list) or not files or not all(isinstance(f, dict) and f.get("id") for f in files):
        yield Rejection("invalid_arguments", "files.completeUploadExternal needs files: [{id, title}]")
    if payload.get("initial_comment"):
        yield from _markup(str(payload["initial_comment"]), "initial_comment")
