"""How the backup verbs look: the backup list, the full backup's progress, and restore reports."""

from __future__ import annotations

from datetime import datetime

from bot.backups.full import FullBackupState
from bot.backups.operations import BackupList
from bot.backups.restore import RestoreReport
from bot.kinds.restore import RestorePosted
from bot.service import CommandRequest
from bot.slacktext.files import attach, filename, text_file
from bot.slacktext.long import head
from handlers.blocks import (
    Message,
    Mrkdwn,
    code,
    context,
    fields,
    human_bytes,
    lines_sections,
    md,
    mention,
    message,
    plural,
    prose,
    section,
    when,
)
from handlers.render import NARROW, renders, renders_progress
from handlers.render_impact import capped


def age(then: datetime, now: datetime) -> str:
    seconds = max(int((now - then).total_seconds()), 0)
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


STATE_ICONS = {
    "complete": ":white_check_mark:",
    "running": ":hourglass_flowing_sand:",
    "failed": ":x:",
    "expired": ":wastebasket:",
}


@renders("backups")
def render_backups(request: CommandRequest, result: BackupList) -> Message:
    where = md(" on stage *{}*", result.stage) if result.stage else Mrkdwn("")
    of = md(" of {}", code(result.slug)) if result.slug else Mrkdwn("")
    lines = []
    for row in result.rows:
        icon = Mrkdwn(STATE_ICONS.get(row.state, ":grey_question:"))
        what = md("scoped {} request {}", code(row.slug or row.server_id or "?"), code(row.request_id or "-"))
        if row.kind == "full":
            what = Mrkdwn("full dump")
        rows = (
            md(" · {} in {}", plural(row.total_rows, "row"), plural(len(row.row_counts), "table"))
            if row.total_rows is not None
            else Mrkdwn("")
        )
        extra = Mrkdwn("")
        if row.restored_at:
            extra += md(" · restored {} by {}", age(row.restored_at, result.now), mention(row.restored_by))
        if row.delete_state == "rolled_back":
            extra += Mrkdwn(" · the delete rolled back")
        if row.snapshot and row.snapshot.get("snapshot_id"):
            extra += md(" · RDS snapshot {}", code(str(row.snapshot["snapshot_id"])))
        if row.state == "failed" and row.error:
            extra += md(" · {}", row.error[:120])
        lines.append(
            md(
                "{} {} *{}* {}: {}{} · {} by {}{}",
                icon,
                code(row.id),
                row.stage,
                what,
                human_bytes(row.size_bytes),
                rows,
                age(row.created_at, result.now),
                mention(row.created_by),
                extra,
            )
        )
    blocks = [
        section(md(":floppy_disk: Latest backups{}{}", of, where)),
        *lines_sections(
            head(lines, limit=len(lines), rest=lambda n: md("_… and {:,} more: narrow it with {}_", n, NARROW))[0]
            or [Mrkdwn("_no backups yet_")]
        ),
        context(
            md(
                "Destination: {}. Scoped backups: {}; full dumps: {} (see the README).",
                result.destination,
                code("/mcp restore <request-id> --stage <stage>"),
                code("pg_restore"),
            )
        ),
    ]
    return message(plural(len(result.rows), "backup"), blocks, ephemeral=True)


@renders_progress("backup")
def render_backup_progress(request: CommandRequest, state: FullBackupState) -> Message:
    stage = state.stage
    size = human_bytes(state.bytes)
    if state.state == "complete":
        head = md(":white_check_mark: Full backup of *{}* done: {} in {:.0f} s", stage, size, state.seconds)
    elif state.state == "failed":
        head = md(":x: Full backup of *{}* failed: {}", stage, state.error or "unknown error")
    elif state.state == "snapshot":
        head = md(":camera: Full backup of *{}*: dump stored ({}), taking the RDS snapshot…", stage, size)
    else:
        head = md(":hourglass_flowing_sand: Full backup of *{}* running: {} so far", stage, size)
    pairs: list[tuple[str, str]] = [
        ("Backup", code(state.backup_id)),
        ("By", mention(state.actor)),
        ("Started", when(state.started_at)),
    ]
    if state.location:
        pairs.append(("Stored at", code(state.location)))
    else:
        pairs.append(("Destination", state.destination))
    if state.snapshot and state.snapshot.get("snapshot_id"):
        pairs.append(("RDS snapshot", code(str(state.snapshot["snapshot_id"]))))
    blocks = [section(head), fields(pairs)]
    if state.notes:
        blocks.append(context(md(":warning: {}", "; ".join(state.notes))))
    return message(f"backup of {state.stage}: {state.state}", blocks)


@renders("backup")
def render_backup(request: CommandRequest, state: FullBackupState) -> Message:
    text = md(
        ":white_check_mark: Full backup {} of *{}*: {} stored at {}",
        code(state.backup_id),
        state.stage,
        human_bytes(state.bytes),
        code(state.location or "?"),
    )
    blocks = [section(text)]
    if state.notes:
        blocks.append(context(md(":warning: {}", "; ".join(state.notes))))
    return message(f"backup {state.backup_id} done", blocks, ephemeral=True)


COLUMN_NOTES = {"set_null": " (nulled columns set back)", "set_default": " (defaulted columns set back)"}


def restore_trigger_lines(disabled: list[str], fire: list[str], not_restored: list[str]) -> list[Mrkdwn]:
    """What a restore does about user triggers, said before anyone approves it (and after it ran)."""
    lines = [md(":zap: Turned off while the rows go back, then on again: {}", "; ".join(disabled))] if disabled else []
    if fire:
        lines.append(
            md(
                ":warning: These triggers will fire as the rows go back (the bot's role does not own their tables, "
                "so it can't turn them off): {}",
                "; ".join(fire),
            )
        )
    if not_restored:
        lines.append(
            md(
                ":warning: These triggers fired during the delete; whatever they changed is not in the backup and "
                "is not put back: {}",
                "; ".join(not_restored),
            )
        )
    return lines


@renders("restore")
def render_restore(request: CommandRequest, result: RestoreReport | RestorePosted) -> Message:
    if isinstance(result, RestorePosted):
        posted = result.request
        text = md(
            "The restore of {} from backup {} ({}, no conflicts now) is posted in this channel as request #{}: "
            "it needs {} from approvers other than you before {}. You can *Cancel* it.",
            code(result.report.slug or "?"),
            code(result.report.backup_id),
            plural(result.report.total_rows, "row"),
            posted.id,
            plural(posted.required_approvals, "approval"),
            when(posted.expires_at),
        )
        return message(text, [section(text)], ephemeral=True)
    report = result
    server = md(" of {}", code(report.slug)) if report.slug else Mrkdwn("")
    rows_word = plural(report.total_rows, "row")
    if report.dry_run:
        head = md(
            ":mag: Dry run: backup {}{} (request {}) can be restored on *{}*: {}, no conflicts. Nothing was written.",
            code(report.backup_id),
            server,
            code(report.request_id),
            report.stage,
            rows_word,
        )
    else:
        head = md(
            ":leftwards_arrow_with_hook: Restored backup {}{} on *{}*: {}, parents first, in one transaction.",
            code(report.backup_id),
            server,
            report.stage,
            rows_word,
        )
    lines = [
        md("• {}: {}{}", code(table), plural(rows, "row"), COLUMN_NOTES.get(action, ""))
        for table, action, rows in report.tables
    ]
    file = text_file(
        filename("restore", report.stage, report.backup_id, ext="txt"),
        f"Restore of backup {report.backup_id} on {report.stage}: rows per table",
        lines,
    )
    # A dry run is ephemeral (it shares no file); the restore itself is posted, with every table in a file.
    more = (
        Mrkdwn("the backup's manifest lists them all")
        if report.dry_run
        else md("the attached {} has them all", code(file.filename))
    )
    shown = capped(lines, "tables", more)
    blocks = [
        section(head),
        *lines_sections(shown),
        *lines_sections(restore_trigger_lines(report.triggers_disabled, report.triggers_fire, report.not_restored)),
    ]
    if report.notes:
        blocks.append(context(md(":shield: {}", prose("; ".join(report.notes)))))
    if report.unchecked:
        blocks.append(
            context(
                md(
                    "Not pre-checked (expression or partial unique indexes, columns set to their default): {}",
                    ", ".join(report.unchecked),
                )
            )
        )
    reply = message(f"restore of {report.backup_id}", blocks, ephemeral=report.dry_run)
    return attach(reply, file) if len(shown) < len(lines) and not report.dry_run else reply
