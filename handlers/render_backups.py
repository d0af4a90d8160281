"""How the backup verbs look: the backup list, the full backup's progress, and restore reports."""

from __future__ import annotations

from datetime import datetime

from bot.backups.full import FullBackupState
from bot.backups.operations import BackupList
from bot.backups.scoped import RestoreReport
from bot.deletion.flow import RestorePosted
from bot.service import CommandRequest
from handlers.blocks import (
    Message,
    code,
    context,
    escape,
    fields,
    human_bytes,
    lines_sections,
    message,
    section,
    when,
)
from handlers.render import renders, renders_progress


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
    where = f" on stage *{escape(result.stage)}*" if result.stage else ""
    of = f" of {code(result.slug)}" if result.slug else ""
    lines = []
    for row in result.rows:
        icon = STATE_ICONS.get(row.state, ":grey_question:")
        what = f"scoped {code(row.slug or row.server_id or '?')} request {code(row.request_id or '-')}"
        if row.kind == "full":
            what = "full dump"
        rows = f" · {row.total_rows:,} rows in {len(row.row_counts)} tables" if row.total_rows is not None else ""
        extra = ""
        if row.restored_at:
            extra += f" · restored {age(row.restored_at, result.now)} by <@{row.restored_by}>"
        if row.delete_state == "rolled_back":
            extra += " · the delete rolled back"
        if row.snapshot and row.snapshot.get("snapshot_id"):
            extra += f" · RDS snapshot {code(str(row.snapshot['snapshot_id']))}"
        if row.state == "failed" and row.error:
            extra += f" · {escape(row.error[:120])}"
        lines.append(
            f"{icon} {code(row.id)} *{escape(row.stage)}* {what}: {human_bytes(row.size_bytes)}{rows}"
            f" · {age(row.created_at, result.now)} by <@{row.created_by}>{extra}"
        )
    blocks = [
        section(f":floppy_disk: Latest backups{of}{where}"),
        *lines_sections(lines or ["_no backups yet_"]),
        context(
            f"Destination: {escape(result.destination)}. Scoped backups: `/mcp restore <request-id> --stage <stage>`;"
            " full dumps: `pg_restore` (see the README)."
        ),
    ]
    return message(f"{len(result.rows)} backups", blocks, ephemeral=True)


@renders_progress("backup")
def render_backup_progress(request: CommandRequest, state: FullBackupState) -> Message:
    stage = escape(state.stage)
    if state.state == "complete":
        head = f":white_check_mark: Full backup of *{stage}* done: {human_bytes(state.bytes)} in {state.seconds:.0f} s"
    elif state.state == "failed":
        head = f":x: Full backup of *{stage}* failed: {escape(state.error or 'unknown error')}"
    elif state.state == "snapshot":
        head = f":camera: Full backup of *{stage}*: dump stored ({human_bytes(state.bytes)}), taking the RDS snapshot…"
    else:
        head = f":hourglass_flowing_sand: Full backup of *{stage}* running: {human_bytes(state.bytes)} so far"
    pairs = [("Backup", code(state.backup_id)), ("By", f"<@{state.actor}>"), ("Started", when(state.started_at))]
    if state.location:
        pairs.append(("Stored at", code(state.location)))
    else:
        pairs.append(("Destination", escape(state.destination)))
    if state.snapshot and state.snapshot.get("snapshot_id"):
        pairs.append(("RDS snapshot", code(str(state.snapshot["snapshot_id"]))))
    blocks = [section(head), fields(pairs)]
    if state.notes:
        blocks.append(context(":warning: " + escape("; ".join(state.notes))))
    return message(f"backup of {state.stage}: {state.state}", blocks)


@renders("backup")
def render_backup(request: CommandRequest, state: FullBackupState) -> Message:
    text = (
        f":white_check_mark: Full backup {code(state.backup_id)} of *{escape(state.stage)}*:"
        f" {human_bytes(state.bytes)} stored at {code(state.location or '?')}"
    )
    blocks = [section(text)]
    if state.notes:
        blocks.append(context(":warning: " + escape("; ".join(state.notes))))
    return message(f"backup {state.backup_id} done", blocks, ephemeral=True)


COLUMN_NOTES = {"set_null": " (nulled columns set back)", "set_default": " (defaulted columns set back)"}


@renders("restore")
def render_restore(request: CommandRequest, result: RestoreReport | RestorePosted) -> Message:
    if isinstance(result, RestorePosted):
        posted = result.request
        text = (
            f"The restore of {code(result.report.slug or '?')} from backup {code(result.report.backup_id)} "
            f"({result.report.total_rows:,} rows, no conflicts now) is posted in this channel as request "
            f"#{posted.id}: it needs {posted.required_approvals} approval(s) from APPROVERS other than you before "
            f"{when(posted.expires_at)}. You can *Cancel* it."
        )
        return message(text, [section(text)], ephemeral=True)
    report = result
    server = f" of {code(report.slug)}" if report.slug else ""
    if report.dry_run:
        head = (
            f":mag: Dry run: backup {code(report.backup_id)}{server} (request {code(report.request_id)}) can be"
            f" restored on *{escape(report.stage)}*: {report.total_rows:,} rows, no conflicts. Nothing was written."
        )
    else:
        head = (
            f":leftwards_arrow_with_hook: Restored backup {code(report.backup_id)}{server} on"
            f" *{escape(report.stage)}*: {report.total_rows:,} rows, parents first, in one transaction."
        )
    lines = [f"• {code(table)}: {rows:,} rows" + COLUMN_NOTES.get(action, "") for table, action, rows in report.tables]
    blocks = [section(head), *lines_sections(lines)]
    if report.notes:
        blocks.append(context(":shield: " + escape("; ".join(report.notes))))
    if report.unchecked:
        blocks.append(
            context(
                "Not pre-checked (expression or partial unique indexes, columns set to their default): "
                + escape(", ".join(report.unchecked))
            )
        )
    return message(f"restore of {report.backup_id}", blocks, ephemeral=report.dry_run)
