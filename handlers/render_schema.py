"""Replies of the schema verbs: `/mcp drift` and `/mcp migrations`."""

from __future__ import annotations

from bot.schema.drift import DriftReport, group_title
from bot.service import CommandRequest
from handlers.blocks import Message, context, escape, lines_sections, message, section
from handlers.render import renders

MAX_DIFF_LINES = 25  # shown in the message; the whole diff goes in the attached file
MAX_LINE_CHARS = 300
MAX_SUMMARY_GROUPS = 12


def _clip(line: str) -> str:
    return line if len(line) <= MAX_LINE_CHARS else line[: MAX_LINE_CHARS - 1] + "…"


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


@renders("drift")
def render_drift(request: CommandRequest, report: DriftReport) -> Message:
    a, b = escape(report.stage_a), escape(report.stage_b)
    left_out = ", ".join(f"`{escape(p)}`" for p in (*report.excluded, *report.ignored))
    footer = context(
        f"{_plural(report.tables_compared, 'table')} compared from the catalogs in {report.took_ms:,} ms "
        f"({max(report.queries.values(), default=0)} catalog queries per stage); left out: {left_out} "
        "and objects that belong to extensions."
    )
    if report.identical:
        text = f"{report.stage_a} and {report.stage_b}: identical schemas"
        return message(text, [section(f":white_check_mark: *{a}* and *{b}* have identical schemas."), footer])
    grouped = report.by_group()
    summary = ", ".join(
        f"{escape(group.removeprefix('public.') or 'database')} ({len(diffs)})"
        for group, diffs in list(grouped.items())[:MAX_SUMMARY_GROUPS]
    )
    if len(grouped) > MAX_SUMMARY_GROUPS:
        summary += f" and {len(grouped) - MAX_SUMMARY_GROUPS:,} more"
    title = (
        f":twisted_rightwards_arrows: Schema drift between *{a}* and *{b}*: "
        f"{_plural(len(report.differences), 'difference')} in {_plural(len(grouped), 'place')}: {summary}"
    )
    lines: list[str] = []
    shown = 0
    for group, diffs in grouped.items():
        if shown >= MAX_DIFF_LINES:
            break
        lines.append(f"*{escape(group_title(group))}*")
        for diff in diffs[: MAX_DIFF_LINES - shown]:
            lines.append(f"• {escape(_clip(diff.describe(report.stage_a, report.stage_b)))}")
            shown += 1
    blocks = [section(title), *lines_sections(lines)]
    if shown < len(report.differences):
        blocks.append(section(f"_… and {len(report.differences) - shown:,} more differences_"))
    blocks.append(footer)
    return message(f"{report.stage_a} vs {report.stage_b}: {len(report.differences)} schema differences", blocks)
