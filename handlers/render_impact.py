"""The impact report and a delete's per-table result in Slack, at any size.

A message shows the largest tables and the head of every list (warnings, keys without an index,
triggers, blockers) and counts the rest; the whole report is a text file beside it
(bot/slacktext/files.py), or `/mcp impact` lists it when the message carries no file (a request's
message, which lives on). Used by the delete command's replies and by the request messages.
"""

from __future__ import annotations

from typing import Any

from bot.deletion.impact import Blocker, ImpactReport, SlowKey, TriggerNote
from bot.indexes.targets import create_index_action
from bot.slacktext.files import Attachment, filename, text_file
from bot.slacktext.long import head
from handlers.blocks import (
    Block,
    Mrkdwn,
    actions,
    code,
    code_block,
    context,
    lines_sections,
    md,
    noun,
    plural,
    prose,
    section,
)
from handlers.render_operations import operation_buttons

ACTIONS_PER_BLOCK = 5  # Create index buttons under an impact report
SLOW_KEY_WARN_S = 1.0  # below this a missing index is listed, not shouted about
MAX_LIST_LINES = 15  # tables, blocker lines: the largest in the message, all of them in the file or thread
MAX_WARNING_LINES = 6  # warnings, keys and triggers, each with a paragraph of advice


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def rows_of(count: int) -> Mrkdwn:
    """`*1* row`, `*1,234* rows`."""
    return md("*{:,}* {}", count, noun(count, "row"))


def _table_lines(report: ImpactReport, *, largest_first: bool = False) -> list[Mrkdwn]:
    """A line per table the delete touches, in plan order (or the largest first, for a summary)."""
    tables = [t for t in report.tables if t.action == "delete" or t.rows]
    if largest_first:
        tables = sorted(tables, key=lambda t: -t.rows)
    lines: list[Mrkdwn] = []
    for t in tables:
        if t.action == "delete":
            via = md(" ({})", "; ".join(t.via)) if t.via else Mrkdwn("")
            lines.append(md("• {}: {} to delete{}", code(t.table), rows_of(t.rows), via))
        else:
            lines.append(
                md(
                    "• {}: {} to set to {} ({}; {})",
                    code(t.table),
                    rows_of(t.rows),
                    t.action.removeprefix("set ").upper(),
                    ", ".join(t.columns),
                    "; ".join(t.via),
                )
            )
    return lines


def capped(lines: list[Mrkdwn], what: str, more: Mrkdwn, limit: int = MAX_LIST_LINES) -> list[Mrkdwn]:
    """The head of a list, then how many more there are and where they are (`more`); `what` is plural
    ("tables"), said in the singular for one."""
    return head(lines, limit=limit, rest=lambda n: md("_… and {:,} more {}: {}_", n, _one(what, n), more))[0]


def _one(what: str, n: int) -> str:
    return what.removesuffix("s") if n == 1 else what


def _key_name(key: SlowKey) -> str:
    return f"{key.table}({', '.join(key.columns)})"


def _slow_key_line(key: SlowKey) -> Mrkdwn:
    return md(
        ":warning: {} has no index: each of the {} deleted {} rows makes the database scan it "
        "(~{:,.1f} ms each, *~{}* in all). Create the index first, outside the delete:\n{}",
        code(_key_name(key)),
        md("*{:,}*", key.parent_rows),
        code(key.parent),
        key.per_row_ms,
        duration(key.estimated_s),
        code_block(key.create_index),
    )


def _blocker_lines(blockers: list[Blocker]) -> list[Mrkdwn]:
    lines: list[Mrkdwn] = []
    for blocker in blockers:
        lines.append(md(":no_entry: {}", blocker.reason))
        if blocker.edge:
            lines.append(md("    {}", code(blocker.edge)))
        for row in blocker.sample:
            lines.append(md("    ◦ {}", Mrkdwn(", ").join(md("{}={}", k, code(v)) for k, v in row.items())))
        if blocker.rows > len(blocker.sample) and blocker.sample:
            lines.append(md("    ◦ … {:,} more", blocker.rows - len(blocker.sample)))
    return lines


RESTORE_WORDS = {
    "": "",
    "disabled": " A restore turns it off while it puts the rows back.",
    "fires": " A restore would fire it (the bot's role does not own the table, so it can't turn it off).",
}
DELETE_WORDS = {
    True: "fires during the delete: whatever it changes is not counted here nor kept in the backup.",
    False: "fires when rows are put back.",
}


def _trigger_lines(triggers: list[TriggerNote]) -> list[Mrkdwn]:
    return [
        md(
            ":zap: {} on {} ({}) {}{}",
            code(t.trigger),
            code(t.table),
            t.definition,
            DELETE_WORDS[t.on_delete],
            RESTORE_WORDS.get(t.on_restore, ""),
        )
        for t in triggers
    ]


def _warning_lines(report: ImpactReport, *, protected: bool) -> list[Mrkdwn]:
    warnings: list[Mrkdwn] = []
    if protected:
        warnings.append(Mrkdwn(":lock: This stage is protected."))
    if report.limit_s and report.estimated_s > report.limit_s:
        warnings.append(
            md(
                ":warning: The delete is expected to take ~{}, more than the {} a delete may run ({}): it would be "
                "cancelled and rolled back. Create the missing index below first.",
                duration(report.estimated_s),
                duration(report.limit_s),
                code("DELETE_TIMEOUT_SECONDS"),
            )
        )
    warnings += [
        md(
            ":warning: {} of {} in the delete {} not belong to this server ({} points elsewhere): they go because "
            "they hang off this server's orphaned users.",
            rows_of(e.rows),
            code(e.table),
            "does" if e.rows == 1 else "do",
            e.edge,
        )
        for e in report.elsewhere
    ]
    slow = [k for k in report.slow_keys if k.estimated_s >= SLOW_KEY_WARN_S]
    warnings += [_slow_key_line(k) for k in slow]
    if report.schema_warnings:
        first, *rest = report.schema_warnings
        warnings.append(
            md(":twisted_rightwards_arrows: {}", prose(first)) + Mrkdwn("").join(md("\n• {}", prose(r)) for r in rest)
        )
    return warnings


def _minor_keys(report: ImpactReport) -> list[Mrkdwn]:
    return [
        md("{} ({} x ~{:.2f} ms)", code(_key_name(k)), plural(k.parent_rows, "row"), k.per_row_ms)
        for k in report.slow_keys
        if k.estimated_s < SLOW_KEY_WARN_S
    ]


def _summary(report: ImpactReport) -> Mrkdwn:
    tables = sum(1 for t in report.tables if t.action == "delete" and t.rows)
    return md(
        "*Total: {}* in {}, {} (users whose every session is on this server). Expected duration: *~{}*.",
        plural(report.total_rows, "row"),
        plural(tables, "table"),
        plural(report.orphaned_users, "orphaned user"),
        duration(report.estimated_s),
    )


def _counted(report: ImpactReport) -> Mrkdwn:
    return md(
        "Counted by the database in {:,} ms from the live catalog ({} checked). Snapshot {}.",
        report.took_ms,
        plural(report.checked_tables, "table"),
        code(report.snapshot_hash[:12]),
    )


def impact_file(report: ImpactReport, stage: str, *, thread_ts: str | None = None) -> Attachment:
    """The whole impact report as a text file: every table in plan order, every warning, key, trigger, blocker."""
    lines: list[str] = [
        f"Impact of deleting {report.slug} on stage {stage}",
        _summary(report),
        "",
        "Tables (plan order):",
    ]
    lines += _table_lines(report)
    for title, part in (
        ("Warnings:", _warning_lines(report, protected=False)),
        ("Foreign keys without an index (cheap here):", _minor_keys(report)),
        ("Triggers that fire on these tables:", _trigger_lines(report.triggers)),
        ("The database would refuse this delete:", _blocker_lines(report.blockers)),
    ):
        if part:
            lines += ["", title, *part]
    lines += ["", _counted(report)]
    name = filename("impact", stage, report.slug, ext="txt")
    return text_file(name, f"Impact of deleting {report.slug} on {stage}", lines, thread_ts=thread_ts)


def _create_index_buttons(report: ImpactReport, stage: str | None) -> list[Block]:
    """Create index on every foreign key the delete scans without one (the warning above, done for you)."""
    keys = [k for k in report.slow_keys if k.schema and k.name]
    if stage is None or not keys:
        return []
    found = [create_index_action(k.schema, k.name, k.columns, label=f"Create index: {_key_name(k)}") for k in keys]
    buttons = operation_buttons(stage, found[:ACTIONS_PER_BLOCK])
    return [actions(*buttons, block_id="impact_create_index")] if buttons else []


def impact_blocks(
    report: ImpactReport, *, protected: bool, stage: str | None = None, more: Mrkdwn | None = None
) -> list[Block]:
    """The impact report within one message: the largest tables and the head of every list; `more` says
    where the whole of it is (the attached file, or by default the command that lists it). With `stage`,
    Create index buttons for the keys the delete scans without an index."""
    more = more or md("{} lists them all", code(f"/mcp impact {report.slug}" + (f" --stage {stage}" if stage else "")))
    blocks: list[Block] = [*lines_sections(capped(_table_lines(report, largest_first=True), "tables", more))]
    blocks.append(section(_summary(report)))
    warnings = _warning_lines(report, protected=protected)
    if warnings:
        blocks += lines_sections(capped(warnings, "warnings", more, limit=MAX_WARNING_LINES))
    blocks += _create_index_buttons(report, stage)
    minor = _minor_keys(report)
    if minor:
        listed = Mrkdwn(", ").join(capped(minor, "keys", more, limit=MAX_WARNING_LINES))
        blocks.append(
            context(md("Foreign keys without an index, scanned once per deleted parent row (cheap here): {}", listed))
        )
    if report.triggers:
        triggers = capped(_trigger_lines(report.triggers), "triggers", more, limit=MAX_WARNING_LINES)
        blocks += lines_sections([Mrkdwn("*Triggers that fire on these tables:*"), *triggers])
    if report.blockers:
        blockers = capped(_blocker_lines(report.blockers), "lines", more)
        blocks += lines_sections([Mrkdwn("*The database would refuse this delete:*"), *blockers])
    blocks.append(context(_counted(report)))
    return blocks


def step_lines(steps: list[dict[str, Any]], *, largest_first: bool = False) -> list[Mrkdwn]:
    """A line per table a delete ran on: rows deleted (or set), and how long it took when known."""
    if largest_first:
        steps = sorted(steps, key=lambda s: -int(s["rows"]))
    return [
        md(
            "• {}: {} {}{}",
            code(s["table"]),
            plural(int(s["rows"]), "row"),
            "deleted" if s["action"] == "delete" else s["action"],
            md(" ({})", duration(float(s["seconds"]))) if "seconds" in s else Mrkdwn(""),
        )
        for s in steps
    ]


def steps_file(steps: list[dict[str, Any]], *, title: str, stage: str, slug: str) -> Attachment:
    """Every table's count of a delete (or a dry run), in the order it ran."""
    return text_file(filename("delete", stage, slug, ext="txt"), title, [title, "", *step_lines(steps)])
