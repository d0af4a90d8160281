"""Charts beside the numbers: /mcp stats, /mcp health and slow-query alert threads; failing soft."""

from __future__ import annotations

import io
import logging
from datetime import date, timedelta

from PIL import Image

from bot.charts import MAX_BARS, daily_usage_chart, usage_buckets
from bot.console.localslack import LocalSlack, UploadedFile
from tests.conftest import OPERATOR, TEST_SPEC, eventually, message_text
from tests.health_support import SLOW, sleep_statements
from tests.test_alert_attention import clicky  # noqa: F401 - the fixture


def _image_blocks(payload: dict) -> list[dict]:
    return [b for b in payload.get("blocks") or [] if b.get("type") == "image"]


def _decoded(slack: LocalSlack, file_id: str) -> tuple[UploadedFile, Image.Image]:
    file = slack.files[file_id]
    assert file.completed and file.content is not None
    image = Image.open(io.BytesIO(file.content))
    image.load()
    return file, image


def _sensible(image: Image.Image) -> None:
    assert image.format == "PNG"
    assert 400 <= image.width <= 2000 and 150 <= image.height <= 1200, image.size
    assert sum(1 for count in image.convert("L").histogram() if count) > 10, "a drawn chart, not a blank image"


def test_stats_shows_the_numbers_then_a_chart_of_daily_calls_and_sessions(bot):
    reply = bot.command(f"stats {TEST_SPEC.big_slug} --stage dev --days 30")
    numbers, with_chart = reply.responses(2, timeout=60)
    assert _image_blocks(numbers) == []
    assert with_chart["replace_original"] is True
    assert with_chart["blocks"][: len(numbers["blocks"])] == numbers["blocks"]  # the numbers stay, the chart joins
    [image_block] = _image_blocks(with_chart)
    file_id = image_block["slack_file"]["id"]
    file, image = _decoded(bot.slack, file_id)
    _sensible(image)
    assert file.channel is None  # uploaded privately, shown through the image block
    # The alt text carries the key numbers: the same totals as the message's fields.
    calls = next(f["text"] for b in numbers["blocks"] for f in b.get("fields", []) if "Tool calls" in f["text"])
    total = calls.split("\n")[-1].strip("*")
    assert f"{total} tool calls" in image_block["alt_text"] and "peak" in image_block["alt_text"]
    assert image_block["alt_text"] == file.alt_txt
    assert TEST_SPEC.big_slug in image_block["alt_text"]


def _numbers_without_chart(bot, caplog) -> tuple[str, logging.LogRecord]:
    """`/mcp stats` whose chart fails: the numbers are posted, `chart not shown` is logged. (path, record)"""
    with caplog.at_level(logging.WARNING):
        reply = bot.command(f"stats {TEST_SPEC.big_slug} --stage dev")
        [numbers] = reply.responses(1, timeout=30)
        assert eventually(lambda: "chart not shown" in caplog.text, timeout=60)
    assert "Tool calls" in message_text(numbers) and _image_blocks(numbers) == []
    record = next(r for r in caplog.records if "chart not shown" in r.getMessage())
    return reply.response_url.split(bot.slack.base_url, 1)[1], record


def test_a_chart_that_cannot_be_uploaded_leaves_the_numbers(bot, caplog):
    bot.slack.fail("files.getUploadURLExternal", status=500, times=20)
    path, _ = _numbers_without_chart(bot, caplog)
    assert len([c for c in bot.slack.calls_to("response_url") if c.path == path]) == 1
    assert bot.slack.files == {}


def _with_image(payload: dict) -> bool:
    return bool(_image_blocks(payload))


def test_an_answer_with_a_chart_slack_refuses_at_first_is_sent_again(bot):
    # Slack processes an upload after completeUploadExternal returns: an image block naming a file it has
    # not finished is refused (invalid_blocks) for a moment.
    bot.slack.fail("response_url", status=404, times=1, where=_with_image)
    reply = bot.command(f"stats {TEST_SPEC.big_slug} --stage dev")
    numbers, with_chart = reply.responses(2, timeout=60)
    assert _image_blocks(numbers) == [] and len(_image_blocks(with_chart)) == 1
    path = reply.response_url.split(bot.slack.base_url, 1)[1]
    refused = [c for c in bot.slack.calls if c.path == path and not c.ok]
    assert len(refused) == 1 and _with_image(refused[0].payload)


def test_an_answer_with_a_chart_slack_keeps_refusing_leaves_the_numbers(bot, caplog):
    bot.slack.fail("response_url", status=404, times=20, where=_with_image)
    path, record = _numbers_without_chart(bot, caplog)
    assert len([c for c in bot.slack.calls if c.path == path and not c.ok]) == 4  # tried, then three times more
    assert record.error == "ChartRefused"


def test_a_slow_query_gets_its_mean_time_chart_in_the_alert_thread_and_in_health(clicky, stage_db):  # noqa: F811
    clicker = clicky({"dev": stage_db.url}, **SLOW)
    health, slack = clicker.health, clicker.health.slack
    health.run("statements")
    for seconds in (0.005, 0.01):  # busy but fast: points in the history, no alert
        sleep_statements(stage_db.url, 4, seconds)
        health.run("statements")
    assert health.posts() == []
    sleep_statements(stage_db.url, 4, 0.05)
    health.run("statements")  # slow now: the alert, and with three points a chart in its thread
    [post] = health.posts()
    shared = eventually(lambda: [f for f in slack.files.values() if f.completed], timeout=60)
    [file] = shared
    ts = next(m.ts for m in slack.messages.values() if m.history[:1] == [post.payload] or m.payload == post.payload)
    assert (file.channel, file.thread_ts) == (post.payload["channel"], ts)
    _sensible(_decoded(slack, file.id)[1])
    assert "over 3 intervals" in (file.alt_txt or "") and "ms last" in (file.alt_txt or "")

    # /mcp health answers, then adds the same query's chart (now four points: the live interval is not stored).
    sleep_statements(stage_db.url, 4, 0.05)
    response_url = clicker.sender.new_response_url()
    assert (
        clicker.sender.slash("health --stage dev", user=OPERATOR, channel="C1", response_url=response_url).status == 200
    )
    path = response_url.split(slack.base_url, 1)[1]
    calls = slack.wait_for_call("response_url", lambda c: c.path == path, 60, 2)
    [image_block] = _image_blocks(calls[-1].payload)
    assert calls[-1].payload["replace_original"] is True
    health_file, image = _decoded(slack, image_block["slack_file"]["id"])
    _sensible(image)
    assert "queryid" in image_block["alt_text"] and "intervals" in image_block["alt_text"]
    assert health_file.channel is None


def test_a_long_window_is_drawn_per_week_then_per_month_with_the_same_totals():
    start = date(2023, 5, 17)  # a Wednesday: the first week is a partial one
    for count, unit in ((MAX_BARS, "day"), (MAX_BARS + 1, "week"), (MAX_BARS * 7 + 1, "month")):
        days = [start + timedelta(days=i) for i in range(count)]
        calls, sessions = [i % 37 for i in range(count)], [i % 5 for i in range(count)]
        got, starts, summed_calls, summed_sessions = usage_buckets(days, calls, sessions)
        assert got == unit and len(starts) <= MAX_BARS
        assert (sum(summed_calls), sum(summed_sessions)) == (sum(calls), sum(sessions))
        assert starts == sorted(set(starts)) and starts[0] <= days[0] <= days[-1] < starts[-1] + timedelta(days=31)
        assert all({"day": True, "week": s.weekday() == 0, "month": s.day == 1}[unit] for s in starts)
    chart = daily_usage_chart("acme-mcp", "dev", days, calls, sessions)  # over 840 days: per month
    assert chart.alt_text.startswith("Monthly usage of acme-mcp on stage dev, 2023-05 to ")
    assert f"{sum(calls):,} tool calls (peak " in chart.alt_text and "per month" in chart.title
    _sensible(Image.open(io.BytesIO(chart.png)))
