"""Small PNG charts for Slack: a server's daily usage, a slow query's mean time per interval.

Rendered with matplotlib's Agg backend through the `Figure` API (no pyplot: no global state, safe
on worker threads), imported on first use so the bot starts without it. Each chart carries alt
text with its key numbers: Slack shows it to screen readers and where images are not shown.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

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


def _peak(values: Sequence[float], labels: Sequence[str], unit: str = "") -> str:
    index = max(range(len(values)), key=lambda i: values[i])
    return f"{values[index]:,.0f}{unit} on {labels[index]}"


def daily_usage_chart(
    slug: str, stage: str, days: Sequence[date], calls: Sequence[int], sessions: Sequence[int]
) -> Chart:
    """Tool calls per day as bars (left axis), sessions per day as a line (right axis)."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    figure, axes = _figure()
    axes.bar(days, calls, color=CALLS_COLOUR, width=0.8, label="tool calls")
    axes.set_ylabel("tool calls / day", color=CALLS_COLOUR)
    right = axes.twinx()
    right.plot(days, sessions, color=SESSIONS_COLOUR, marker="o", markersize=3, linewidth=1.5, label="sessions")
    right.set_ylabel("sessions / day", color=SESSIONS_COLOUR)
    right.spines[["top"]].set_visible(False)
    for ax in (axes, right):
        ax.set_ylim(bottom=0)
    locator = AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    title = f"{slug} on {stage}: tool calls and sessions per day (UTC)"
    axes.set_title(title, fontsize=10, loc="left")
    labels = [d.isoformat() for d in days]
    alt = (
        f"Daily usage of {slug} on stage {stage}, {labels[0]} to {labels[-1]}: "
        f"{sum(calls):,} tool calls (peak {_peak(calls, labels)}), "
        f"{sum(sessions):,} sessions (peak {_peak(sessions, labels)})."
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
