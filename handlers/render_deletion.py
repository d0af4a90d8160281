"""How impact reports, delete requests and their results look in Slack.

Everything shown comes from plan data (table names, counts, sample keys) and reaches Slack
through the text boundary (bot/slacktext): a value from the database is data, escaped, scrubbed
and masked, never markup.
"""

from __future__ import annotations

import json
from typing import Any

from bot.deletion.execute import Progress
from bot.deletion.flow import DeletePosted, DeleteRefused, DryRunDone, RequestView, permalink
from bot.deletion.impact import Blocker, ImpactReport, SlowKey, TriggerNote
from bot.deletion.operations import PendingRequests
from bot.deletion.requests import DeleteRequest
from bot.service import CommandRequest
from handlers.blocks import (
    Block,
    Message,
    Mrkdwn,
    actions,
    button,
    code,
    code_block,
    confirm_dialog,
    context,
    divider,
    header,
    human_bytes,
    lines_sections,
    link,
    md,
    mention,
    mentions,
    message,
    noun,
    payload,
    plural,
    prose,
    section,
    when,
)
from handlers.render import renders
from handlers.render_backups import COLUMN_NOTES, restore_trigger_lines

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


def impact_blocks(report: ImpactReport, *, protected: bool) -> list[Block]:
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
        *impact_blocks(report, protected=stage.protected),
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
            *impact_blocks(result.report, protected=stage.protected),
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


def _backup_done(request: DeleteRequest) -> Mrkdwn:
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


def _running(request: DeleteRequest, progress: Progress | None) -> Mrkdwn:
    if request.kind == "restore":
        return Mrkdwn(":gear: Running: staging the backup, checking for conflicts, inserting parents first…")
    if progress is None or progress.phase == "counting":
        where = md(" ({})", code(progress.table)) if progress and progress.table else Mrkdwn("")
        return md(":gear: Running: materialising and re-counting the scope{}…", where)
    if progress.phase == "backup":
        return md(
            ":floppy_disk: Running: backing up {} ({} stored), {} elapsed.",
            code(progress.table),
            human_bytes(progress.rows_done),
            duration(progress.elapsed_s),
        )
    if progress.phase == "hook":
        return Mrkdwn(
            ":gear: Running: backing up what it deletes…" if request.takes_backup else ":gear: Running: preparing…"
        )
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


def _status(request: DeleteRequest, progress: Progress | None) -> Mrkdwn:
    who = mention(request.requester)
    state = request.state
    past = PAST.get(request.kind, "changed")
    approvers = mentions(request.approvals)
    if state == "pending" and request.protected:
        so_far = md("; approved so far by {}", approvers) if approvers else Mrkdwn("")
        return md(
            ":hourglass_flowing_sand: Needs *{}* {} from APPROVERS other than {} before {}: {} of {}{}.",
            request.required_approvals,
            noun(request.required_approvals, "approval"),
            who,
            when(request.expires_at),
            len(request.approvals),
            request.required_approvals,
            so_far,
        )
    if state == "pending":
        return md(
            ":hourglass_flowing_sand: Waiting for {} to press *Delete* (or *Cancel*) before {}.",
            who,
            when(request.expires_at),
        )
    if state == "approved":
        verb = "Approved" if request.protected else "Confirmed"
        return md(":white_check_mark: {} by {}; starting.", verb, approvers or mention(request.decided_by))
    if state == "running":
        return _running(request, progress)
    if state == "done":
        result = request.result or {}
        if result.get("recovered"):
            return md(
                ":white_check_mark: Done: the {} committed, but the bot restarted before reporting it.", request.kind
            )
        rows = plural(int(result.get("rows", 0)), "row")
        took = duration(float(result.get("seconds", 0)))
        if request.kind == "restore":
            return md(":white_check_mark: Done: restored *{}* in {}, parents first, in one transaction.", rows, took)
        verified = "verified" if result.get("verified") else "committed; verification found problems"
        return md(":white_check_mark: Done: deleted *{}* in {} ({}).{}", rows, took, verified, _backup_done(request))
    if state == "failed":
        return md(":x: Failed and rolled back, nothing was {}: {}", past, prose(request.error or "unknown error"))
    if state == "cancelled":
        return md(":no_entry_sign: Cancelled by {}.", mention(request.decided_by))
    if state == "expired":
        return md(":alarm_clock: Expired: nobody confirmed it in time. Nothing was {}.", past)
    if state == "rejected":
        return md(":no_entry: Rejected by {}: {}", mention(request.decided_by), request.decision_reason or "")
    if state == "stale":
        successor = (request.result or {}).get("replaced_by") or request.replaced_by
        if (request.result or {}).get("target_changed"):
            again = md(" This is not what was approved; ask again if something still needs to be {}.", past)
        elif successor:
            again = md(" The new numbers are posted as request #{} for a fresh approval.", successor)
        else:
            again = Mrkdwn(" Nothing can be deleted as it is now.")
        return md(":arrows_counterclockwise: Stale, nothing was {}: {}.{}", past, prose(request.error or ""), again)
    return md(":warning: {}", STATE_WORDS.get(state, state))


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


def _restore_blocks(request: DeleteRequest) -> list[Block]:
    impact = request.impact
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


def _approved_by(request: DeleteRequest) -> Mrkdwn:
    """Who approved, on every message after the quorum (an update can be skipped, this line can't)."""
    if not request.protected or request.state not in ("approved", "running", "done", "failed", "stale"):
        return Mrkdwn("")
    approvals = [a for a in request.approvals if a != request.requester]
    return md(". Approved by {}", mentions(approvals)) if approvals else Mrkdwn("")


def request_message(view: RequestView) -> dict[str, Any]:
    """The request's message in every state; chat.postMessage and chat.update send exactly this."""
    request = view.request
    word = _state_word(request)
    lock = " :lock:" if request.protected else ""
    title = "Restore" if request.kind == "restore" else "Delete"
    blocks: list[Block] = [
        header(f"{title} {request.slug} on {request.stage}"),
        section(_status(request, view.progress)),
        context(
            md("Request #{} by {} on stage *{}*{}", request.id, mention(request.requester), request.stage, lock)
            + (md(". Reason: {}", request.reason) if request.reason else Mrkdwn(""))
            + (md(". Replaces request #{}", request.replaces) if request.replaces else Mrkdwn(""))
            + _approved_by(request)
        ),
    ]
    if request.kind == "restore":
        blocks += _restore_blocks(request)
        blocks += _buttons(request, 0)
        return payload(message(f"{title} {request.slug} on {request.stage}: {word}", blocks))
    report = ImpactReport.from_json(request.impact)
    blocks.append(
        context(
            md(":floppy_disk: Backup before the delete: {}", prose(view.backup_note))
            if view.backup_note
            else md(
                ":floppy_disk: Backup before the delete: none (add {} to the command to keep the rows)",
                code("--backup"),
            )
        )
    )
    if request.state == "done" and (request.result or {}).get("steps"):
        steps = (request.result or {})["steps"]
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
        blocks += lines_sections(lines)
    else:
        blocks.append(divider())
        blocks += impact_blocks(report, protected=request.protected)
    blocks += _buttons(request, report.total_rows)
    return payload(message(f"Delete {request.slug} on {request.stage}: {word}", blocks))


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
    kept = ("It is" if rows == 1 else "They are") + " kept in a scoped backup first."
    dialog = confirm_dialog(
        "Delete for good?",
        f"Delete {request.slug} on {request.stage}: {plural(rows, 'row')}. "
        + (kept if request.takes_backup else "This can't be undone."),
        "Delete",
        danger=True,
    )
    return button("Delete", CONFIRM_ACTION, {"r": request.id}, style="danger", confirm=dialog)


def home_request_blocks(request: DeleteRequest, viewer: str) -> list[Block]:
    """One pending request on the viewer's App Home: what it is, and only the buttons they may press."""
    url = permalink(request.channel, request.message_ts)
    title = md("#{} {} {} on *{}*", request.id, request.kind, code(request.slug), request.stage)
    rows = int(request.impact.get("total_rows", 0))
    mine = request.requester == viewer
    if request.protected:
        progress = md("{} of {} approvals", len(request.approvals), request.required_approvals)
        who = Mrkdwn("you asked") if mine else md("asked by {}", mention(request.requester))
    else:
        progress, who = Mrkdwn("waiting for your confirmation"), Mrkdwn("you asked")
    line = (
        md("{}: {}, {}, {}, expires {}", title, plural(rows, "row"), progress, who, when(request.expires_at))
        + (md(". Reason: {}", request.reason) if request.reason else Mrkdwn(""))
        + (md(" ({})", link(url, "message")) if url else Mrkdwn(""))
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
    shown = prose(text, keep_mentions=True)  # "only <@U1>, who asked for it, can cancel it"
    msg = message(shown, [section(md(":no_entry: {}", shown))], ephemeral=True)
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
            section(md("Why reject request #{}? The reason is shown on the request and audited.", request_id)),
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
    where = md(" on stage *{}*", result.stage) if result.stage else Mrkdwn("")
    lines: list[Mrkdwn] = []
    for r in result.requests:
        url = permalink(r.channel, r.message_ts)
        title = f"#{r.id} {r.kind} {r.slug}"
        shown = link(url, title) if url else md("{}", title)
        approvals = md(", {} of {} approvals", len(r.approvals), r.required_approvals) if r.protected else Mrkdwn("")
        lines.append(
            md(
                "• {} on *{}*: {}{}, by {}, expires {}",
                shown,
                r.stage,
                _state_word(r),
                approvals,
                mention(r.requester),
                when(r.expires_at),
            )
            + (md(" ({})", r.reason) if r.reason else Mrkdwn(""))
        )
    blocks = [
        section(md(":inbox_tray: Open requests{}: {:,}", where, len(lines))),
        *lines_sections(lines or [Mrkdwn("_none_")]),
    ]
    return message(plural(len(lines), "open request"), blocks, ephemeral=True)
