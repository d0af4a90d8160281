"""How impact reports, delete requests and their results look in Slack.

Everything shown comes from plan data (table names, counts, sample keys) and passes through
`escape`/`scrub`: a value from the database is never trusted to be free of emails or markup.
"""

from __future__ import annotations

import json
from typing import Any

from bot.deletion.execute import Progress
from bot.deletion.flow import DeletePosted, DeleteRefused, DryRunDone, RequestView, permalink
from bot.deletion.impact import Blocker, ImpactReport, SlowKey, TriggerNote
from bot.deletion.operations import PendingRequests
from bot.deletion.requests import DeleteRequest
from bot.pii import scrub
from bot.service import CommandRequest
from handlers.blocks import (
    Block,
    Message,
    actions,
    button,
    code,
    confirm_dialog,
    context,
    divider,
    escape,
    header,
    human_bytes,
    lines_sections,
    message,
    section,
    when,
)
from handlers.render import renders
from handlers.render_backups import COLUMN_NOTES

CONFIRM_ACTION = "delete_confirm"
CANCEL_ACTION = "delete_cancel"
APPROVE_ACTION = "delete_approve"
REJECT_ACTION = "delete_reject"
REJECT_MODAL = "delete_reject_modal"
REASON_BLOCK = "reason"
REASON_INPUT = "reason"
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


def _clean(value: Any) -> str:
    return escape(scrub(str(value)))


def _table_lines(report: ImpactReport) -> list[str]:
    lines: list[str] = []
    for t in report.tables:
        if t.action == "delete":
            via = f" ({_clean('; '.join(t.via))})" if t.via else ""
            lines.append(f"• {code(t.table)}: *{t.rows:,}* rows to delete{via}")
        elif t.rows:
            lines.append(
                f"• {code(t.table)}: *{t.rows:,}* rows to set to {t.action.removeprefix('set ').upper()} "
                f"({_clean(', '.join(t.columns))}; {_clean('; '.join(t.via))})"
            )
    if len(lines) > MAX_TABLE_LINES:
        lines = [*lines[:MAX_TABLE_LINES], f"… and {len(lines) - MAX_TABLE_LINES} more tables"]
    return lines


def _key_name(key: SlowKey) -> str:
    return f"{key.table}({', '.join(key.columns)})"


def _slow_key_line(key: SlowKey) -> str:
    return (
        f":warning: {code(_key_name(key))} has no index: each of the *{key.parent_rows:,}* deleted "
        f"{code(key.parent)} rows makes the database scan it (~{key.per_row_ms:,.1f} ms each, "
        f"*~{duration(key.estimated_s)}* in all). Create the index first, outside the delete:\n"
        f"```{escape(key.create_index)}```"
    )


def _blocker_lines(blockers: list[Blocker]) -> list[str]:
    lines: list[str] = []
    for blocker in blockers:
        lines.append(f":no_entry: {_clean(blocker.reason)}")
        if blocker.edge:
            lines.append(f"    {code(blocker.edge)}")
        for row in blocker.sample:
            shown = ", ".join(f"{_clean(k)}={code(scrub(v))}" for k, v in row.items())
            lines.append(f"    ◦ {shown}")
        if blocker.rows > len(blocker.sample) and blocker.sample:
            lines.append(f"    ◦ … {blocker.rows - len(blocker.sample):,} more")
    return lines


RESTORE_WORDS = {
    "": "",
    "disabled": " A restore disables it while it puts rows back.",
    "fires": " A restore would fire it too (the bot's role does not own the table, so it can't disable it).",
}


def _trigger_lines(triggers: list[TriggerNote]) -> list[str]:
    return [
        f":zap: {code(t.trigger)} on {code(t.table)} ({_clean(t.definition)}) fires during the delete: whatever it "
        f"changes is not counted here nor in the backup.{RESTORE_WORDS.get(t.on_restore, '')}"
        for t in triggers
    ]


def impact_blocks(report: ImpactReport, *, protected: bool) -> list[Block]:
    blocks: list[Block] = [*lines_sections(_table_lines(report))]
    summary = (
        f"*Total: {report.total_rows:,} rows* in {sum(1 for t in report.tables if t.action == 'delete' and t.rows)} "
        f"tables, {report.orphaned_users:,} orphaned users (users whose every session is on this server). "
        f"Expected duration: *~{duration(report.estimated_s)}*."
    )
    blocks.append(section(summary))
    warnings: list[str] = []
    if protected:
        warnings.append(":lock: This stage is protected.")
    if report.limit_s and report.estimated_s > report.limit_s:
        warnings.append(
            f":warning: The delete is expected to take ~{duration(report.estimated_s)}, more than the "
            f"{duration(report.limit_s)} a delete may run (`DELETE_TIMEOUT_SECONDS`): it would be cancelled and "
            "rolled back. Create the missing index below first."
        )
    warnings += [
        f":warning: *{e.rows:,}* rows of {code(e.table)} in the delete do not belong to this server "
        f"({_clean(e.edge)} points elsewhere): they go because they hang off this server's orphaned users."
        for e in report.elsewhere
    ]
    slow = [k for k in report.slow_keys if k.estimated_s >= SLOW_KEY_WARN_S]
    warnings += [_slow_key_line(k) for k in slow]
    if report.schema_warnings:
        first, *rest = report.schema_warnings
        warnings.append(":twisted_rightwards_arrows: " + escape(first) + "".join(f"\n• {escape(r)}" for r in rest))
    if warnings:
        blocks += lines_sections(warnings)
    minor = [k for k in report.slow_keys if k.estimated_s < SLOW_KEY_WARN_S]
    if minor:
        listed = ", ".join(f"{code(_key_name(k))} ({k.parent_rows:,} rows x ~{k.per_row_ms:.2f} ms)" for k in minor)
        blocks.append(
            context(f"Foreign keys without an index, scanned once per deleted parent row (cheap here): {listed}")
        )
    if report.triggers:
        blocks += lines_sections(["*Triggers that fire on these tables:*", *_trigger_lines(report.triggers)])
    if report.blockers:
        blocks += lines_sections(["*The database would refuse this delete:*", *_blocker_lines(report.blockers)])
    blocks.append(
        context(
            f"Counted by the database in {report.took_ms:,} ms from the live catalog "
            f"({report.checked_tables} tables checked). Snapshot `{report.snapshot_hash[:12]}`."
        )
    )
    return blocks


@renders("impact")
def render_impact(request: CommandRequest, report: ImpactReport) -> Message:
    stage = request.stage
    assert stage is not None
    verdict = "can be deleted" if report.deletable else "can't be deleted as it is"
    blocks = [
        section(f":mag: Deleting {code(report.slug)} on stage *{escape(stage.name)}* {verdict}:"),
        *impact_blocks(report, protected=stage.protected),
    ]
    return message(f"Impact of deleting {report.slug}: {report.total_rows} rows", blocks)


@renders("delete")
def render_delete(request: CommandRequest, result: DeletePosted | DeleteRefused | DryRunDone) -> Message:
    stage = request.stage
    assert stage is not None
    if isinstance(result, DeletePosted):
        posted = result.request
        if posted.protected:
            text = (
                f"The delete request for {code(result.report.slug)} is posted in this channel as request "
                f"#{posted.id}: it needs {posted.required_approvals} approval(s) from APPROVERS other than you "
                f"before {when(posted.expires_at)}. You can *Cancel* it."
            )
        else:
            text = (
                f"The delete plan for {code(result.report.slug)} is posted in this channel as request "
                f"#{posted.id}. Only you can press *Delete* (or *Cancel*); it expires at {when(posted.expires_at)}."
            )
        return message(text, [section(text)], ephemeral=True)
    if isinstance(result, DeleteRefused):
        blocks = [
            section(f":no_entry: {code(result.report.slug)} on *{escape(stage.name)}* can't be deleted as it is:"),
            *impact_blocks(result.report, protected=stage.protected),
        ]
        return message(f"{result.report.slug} can't be deleted", blocks)
    run = result.result
    lines = [f"• {code(s.table)}: {s.rows:,} rows {'deleted' if s.action == 'delete' else s.action}" for s in run.steps]
    blocks = [
        section(
            f":test_tube: Dry run of deleting {code(result.report.slug)} on *{escape(stage.name)}*: "
            f"*{run.total_rows:,} rows* in {duration(run.duration_s)}, then rolled back. Nothing changed."
        ),
        *lines_sections(lines),
    ]
    return message(f"Dry run: {run.total_rows} rows, rolled back", blocks)


STATE_WORDS = {
    "pending": "waiting for confirmation",
    "pending approval": "waiting for approval",
    "approved": "confirmed, starting",
    "running": "running",
    "done": "done",
    "failed": "failed, rolled back",
    "rejected": "rejected",
    "cancelled": "cancelled",
    "expired": "expired",
    "stale": "stale",
}


def _state_word(request: DeleteRequest) -> str:
    key = "pending approval" if request.state == "pending" and request.protected else request.state
    return STATE_WORDS.get(key, request.state)


PAST = {"delete": "deleted", "restore": "restored"}


def _backup_done(request: DeleteRequest) -> str:
    backup = (request.result or {}).get("backup")
    if not backup:
        return ""
    snapshot = f" after RDS snapshot {code(str(backup['snapshot']))}" if backup.get("snapshot") else ""
    return (
        f"\n:floppy_disk: Backup {code(str(backup['id']))}{snapshot} holds the {int(backup['rows']):,} rows "
        f"({code(str(backup['location']))}): `/mcp restore {request.id} --stage {escape(request.stage)}` "
        "puts them back."
    )


def _running(request: DeleteRequest, progress: Progress | None) -> str:
    if request.kind == "restore":
        return ":gear: Running: staging the backup, checking for conflicts, inserting parents first…"
    if progress is None or progress.phase == "counting":
        where = f" ({code(progress.table)})" if progress and progress.table else ""
        return f":gear: Running: materialising and re-counting the scope{where}…"
    if progress.phase == "backup":
        return (
            f":floppy_disk: Running: backing up {code(progress.table)} ({human_bytes(progress.rows_done)} stored), "
            f"{duration(progress.elapsed_s)} elapsed."
        )
    if progress.phase == "hook":
        return ":gear: Running: backing up what it deletes…" if request.takes_backup else ":gear: Running: preparing…"
    if progress.phase == "verifying":
        return ":gear: Running: committed, verifying…"
    table = f" from {code(progress.table)}" if progress.table else ""
    return (
        f":gear: Running: deleting{table}, {progress.rows_done:,} of {progress.rows_total:,} rows so far, "
        f"{duration(progress.elapsed_s)} elapsed."
    )


def _status(request: DeleteRequest, progress: Progress | None) -> str:
    who = f"<@{request.requester}>"
    state = request.state
    past = PAST.get(request.kind, "changed")
    approvers = ", ".join(f"<@{a}>" for a in request.approvals)
    if state == "pending" and request.protected:
        so_far = f"; approved so far by {approvers}" if approvers else ""
        return (
            f":hourglass_flowing_sand: Needs *{request.required_approvals}* approval(s) from APPROVERS other "
            f"than {who} before {when(request.expires_at)}: {len(request.approvals)} of "
            f"{request.required_approvals}{so_far}."
        )
    if state == "pending":
        return (
            f":hourglass_flowing_sand: Waiting for {who} to press *Delete* (or *Cancel*) before "
            f"{when(request.expires_at)}."
        )
    if state == "approved":
        verb = "Approved" if request.protected else "Confirmed"
        return f":white_check_mark: {verb} by {approvers or f'<@{request.decided_by}>'}; starting."
    if state == "running":
        return _running(request, progress)
    if state == "done":
        result = request.result or {}
        if result.get("recovered"):
            return f":white_check_mark: Done: the {request.kind} committed, but the bot restarted before reporting it."
        if request.kind == "restore":
            return (
                f":white_check_mark: Done: restored *{result.get('rows', 0):,} rows* in "
                f"{duration(float(result.get('seconds', 0)))}, parents first, in one transaction."
            )
        verified = "verified" if result.get("verified") else "committed; verification found problems"
        return (
            f":white_check_mark: Done: deleted *{result.get('rows', 0):,} rows* in "
            f"{duration(float(result.get('seconds', 0)))} ({verified})." + _backup_done(request)
        )
    if state == "failed":
        return f":x: Failed and rolled back, nothing was {past}: {_clean(request.error or 'unknown error')}"
    if state == "cancelled":
        return f":no_entry_sign: Cancelled by <@{request.decided_by}>."
    if state == "expired":
        return f":alarm_clock: Expired: nobody confirmed it in time. Nothing was {past}."
    if state == "rejected":
        return f":no_entry: Rejected by <@{request.decided_by}>: {_clean(request.decision_reason or '')}"
    if state == "stale":
        successor = (request.result or {}).get("replaced_by") or request.replaced_by
        if (request.result or {}).get("target_changed"):
            again = f" This is not what was approved; ask again if something still needs to be {past}."
        elif successor:
            again = f" The new numbers are posted as request #{successor} for a fresh approval."
        else:
            again = " Nothing can be deleted as it is now."
        return f":arrows_counterclockwise: Stale, nothing was {past}: {_clean(request.error or '')}.{again}"
    return f":warning: {escape(STATE_WORDS.get(state, state))}"


def _restore_lines(impact: dict[str, Any]) -> list[str]:
    return [
        f"• {code(str(t['table']))}: *{int(t['rows']):,}* rows to put back{COLUMN_NOTES.get(str(t['action']), '')}"
        for t in impact.get("tables", [])
    ]


def _restore_blocks(request: DeleteRequest) -> list[Block]:
    impact = request.impact
    blocks: list[Block] = [
        divider(),
        section(
            f"From backup {code(str(impact.get('backup_id', '?')))} of delete request "
            f"#{escape(str(impact.get('source_request', '?')))}: *{int(impact.get('total_rows', 0)):,} rows*, "
            "checked by a dry run (schema fingerprint, checksums, no conflicting rows). Inserted parents first in "
            "one transaction; a conflict found at run time writes nothing."
        ),
        *lines_sections(_restore_lines(impact)),
    ]
    if impact.get("unchecked"):
        blocks.append(context("Not pre-checked: " + _clean(", ".join(impact["unchecked"]))))
    return blocks


def _approved_by(request: DeleteRequest) -> str:
    """Who approved, on every message after the quorum (an update can be skipped, this line can't)."""
    if not request.protected or request.state not in ("approved", "running", "done", "failed", "stale"):
        return ""
    approvals = [a for a in request.approvals if a != request.requester]
    return f". Approved by {', '.join(f'<@{a}>' for a in approvals)}" if approvals else ""


def request_message(view: RequestView) -> dict[str, Any]:
    """The request's message in every state; chat.postMessage and chat.update send exactly this."""
    request = view.request
    word = _state_word(request)
    lock = " :lock:" if request.protected else ""
    title = "Restore" if request.kind == "restore" else "Delete"
    blocks: list[Block] = [
        header(f"{title} {request.slug} on {request.stage}"[:150]),
        section(_status(request, view.progress)),
        context(
            f"Request #{request.id} by <@{request.requester}> on stage *{escape(request.stage)}*{lock}"
            + (f". Reason: {_clean(request.reason)}" if request.reason else "")
            + (f". Replaces request #{request.replaces}" if request.replaces else "")
            + _approved_by(request)
        ),
    ]
    if request.kind == "restore":
        blocks += _restore_blocks(request)
        blocks += _buttons(request, 0)
        return {"text": scrub(f"{title} {request.slug} on {request.stage}: {word}"), "blocks": blocks}
    report = ImpactReport.from_json(request.impact)
    blocks.append(
        context(
            f":floppy_disk: Backup before the delete: {_clean(view.backup_note)}"
            if view.backup_note
            else ":floppy_disk: Backup before the delete: none (add `--backup` to the command to keep the rows)"
        )
    )
    if request.state == "done" and (request.result or {}).get("steps"):
        steps = (request.result or {})["steps"]
        lines = [
            f"• {code(s['table'])}: {int(s['rows']):,} rows {'deleted' if s['action'] == 'delete' else s['action']}"
            f" ({duration(float(s['seconds']))})"
            for s in steps
        ]
        blocks += lines_sections(lines)
    else:
        blocks.append(divider())
        blocks += impact_blocks(report, protected=request.protected)
    blocks += _buttons(request, report.total_rows)
    text = f"Delete {request.slug} on {request.stage}: {word}"
    return {"text": scrub(text), "blocks": blocks}


def _buttons(request: DeleteRequest, rows: int) -> list[Block]:
    """Approve/Reject/Cancel while a protected request waits; Delete (confirm dialog)/Cancel elsewhere."""
    blocks: list[Block] = []
    if request.state == "pending" and request.protected:
        value = {"r": request.id}
        blocks.append(
            actions(
                button("Approve", APPROVE_ACTION, value, style="primary"),
                button("Reject", REJECT_ACTION, value, style="danger"),
                button("Cancel", CANCEL_ACTION, value),
                block_id=f"delete_request_{request.id}",
            )
        )
    elif request.state == "pending":
        blocks.append(
            actions(
                _delete_button(request, rows),
                button("Cancel", CANCEL_ACTION, {"r": request.id}),
                block_id=f"delete_request_{request.id}",
            )
        )
    return blocks


def _delete_button(request: DeleteRequest, rows: int) -> dict[str, Any]:
    """The requester's confirmation on an unprotected stage: danger style, behind Slack's confirm dialog."""
    dialog = confirm_dialog(
        "Delete for good?",
        f"Delete `{escape(request.slug)}` on {escape(request.stage)}: {rows:,} rows. "
        + ("They are kept in a scoped backup first." if request.takes_backup else "This can't be undone."),
        "Delete",
        danger=True,
    )
    return button("Delete", CONFIRM_ACTION, {"r": request.id}, style="danger", confirm=dialog)


def home_request_blocks(request: DeleteRequest, viewer: str) -> list[Block]:
    """One pending request on the viewer's App Home: what it is, and only the buttons they may press."""
    link = permalink(request.channel, request.message_ts)
    title = f"#{request.id} {request.kind} {code(request.slug)} on *{escape(request.stage)}*"
    rows = int(request.impact.get("total_rows", 0))
    mine = request.requester == viewer
    if request.protected:
        progress = f"{len(request.approvals)} of {request.required_approvals} approvals"
        who = "you asked" if mine else f"asked by <@{request.requester}>"
    else:
        progress, who = "waiting for your confirmation", "you asked"
    line = (
        f"{title}: {rows:,} rows, {progress}, {who}, expires {when(request.expires_at)}"
        + (f". Reason: {_clean(request.reason)}" if request.reason else "")
        + (f" (<{link}|message>)" if link else "")
    )
    value = {"r": request.id}
    if mine:
        buttons = [button("Cancel", CANCEL_ACTION, value)]
        if not request.protected:
            buttons.insert(0, _delete_button(request, rows))
    else:
        buttons = [
            button("Approve", APPROVE_ACTION, value, style="primary"),
            button("Reject", REJECT_ACTION, value, style="danger"),
        ]
    return [section(line), actions(*buttons, block_id=f"home_request_{request.id}")]


def refusal(text: str) -> Message:
    msg = message(text, [section(f":no_entry: {text}")], ephemeral=True)
    msg["replace_original"] = False
    return msg


def reject_modal(request_id: int) -> dict[str, Any]:
    """The form that asks a rejecting approver why."""
    return {
        "type": "modal",
        "callback_id": REJECT_MODAL,
        "private_metadata": json.dumps({"r": request_id}),
        "title": {"type": "plain_text", "text": "Reject request"},
        "submit": {"type": "plain_text", "text": "Reject"},
        "close": {"type": "plain_text", "text": "Back"},
        "blocks": [
            section(f"Why reject request #{request_id}? The reason is shown on the request and audited."),
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "label": {"type": "plain_text", "text": "Reason"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": REASON_INPUT,
                    "multiline": True,
                    "max_length": 500,
                },
            },
        ],
    }


@renders("pending")
def render_pending(request: CommandRequest, result: PendingRequests) -> Message:
    where = f" on stage *{escape(result.stage)}*" if result.stage else ""
    lines: list[str] = []
    for r in result.requests:
        link = permalink(r.channel, r.message_ts)
        title = f"#{r.id} {r.kind} {escape(r.slug)}"
        shown = f"<{link}|{title}>" if link else title
        approvals = f", {len(r.approvals)} of {r.required_approvals} approvals" if r.protected else ""
        lines.append(
            f"• {shown} on *{escape(r.stage)}*: {_state_word(r)}{approvals}, by <@{r.requester}>, "
            f"expires {when(r.expires_at)}" + (f" ({_clean(r.reason)})" if r.reason else "")
        )
    blocks = [section(f":inbox_tray: Open requests{where}: {len(lines)}"), *lines_sections(lines or ["_none_"])]
    return message(f"{len(lines)} open requests", blocks, ephemeral=True)
