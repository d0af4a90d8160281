"""The one boundary text crosses into Slack (design notes: "Text crosses into Slack at one boundary").

- `mrkdwn`: `Mrkdwn` (markup the bot authored) versus data (any other `str`, escaped); `md`, `code`,
  `bold`, `mention`, `link`.
- `truncate`: cuts that keep mrkdwn balanced.
- `blocks`: Block Kit builders that escape, scrub, mask and cut every text, and size messages and views.
- `limits`: Slack's limits, each with its documentation.
- `words`: plurals, times and sizes.
- `files`: long output as a file beside its summary.

Domain code (bot/) returns data; renderers turn it into blocks with these, and nothing else
builds Slack text.
"""

from bot.slacktext.blocks import (
    Block,
    Message,
    actions,
    as_mrkdwn,
    button,
    confirm_dialog,
    context,
    divider,
    fields,
    header,
    lines_sections,
    message,
    payload,
    plain_text,
    section,
    view,
)
from bot.slacktext.mrkdwn import (
    Mrkdwn,
    bold,
    code,
    code_block,
    escape,
    italic,
    link,
    md,
    mention,
    mentions,
    plain,
    prose,
)
from bot.slacktext.truncate import cut_plain, truncate
from bot.slacktext.words import human_bytes, noun, plural, when

__all__ = [
    "Block",
    "Message",
    "Mrkdwn",
    "actions",
    "as_mrkdwn",
    "bold",
    "button",
    "code",
    "code_block",
    "confirm_dialog",
    "context",
    "cut_plain",
    "divider",
    "escape",
    "fields",
    "header",
    "human_bytes",
    "italic",
    "lines_sections",
    "link",
    "md",
    "mention",
    "mentions",
    "message",
    "noun",
    "payload",
    "plain",
    "plain_text",
    "plural",
    "prose",
    "section",
    "truncate",
    "view",
    "when",
]
