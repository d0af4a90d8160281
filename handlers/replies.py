"""How a rendered reply reaches Slack: the message through `response_url`, its files beside it.

A message may carry files (bot/slacktext/files.py): the whole report its summary stands for. They
are shared in the command's channel after the reply, or in the thread of the public message they
name (a delete request's); an ephemeral reply's other files are never shared, since everyone in the
channel would see them. If Slack refuses the upload (the bot is not in the channel, say), only the
person who asked is told, and why.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import Respond
from slack_sdk import WebClient

from bot.slack_files import upload_files
from bot.slacktext import code, md, message, section
from bot.slacktext.files import split_files

log = logging.getLogger(__name__)


def send(respond: Respond, client: WebClient, channel: str | None, reply: dict[str, Any]) -> dict[str, Any]:
    """Post `reply` through `respond`, then its files; returns what was posted (the reply without files)."""
    body, files = split_files(reply)
    respond(**body)
    private = body.get("response_type") == "ephemeral"
    shareable = [f for f in files if f.thread_ts or not private]
    if len(shareable) < len(files):
        log.info("files of an ephemeral reply not shared", extra={"files": len(files) - len(shareable)})
    if not shareable or not channel:
        return body
    for thread in dict.fromkeys(f.thread_ts for f in shareable):
        uploaded = upload_files(
            client, channel=channel, files=[f for f in shareable if f.thread_ts == thread], thread_ts=thread
        )
        if uploaded.error:
            text = md(
                ":warning: The full report could not be attached here (Slack said {}). Invite the bot to this "
                "channel (`/invite @mcp-ops`) and run the command again to get it.",
                code(uploaded.error),
            )
            respond(**message(text, [section(text)], ephemeral=True))
            break
    return body
