"""Long output as a file beside its summary.

A message keeps what a reader needs at a glance (the largest tables, a count of the rest) and
carries the whole of it as an attachment: a text report or a CSV. A message dict may hold a
`files` list; whoever sends the message (a command's reply, the outbox) uploads them into the
same channel (bot/slack_client.py: `upload_files`), in the message's thread when it has one.
File content is cleaned like every other text: secrets scrubbed, emails masked.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bot.pii import scrub
from bot.slacktext.long import as_plain

FILES_KEY = "files"
SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Attachment:
    """A text file to share beside a message; with `thread_ts`, in the thread of that (public) message."""

    filename: str
    title: str
    content: str
    thread_ts: str | None = None

    def as_json(self) -> dict[str, str]:
        data = {"filename": self.filename, "title": self.title, "content": self.content}
        if self.thread_ts:
            data["thread_ts"] = self.thread_ts
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attachment:
        title = str(data.get("title") or data["filename"])
        return cls(str(data["filename"]), title, str(data["content"]), data.get("thread_ts") or None)


def filename(*parts: object, ext: str) -> str:
    """`impact-dev-acme-mcp.txt`: the parts joined, anything but letters, digits, `.`, `_`, `-` dropped."""
    stem = "-".join(SAFE_NAME_RE.sub("-", str(p)).strip("-") for p in parts if str(p))
    return f"{stem[:120] or 'report'}.{ext}"


def text_file(name: str, title: str, lines: Iterable[str], *, thread_ts: str | None = None) -> Attachment:
    """A plain-text report, one line per item (mrkdwn lines are shown as text: `&lt;` is `<` again)."""
    return Attachment(name, scrub(title), scrub("\n".join(as_plain(line) for line in lines)) + "\n", thread_ts)


def csv_file(name: str, title: str, header: list[str], rows: Iterable[Iterable[object]]) -> Attachment:
    """A CSV with a header row; every cell cleaned (an email in any column is masked)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if cell is None else scrub(str(cell)) for cell in row])
    return Attachment(name, scrub(title), buffer.getvalue())


def attach(message: dict[str, Any], *files: Attachment) -> dict[str, Any]:
    """The message with these files to upload beside it."""
    if files:
        message[FILES_KEY] = [*message.get(FILES_KEY, []), *(f.as_json() for f in files)]
    return message


def split_files(message: dict[str, Any]) -> tuple[dict[str, Any], list[Attachment]]:
    """What goes to chat.postMessage / chat.update / response_url, and the files that go beside it."""
    body = {k: v for k, v in message.items() if k != FILES_KEY}
    return body, [Attachment.from_json(f) for f in message.get(FILES_KEY) or []]
