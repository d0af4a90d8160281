"""Files in Slack: long output beside its summary, charts beside their numbers.

One upload is slack_sdk's `files_upload_v2`, the current flow: files.getUploadURLExternal, the
bytes POSTed to the URL it returns, then files.completeUploadExternal, which shares the file in a
channel (in a thread with `thread_ts`) or, without a channel, keeps it private to the bot (for an
image block that shows it, `slack_file`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.slacktext.files import Attachment

log = logging.getLogger(__name__)


def upload(
    client: WebClient,
    *,
    filename: str,
    title: str,
    content: bytes,
    channel: str | None = None,
    thread_ts: str | None = None,
    alt_txt: str | None = None,
) -> str:
    """Upload one file and return its id; raises SlackApiError / SlackClientError / OSError."""
    extra = {"channel": channel, "thread_ts": thread_ts} if channel else {}
    if alt_txt:
        extra["alt_txt"] = alt_txt
    response = client.files_upload_v2(filename=filename, title=title, content=content, **extra)
    shared = response.get("file") or (response.get("files") or [{}])[0]
    return str(shared["id"])


@dataclass(frozen=True)
class Uploaded:
    """The ids of the files that reached Slack, and why the next one did not (Slack's error code)."""

    ids: list[str] = field(default_factory=list)
    error: str | None = None


def upload_files(client: WebClient, *, channel: str, files: list[Attachment], thread_ts: str | None = None) -> Uploaded:
    """Share text files (reports, CSVs) in `channel`, in the thread of `thread_ts` if given.

    Stops at the first failure and says why (`not_in_channel`, `missing_scope`, a transport error):
    the message they belong to is out already, so the caller decides how to tell the reader.
    """
    ids: list[str] = []
    for attachment in files:
        try:
            ids.append(
                upload(
                    client,
                    filename=attachment.filename,
                    title=attachment.title,
                    content=attachment.content.encode(),
                    channel=channel,
                    thread_ts=thread_ts,
                )
            )
        except SlackApiError as exc:
            error = str(exc.response.get("error", "error")) if hasattr(exc.response, "get") else "error"
            log.warning("file upload failed", extra={"file": attachment.filename, "error": error})
            return Uploaded(ids, error)
        except (SlackClientError, OSError, KeyError) as exc:
            log.warning("file upload failed", extra={"file": attachment.filename, "error": type(exc).__name__})
            return Uploaded(ids, type(exc).__name__)
    return Uploaded(ids)
