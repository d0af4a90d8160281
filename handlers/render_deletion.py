"""How impact reports, delete and restore requests and their results look in Slack.

Everything shown comes from plan data (table names, counts, sample keys) and reaches Slack
through the text boundary (bot/slacktext): a value from the database is data, escaped, scrubbed
and masked, never markup. The frame every request shares (status, buttons, App Home) is
handlers/render_requests.py; the delete and restore views are registered here.
"""

from __future__ import annotations

from typing import Any

from bot.deletion.execute import Progress
from bot.deletion.impact import ImpactReport
from bot.kinds.delete import DeletePosted, DeleteRefused, DryRunDone
from bot.requests.messages import RequestView
from bot.requests.store import Request
from bot.service import CommandRequest
from bot.slacktext.files import Attachment, attach
from handlers.blocks import (
    Block,
    Message,
    Mrkdwn,
    code,
    context,
    divider,
    human_bytes,
    lines_sections,
    md,
    message,
    plural,
    prose,
    section,
    when,
)
from handlers.render import renders
from handlers.render_backups import COLUMN_NOTES, restore_trigger_lines
from handlers.render_impact import (
    MAX_LIST_LINES,
    capped,
    duration,
    impact_blocks,
    impact_file,
    rows_of,
    step_lines,
    steps_file,
)
from handlers.render_requests import KindView, kind_view
from handlers.render_requests import refusal as refusal  # handlers/alerts.py answers with it


@renders("impact")
def render_impact(request: CommandRequest, report: ImpactReport) -> Message:
    stage = request.stage
    assert stage is not None
    title = (
        md(":mag: {} on stage *{}* can be deleted. Deleting it removes:", code(report.slug), stage.name)
        if report.deletable
        else md(
            ":mag: {} on stage *{}* can't be deleted as it is. Deleting it would touch:", code(report.slug), stage.name
        )
    )
    file = impact_file(report, stage.name)
    more = md("the attached {} has them all", code(file.filename))
    blocks = [section(title), *impact_blocks(report, protected=stage.protected, stage=stage.name, more=more)]
    reply = message(f"Impact of deleting {report.slug}: {plural(report.total_rows, 'row')}", blocks)
    return attach(reply, file)


@renders("delete")
def render_delete(request: CommandRequest, result: DeletePosted | DeleteRefused | DryRunDone) -> Message:
    stage = request.stage
    assert stage is not None
    if isinstance(result, DeletePosted):
        posted = result.request
        if posted.protected:
            text = md(
                "The delete request for {} is posted in this channel as request #{}: it needs {} from approvers "
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
        reply = message(text, [section(text)], ephemeral=True)
        if posted.message_ts:  # the whole report goes in the request's thread, for everyone who decides on it
            attach(reply, impact_file(result.report, stage.name, thread_ts=posted.message_ts))
        return reply
    if isinstance(result, DeleteRefused):
        file = impact_file(result.report, stage.name)
        more = md("the attached {} has them all", code(file.filename))
        blocks = [
            section(md(":no_entry: {} on *{}* can't be deleted as it is:", code(result.report.slug), stage.name)),
            *impact_blocks(result.report, protected=stage.protected, stage=stage.name, more=more),
        ]
        return attach(message(f"{result.report.slug} can't be deleted", blocks), file)
    run = result.result
    steps = [{"table": s.table, "action": s.action, "rows": s.rows} for s in run.steps]
    title = f"Dry run of deleting {result.report.slug} on {stage.name} (rolled back)"
    file = steps_file(steps, title=title, stage=stage.name, slug=result.report.slug)
    lines = step_lines(steps, largest_first=True)
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
        *lines_sections(capped(lines, "tables", md("the attached {} has them all", code(file.filename)))),
    ]
    reply = message(f"Dry run: {plural(run.total_rows, 'row')}, rolled back", blocks)
    return attach(reply, file) if len(lines) > MAX_LIST_LINES else reply


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
    steps = _done_steps(request)
    if steps:
        files = _delete_files(view)
        more = md("every table's count is in the thread ({})", code(files[0].filename)) if files else Mrkdwn("")
        return blocks + lines_sections(capped(step_lines(steps, largest_first=True), "tables", more))
    report = ImpactReport.from_json(request.impact)
    more = md("{} lists them all", code(f"/mcp impact {request.subject} --stage {request.stage}"))
    return [*blocks, divider(), *impact_blocks(report, protected=request.protected, more=more)]


def _done_steps(request: Request) -> list[dict[str, Any]]:
    return list((request.result or {}).get("steps") or []) if request.state == "done" else []


def _delete_files(view: RequestView) -> list[Attachment]:
    """Once done, every table's count goes in the request's thread when the message shows only the largest."""
    request = view.request
    steps = _done_steps(request)
    if len(steps) <= MAX_LIST_LINES:
        return []
    title = f"Delete {request.subject} on {request.stage}: rows per table, in the order deleted"
    return [steps_file(steps, title=title, stage=request.stage, slug=request.subject)]


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
        files=_delete_files,
    )


def _restore_lines(impact: dict[str, Any]) -> list[Mrkdwn]:
    return [
        md(
            "• {}: {} to put back{}",
            code(str(t["table"])),
            rows_of(int(t["rows"])),
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
        *lines_sections(capped(_restore_lines(impact), "tables", Mrkdwn("the backup's manifest lists them all"))),
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
