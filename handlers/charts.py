"""Charts beside the numbers: rendered and uploaded after the answer is posted, never failing it.

`/mcp stats` and `/mcp health` answers are posted first; then the chart (bot/chart_sources.py) is
rendered, uploaded privately (files.getUploadURLExternal + files.completeUploadExternal) and the answer
is replaced by the same blocks plus an image block referencing the file (`slack_file`). A slow-query
alert gets its chart as a file in its thread once its first post (or escalation) is in Slack. Any
failure is logged and leaves the numbers as they were.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from slack_bolt import App, Respond
from slack_sdk import WebClient

from bot.chart_sources import CHARTS, SLOW_QUERY_CHECK, queryid_of, slow_query_chart
from bot.charts import Chart
from bot.runtime import Runtime
from bot.service import CommandOutcome, CommandRequest, CommandService
from bot.slack_files import upload

log = logging.getLogger(__name__)
POST_WAIT_S = 120.0  # how long an alert's chart waits for the alert's first post to reach Slack
MAX_BLOCKS = 50
REPLACE_RETRY_S = (1.0, 2.0, 4.0)  # waits before trying the answer with its chart again


def upload_chart(client: WebClient, chart: Chart, *, channel: str | None = None, thread_ts: str | None = None) -> str:
    """Upload the PNG; private unless `channel` (and `thread_ts`) share it. Returns the file's id."""
    return upload(
        client,
        filename=chart.filename,
        title=chart.title,
        content=chart.png,
        channel=channel,
        thread_ts=thread_ts,
        alt_txt=chart.alt_text,
    )


def image_block(file_id: str, chart: Chart) -> dict[str, Any]:
    return {
        "type": "image",
        "slack_file": {"id": file_id},
        "alt_text": chart.alt_text,
        "title": {"type": "plain_text", "text": chart.title[:2000]},
    }


def attach_chart(
    runtime: Runtime, request: CommandRequest, outcome: CommandOutcome, message: dict[str, Any], respond: Respond
) -> None:
    """After `message` (the answer) was posted: add the verb's chart to it, if it has one."""
    source = CHARTS.get(request.verb)
    blocks = message.get("blocks") or []
    if source is None or outcome.error is not None or len(blocks) >= MAX_BLOCKS:
        return
    try:
        chart = source(runtime, request, outcome.result)
        if chart is None:
            return
        file_id = upload_chart(runtime.slack, chart)
        _replace(
            runtime, respond, {**message, "blocks": [*blocks, image_block(file_id, chart)], "replace_original": True}
        )
    except Exception as exc:
        log.warning("chart not shown", extra={"verb": request.verb, "error": type(exc).__name__}, exc_info=True)


class ChartRefused(RuntimeError):
    """Slack would not take the answer with its chart (an error status on the response_url)."""


def _replace(runtime: Runtime, respond: Respond, message: dict[str, Any]) -> None:
    """Replace the answer by `message`; retried a few times, because Slack processes an upload after
    files.completeUploadExternal returns and refuses an image block of a file it has not finished
    (`invalid_blocks`). A response_url answers errors with a status, not an exception."""
    for delay in (*REPLACE_RETRY_S, None):
        response = respond(**message)
        if response.status_code == 200:
            return
        if delay is None or not runtime.accepting:
            raise ChartRefused(f"the response_url answered {response.status_code}: {str(response.body)[:200]}")
        time.sleep(delay)


def alert_chart(runtime: Runtime, alert_id: int) -> None:
    """A slow-query alert's mean time per interval, as a file in its thread (when there are enough points)."""
    try:
        deadline = time.monotonic() + POST_WAIT_S
        row, channel, ts = runtime.health.book.posted(alert_id)
        waiting = row is not None and row.check_name == SLOW_QUERY_CHECK and row.post_outbox_id is not None
        while waiting and not ts and runtime.accepting and time.monotonic() < deadline:
            time.sleep(0.5)
            row, channel, ts = runtime.health.book.posted(alert_id)
        queryid = queryid_of(row.object) if row is not None and row.check_name == SLOW_QUERY_CHECK else None
        if queryid is None or not channel or not ts:
            return
        chart = slow_query_chart(runtime, row.stage, queryid)
        if chart is not None:
            upload_chart(runtime.slack, chart, channel=channel, thread_ts=ts)
    except Exception as exc:
        log.warning("alert chart not shown", extra={"alert_id": alert_id, "error": type(exc).__name__})


def register(app: App, service: CommandService) -> None:
    """Slow-query alerts that are posted or escalate get their chart in their thread."""
    runtime = service.runtime

    def announced(alert_ids: list[int]) -> None:
        for alert_id in alert_ids:
            runtime.submit(alert_chart, runtime, alert_id)

    runtime.health.book.on_announced = announced
