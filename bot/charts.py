"""Small PNG charts for Slack: a server's daily usage, a slow query's mean time per interval.

Rendered with matplotlib's Agg backend through the `Figure` API (no pyplot: no global state, safe
on worker threads), imported on first use so the bot starts without it. Each chart carries alt
text with its key numbers: Slack shows it to screen readers and where images are not shown.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from bot.slacktext.words import plural

MIN_POINTS = 3  # fewer points than this make no chart, only the numbers
WIDTH_IN, HEIGHT_IN, DPI = 7.0, 2.6, 100
CALLS_COLOUR, SESSIONS_COLOUR, MEAN_COLOUR = "#4a7bd0", "#e08a2c", "#c0392b"
ALT_TEXT_LIMIT = 2000  # Block Kit image alt_text


@dataclass(frozen=True)
class Chart:
    png: bytes
    title: str
    alt_text: str
    filename: str


def _figure() -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    figure.subplots_adjust(left=0.09, right=0.91, top=0.88, bottom=0.17)  # fixed margins: no layout engine
    axes = figure.subplots()
    axes.spines[["top", "right"]].set_visible(False)
    axes.grid(axis="y", alpha=0.3)
    return figure, axes


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _peak(values: Sequence[float], labels: Sequence[str], unit: str = "", when: str = "on") -> str:
    index = max(range(len(values)), key=lambda i: values[i])
    return f"{values[index]:,.0f}{unit} {when} {labels[index]}"


MAX_BARS = 120  # more days than this are drawn per week, then per month: readable, and drawn in well under a second


def usage_buckets(
    days: Sequence[date], calls: Sequence[int], sessions: Sequence[int]
) -> tuple[str, list[date], list[int], list[int]]:
    """Daily counts summed per day, week (from Monday) or month, whichever keeps the bars within MAX_BARS."""
    if len(days) <= MAX_BARS:
        return "day", list(days), list(calls), list(sessions)
    unit = "week" if len(days) <= MAX_BARS * 7 else "month"
    starts: list[date] = []
    summed_calls: list[int] = []
    summed_sessions: list[int] = []
    for day, day_calls, day_sessions in zip(days, calls, sessions, strict=True):
        start = day - timedelta(days=day.weekday()) if unit == "week" else day.replace(day=1)
        if not starts or starts[-1] != start:
            starts.append(start)
            summed_calls.append(0)
            summed_sessions.append(0)
        summed_calls[-1] += day_calls
        summed_sessions[-1] += day_sessions
    return unit, starts, summed_calls, summed_sessions


SPAN_DAYS = {"day": 1, "week": 7, "month": 30}  # a bar is 80% of its span wide
ADJECTIVE = {"day": "Daily", "week": "Weekly", "month": "Monthly"}


def daily_usage_chart(
    slug: str, stage: str, days: Sequence[date], calls: Sequence[int], sessions: Sequence[int]
) -> Chart:
    """Tool calls per day (week, month: `usage_buckets`) as bars (left axis), sessions as a line (right axis)."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    unit, days, calls, sessions = usage_buckets(days, calls, sessions)
    # A week's or a month's bar and point sit in the middle of its span; a day's on the day.
    middle = timedelta(days=0 if unit == "day" else SPAN_DAYS[unit] / 2)
    xs = [datetime.combine(d, datetime.min.time()) + middle for d in days]
    figure, axes = _figure()
    axes.bar(xs, calls, color=CALLS_COLOUR, width=0.8 * SPAN_DAYS[unit], label="tool calls")
    axes.set_ylabel(f"tool calls / {unit}", color=CALLS_COLOUR)
    right = axes.twinx()
    right.plot(xs, sessions, color=SESSIONS_COLOUR, marker="o", markersize=3, linewidth=1.5, label="sessions")
    right.set_ylabel(f"sessions / {unit}", color=SESSIONS_COLOUR)
    right.spines[["top"]].set_visible(False)
    for ax in (axes, right):
        ax.set_ylim(bottom=0)
    locator = AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    title = f"{slug} on {stage}: tool calls and sessions per {unit} (UTC)"
    axes.set_title(title, fontsize=10, loc="left")
    label = {"day": date.isoformat, "week": lambda d: f"the week of {d.isoformat()}", "month": lambda d: f"{d:%Y-%m}"}
    labels = [label[unit](d) for d in days]
    when = "on" if unit == "day" else "in"
    alt = (
        f"{ADJECTIVE[unit]} usage of {slug} on stage {stage}, {labels[0]} to {labels[-1]}: "
        f"{plural(sum(calls), 'tool call')} (peak {_peak(calls, labels, when=when)}), "
        f"{plural(sum(sessions), 'session')} (peak {_peak(sessions, labels, when=when)})."
    )
    return Chart(_png(figure), title, alt[:ALT_TEXT_LIMIT], f"{slug}-{stage}-daily.png")


def mean_time_chart(label: str, stage: str, points: Sequence[tuple[datetime, float]]) -> Chart | None:
    """A query's mean execution time per interval; None with fewer than MIN_POINTS intervals."""
    if len(points) < MIN_POINTS:
        return None
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    times = [t for t, _ in points]
    means = [m for _, m in points]
    figure, axes = _figure()
    axes.plot(times, means, color=MEAN_COLOUR, marker="o", markersize=3, linewidth=1.5)
    axes.set_ylim(bottom=0)
    axes.set_ylabel("mean ms / interval")
    locator = AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    title = f"{label} on {stage}: mean time per interval (UTC)"
    axes.set_title(title, fontsize=10, loc="left")
    labels = [t.strftime("%Y-%m-%d %H:%M UTC") for t in times]
    alt = (
        f"Mean time of {label} on stage {stage} over {len(points)} intervals, {labels[0]} to {labels[-1]}: "
        f"{means[0]:,.0f} ms first, {means[-1]:,.0f} ms last, highest {_peak(means, labels, ' ms')}."
    )
    return Chart(_png(figure), title, alt[:ALT_TEXT_LIMIT], f"{label.replace(' ', '-')}-{stage}-mean.png")
