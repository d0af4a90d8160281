"""How impact reports, delete and restore requests and their results look in Slack.

Everything shown comes from plan data (table names, counts, sample keys) and reaches Slack
through the text boundary (bot/slacktext): a value from the database is data, escaped, scrubbed
and masked, never markup. The frame every request shares (status, buttons, App Home) is
handlers/render_requests.py; the delete and restore views are registered here.
"""

from __future__ import annotations

from typing import Any

from bot.deletion.execute import Progress
from bot.deletion.impact import Blocker, ImpactReport, SlowKey, TriggerNote
from bot.indexes.targets import create_index_action
from bot.kinds.delete import DeletePosted, DeleteRefused, DryRunDone
from bot.requests.buttons import operation_buttons
from bot.requests.messages import RequestView
from bot.requests.store import Request
from bot.service import CommandRequest
from handlers.blocks import (
    Block,
    Message,
    Mrkdwn,
    actions,
    code,
    code_block,
    context,
    divider,
    human_bytes,
    lines_sections,
    md,
    message,
    noun,
    plural,
    prose,
    section,
    when,
)
from handlers.render import renders
from handlers.render_backups import COLUMN_NOTES, restore_trigger_lines
from handlers.render_requests import KindView, kind_view
from handlers.render_requests import refusal as refusal  # handlers/alerts.py answers with it

ACTIONS_PER_BLOCK = 5  # Create index buttons under an impact report
SLOW_KEY_WARN_S = 1.0  # below this a missing index is listed, not shouted about
MAX_TABLE_LINES = 40


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _rows(count: int) -> Mrkdwn:
    """`*1* row`, `*1,234* rows`."""
    return md("*{:,}* {}", count, noun(count, "row"))


def _table_lines(report: ImpactReport) -> list[Mrkdwn]:
    lines: list[Mrkdwn] = []
    for t in report.tables:
        if t.action == "delete":
            via = md(" ({})", "; ".join(t.via)) if t.via else Mrkdwn("")
            lines.append(md("• {}: {} to delete{}", code(t.table), _rows(t.rows), via))
        elif t.rows:
            lines.append(
                md(
                    "• {}: {} to set to {} ({}; {})",
                    code(t.table),
                    _rows(t.rows),
                    t.action.removeprefix("set ").upper(),
                    ", ".join(t.columns),
                    "; ".join(t.via),
                )
            )
    if len(lines) > MAX_TABLE_LINES:
        lines = [*lines[:MAX_TABLE_LINES], md("… and {} more", plural(len(lines) - MAX_TABLE_LINES, "table"))]
    return lines


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


def _create_index_buttons(report: ImpactReport, stage: str | None) -> list[Block]:
    """Create index on every foreign key the delete scans without one (the warning above, done for you)."""
    keys = [k for k in report.slow_keys if k.schema and k.name]
    if stage is None or not keys:
        return []
    found = [create_index_action(k.schema, k.name, k.columns, label=f"Create index: {_key_name(k)}") for k in keys]
    buttons = operation_buttons(stage, found[:ACTIONS_PER_BLOCK])
    return [actions(*buttons, block_id="impact_create_index")] if buttons else []


def impact_blocks(report: ImpactReport, *, protected: bool, stage: str | None = None) -> list[Block]:
    blocks: list[Block] = [*lines_sections(_table_lines(report))]
    tables = sum(1 for t in report.tables if t.action == "delete" and t.rows)
    summary = md(
        "*Total: {}* in {}, {} (users whose every session is on this server). Expected duration: *~{}*.",
        plural(report.total_rows, "row"),
        plural(tables, "table"),
        plural(report.orphaned_users, "orphaned user"),
        duration(report.estimated_s),
    )
    blocks.append(section(summary))
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
            _rows(e.rows),
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
    if warnings:
        blocks += lines_sections(warnings)
    blocks += _create_index_buttons(report, stage)
    minor = [k for k in report.slow_keys if k.estimated_s < SLOW_KEY_WARN_S]
    if minor:
        listed = Mrkdwn(", ").join(
            md("{} ({} x ~{:.2f} ms)", code(_key_name(k)), plural(k.parent_rows, "row"), k.per_row_ms) for k in minor
        )
        blocks.append(
            context(md("Foreign keys without an index, scanned once per deleted parent row (cheap here): {}", listed))
        )
    if report.triggers:
        blocks += lines_sections([Mrkdwn("*Triggers that fire on these tables:*"), *_trigger_lines(report.triggers)])
    if report.blockers:
        blocks += lines_sections([Mrkdwn("*The database would refuse this delete:*"), *_blocker_lines(report.blockers)])
    blocks.append(
        context(
            md(
                "Counted by the database in {:,} ms from the live catalog ({} checked). Snapshot {}.",
                report.took_ms,
                plural(report.checked_tables, "table"),
                code(report.snapshot_hash[:12]),
            )
        )
    )
    return blocks


@renders("impact")
def render_impact(request: CommandRequest, report: ImpactReport) -> Message:
    stage = request.stage
    assert stage is not None
    head = (
        md(":mag: {} on stage *{}* can be deleted. Deleting it removes:", code(report.slug), stage.name)
        if report.deletable
        else md(
            ":mag: {} on stage *{}* can't be deleted as it is. Deleting it would touch:", code(report.slug), stage.name
        )
    )
    blocks = [
        section(head),
        *impact_blocks(report, protected=stage.protected, stage=stage.name),
    ]
    return message(f"Impact of deleting {report.slug}: {plural(report.total_rows, 'row')}", blocks)


@renders("delete")
def render_delete(request: CommandRequest, result: DeletePosted | DeleteRefused | DryRunDone) -> Message:
    stage = request.stage
    assert stage is not None
    if isinstance(result, DeletePosted):
        posted = result.request
        if posted.protected:
            text = md(
                "The delete request for {} is posted in this channel as request #{}: it needs {} from APPROVERS "
                "other than you before {}. You can *Cancel* it.",
                code(result.report.slug),
                posted.id,
                plural(posted.required_approvals, "approval"),
                when(posted.expires_at),
            )
        else:
            text = md(
                "The delete plan for {} is posted in this channel as request #{}. Only you can press *Delete* "
                "(or *Cancel*); it expires at {}.",
                code(result.report.slug),
                posted.id,
                when(posted.expires_at),
            )
        return message(text, [section(text)], ephemeral=True)
    if isinstance(result, DeleteRefused):
        blocks = [
            section(md(":no_entry: {} on *{}* can't be deleted as it is:", code(result.report.slug), stage.name)),
            *impact_blocks(result.report, protected=stage.protected, stage=stage.name),
        ]
        return message(f"{result.report.slug} can't be deleted", blocks)
    run = result.result
    lines = [
        md("• {}: {} {}", code(s.table), plural(s.rows, "row"), "deleted" if s.action == "delete" else s.action)
        for s in run.steps
    ]
    blocks = [
        section(
            md(
                ":test_tube: Dry run of deleting {} on *{}*: *{}* in {}, then rolled back. Nothing changed.",
                code(result.report.slug),
                stage.name,
                plural(run.total_rows, "row"),
                duration(run.duration_s),
            )
        ),
        *lines_sections(lines),
    ]
    return message(f"Dry run: {plural(run.total_rows, 'row')}, rolled back", blocks)


def _backup_done(request: Request) -> Mrkdwn:
    backup = (request.result or {}).get("backup")
    if not backup:
        return Mrkdwn("")
    snapshot = md(" after RDS snapshot {}", code(str(backup["snapshot"]))) if backup.get("snapshot") else Mrkdwn("")
    rows = int(backup["rows"])
    return md(
        "\n:floppy_disk: Backup {}{} holds the {} ({}): {} puts {} back.",
        code(str(backup["id"])),
        snapshot,
        plural(rows, "row"),
        code(str(backup["location"])),
        code(f"/mcp restore {request.id} --stage {request.stage}"),
        "it" if rows == 1 else "them",
    )


def _delete_running(view: RequestView) -> Mrkdwn:
    request, progress = view.request, view.progress
    if not isinstance(progress, Progress) or progress.phase == "counting":
        where = md(" ({})", code(progress.table)) if isinstance(progress, Progress) and progress.table else Mrkdwn("")
        return md(":gear: Running: materialising and re-counting the scope{}…", where)
    if progress.phase == "backup":
        return md(
            ":floppy_disk: Running: backing up {} ({} stored), {} elapsed.",
            code(progress.table),
            human_bytes(progress.rows_done),
            duration(progress.elapsed_s),
        )
    if progress.phase == "hook":
        backup = request.options.get("backup")
        return Mrkdwn(":gear: Running: backing up what it deletes…" if backup else ":gear: Running: preparing…")
    if progress.phase == "verifying":
        return Mrkdwn(":gear: Running: committed, verifying…")
    table = md(" from {}", code(progress.table)) if progress.table else Mrkdwn("")
    return md(
        ":gear: Running: deleting{}, {:,} of {} so far, {} elapsed.",
        table,
        progress.rows_done,
        plural(progress.rows_total, "row"),
        duration(progress.elapsed_s),
    )


def _delete_done(request: Request) -> Mrkdwn:
    result = request.result or {}
    rows = plural(int(result.get("rows", 0)), "row")
    took = duration(float(result.get("seconds", 0)))
    verified = "verified" if result.get("verified") else "committed; verification found problems"
    return md(":white_check_mark: Done: deleted *{}* in {} ({}).{}", rows, took, verified, _backup_done(request))


def _delete_body(view: RequestView) -> list[Block]:
    request = view.request
    blocks: list[Block] = [
        context(
            md(":floppy_disk: Backup before the delete: {}", prose(view.backup_note))
            if view.backup_note
            else md(
                ":floppy_disk: Backup before the delete: none (add {} to the command to keep the rows)",
                code("--backup"),
            )
        )
    ]
    steps = (request.result or {}).get("steps")
    if request.state == "done" and steps:
        lines = [
            md(
                "• {}: {} {} ({})",
                code(s["table"]),
                plural(int(s["rows"]), "row"),
                "deleted" if s["action"] == "delete" else s["action"],
                duration(float(s["seconds"])),
            )
            for s in steps
        ]
        return blocks + lines_sections(lines)
    report = ImpactReport.from_json(request.impact)
    return [*blocks, divider(), *impact_blocks(report, protected=request.protected)]


def _delete_confirm_text(request: Request) -> str:
    rows = int(request.impact.get("total_rows", 0))
    kept = ("It is" if rows == 1 else "They are") + " kept in a scoped backup first."
    return f"Delete {request.subject} on {request.stage}: {plural(rows, 'row')}. " + (
        kept if request.options.get("backup") else "This can't be undone."
    )


def _row_count(request: Request) -> Mrkdwn:
    return md("{}", plural(int(request.impact.get("total_rows", 0)), "row"))


@kind_view("delete")
def _delete_view() -> KindView:
    return KindView(
        title=lambda r: f"Delete {r.subject} on {r.stage}",
        body=_delete_body,
        running=_delete_running,
        done=_delete_done,
        summary=_row_count,
        confirm="Delete",
        confirm_title="Delete for good?",
        confirm_text=_delete_confirm_text,
    )


def _restore_lines(impact: dict[str, Any]) -> list[Mrkdwn]:
    return [
        md(
            "• {}: {} to put back{}",
            code(str(t["table"])),
            _rows(int(t["rows"])),
            COLUMN_NOTES.get(str(t["action"]), ""),
        )
        for t in impact.get("tables", [])
    ]


def _restore_body(view: RequestView) -> list[Block]:
    impact = view.request.impact
    blocks: list[Block] = [
        divider(),
        section(
            md(
                "From backup {} of delete request #{}: *{}*, checked by a dry run (schema fingerprint, checksums, "
                "no conflicting rows). Inserted parents first in one transaction; a conflict found at run time "
                "writes nothing.",
                code(str(impact.get("backup_id", "?"))),
                str(impact.get("source_request", "?")),
                plural(int(impact.get("total_rows", 0)), "row"),
            )
        ),
        *lines_sections(_restore_lines(impact)),
        *lines_sections(
            restore_trigger_lines(
                impact.get("triggers_disabled", []), impact.get("triggers_fire", []), impact.get("not_restored", [])
            )
        ),
    ]
    if impact.get("unchecked"):
        blocks.append(context(md("Not pre-checked: {}", ", ".join(impact["unchecked"]))))
    return blocks


def _restore_done(request: Request) -> Mrkdwn:
    result = request.result or {}
    rows = plural(int(result.get("rows", 0)), "row")
    took = duration(float(result.get("seconds", 0)))
    return md(":white_check_mark: Done: restored *{}* in {}, parents first, in one transaction.", rows, took)


@kind_view("restore")
def _restore_view() -> KindView:
    return KindView(
        title=lambda r: f"Restore {r.subject} on {r.stage}",
        body=_restore_body,
        running=lambda view: Mrkdwn(
            ":gear: Running: staging the backup, checking for conflicts, inserting parents first…"
        ),
        done=_restore_done,
        summary=_row_count,
        confirm="Restore",
    )
