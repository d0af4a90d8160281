"""Messages of `/mcp forget-user`: impact, dry runs, the combined impact of every stage, the receipt.

The person appears as the digest label of the identifier (and, to whoever typed it, their email masked);
never as typed. Every text goes through the text boundary (bot/slacktext): markup is `md`, data is data.
"""

from __future__ import annotations

from typing import Any

from bot.erasure.identity import normalise
from bot.erasure.operations import IDENTIFIER
from bot.erasure.plan import ErasureImpact
from bot.erasure.service import AllStages, BackupsPurged, DryRun
from bot.kinds.forget_user import ErasurePosted, ErasureRefused
from bot.pii import mask_email
from bot.requests.messages import RequestView
from bot.requests.store import Request
from bot.service import CommandRequest
from bot.slacktext.files import Attachment, attach, filename, text_file
from handlers.blocks import (
    Block,
    Message,
    Mrkdwn,
    code,
    context,
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
from handlers.render_impact import capped
from handlers.render_requests import KindView, kind_view

RECEIPT_LISTS_ALL = Mrkdwn("the erasure's receipt lists every table")
RECEIPT_IN_THREAD = Mrkdwn("the whole receipt is in the thread")
ACTIONS = {
    "delete": "deleted",
    "set null": "set to NULL",
    "set default": "set to their default",
    "anonymise": "anonymised",
    "replace email": "with the email replaced",
}


def who(request: CommandRequest, label: str) -> Mrkdwn:
    """The person as the one who typed the command may see them: the digest label, the email masked."""
    typed = request.parsed.args.get(IDENTIFIER, "")
    if "@" in typed:
        return md("{} ({})", code(label), mask_email(normalise(typed)))
    return code(label)


def step_lines(steps: list[dict[str, Any]], more: Mrkdwn | None = None) -> list[Mrkdwn]:
    """A line per table with rows changed; with `more`, the largest tables, then how many more and where."""
    if more is not None:
        steps = sorted(steps, key=lambda s: -int(s.get("rows") or 0))
    lines = [
        md(
            "• {}: {} {} {}",
            code(s["table"]),
            f"{int(s['rows']):,}",
            noun(int(s["rows"]), "row"),
            ACTIONS.get(str(s["action"]), str(s["action"])),
        )
        for s in steps
        if s.get("rows")
    ]
    if more is not None:
        lines = capped(lines, "tables", more)
    return lines or [md("• nothing to change")]


def _plan_steps(impact: ErasureImpact) -> list[dict[str, Any]]:
    steps = [{"table": t.table, "action": t.action, "rows": t.rows} for t in impact.delete.tables]
    steps += [{"table": a.table, "action": "anonymise", "rows": a.rows} for a in impact.anonymised]
    steps += [{"table": j.column, "action": "replace email", "rows": j.replaced or 0} for j in impact.json]
    return steps


def detail_lines(impact: ErasureImpact) -> list[Mrkdwn]:
    """What the counts do not say: who matched, servers used, JSON, scans, blockers, skipped columns."""
    lines = [
        md(
            "Matched {} {}; listed columns are matched on {} {}.",
            f"{impact.users:,}",
            noun(impact.users, "user row"),
            f"{impact.emails:,}",
            noun(impact.emails, "email"),
        )
    ]
    if impact.memberships:
        lines.append(md("Servers this person used: {}", Mrkdwn(", ").join(code(s) for s in impact.memberships)))
    if impact.servers_untouched:
        lines.append(md("The servers themselves are untouched."))
    for anon in impact.anonymised:
        cleared = f"; {', '.join(anon.cleared)} cleared" if anon.cleared else ""
        lines.append(
            md(
                "{} keeps its rows (`anonymise` mode): {} {} replaced by a stable token{}.",
                code(anon.table),
                ", ".join(anon.columns),
                "is" if len(anon.columns) == 1 else "are",
                cleared,
            )
        )
    for found in impact.json:
        if found.in_deleted:
            lines.append(
                md("{}: the email is in {} the erasure deletes.", code(found.column), plural(found.in_deleted, "row"))
            )
        if found.scan_rows or found.scan_bytes:
            lines.append(
                md(
                    "{} is read whole (ERASURE_SCAN_ALL): ~{}, {}, est. {} s; mentions in rows kept are"
                    " replaced by the token.",
                    code(found.column),
                    plural(found.scan_rows, "row"),
                    human_bytes(found.scan_bytes),
                    f"{found.scan_estimated_s:.1f}",
                )
            )
    for blocker in impact.delete.blockers:
        lines.append(md(":no_entry: {}", prose(blocker.reason)))
        for row in blocker.sample:
            lines.append(md("    ◦ {}", Mrkdwn(", ").join(md("{}={}", k, code(v)) for k, v in row.items())))
        if blocker.rows > len(blocker.sample) and blocker.sample:
            lines.append(md("    ◦ … {:,} more", blocker.rows - len(blocker.sample)))
    for trigger in impact.delete.triggers:
        if trigger.on_delete:
            lines.append(
                md(
                    ":zap: {} on {} ({}) fires during the erasure: what it writes elsewhere is erased only if its"
                    " column is listed (ERASURE_COLUMNS), and the check after the commit looks only there.",
                    code(trigger.trigger),
                    code(trigger.table),
                    trigger.definition,
                )
            )
    if impact.skipped:
        lines.append(
            md("Listed but not in this database (skipped): {}", Mrkdwn(", ").join(code(c) for c in impact.skipped))
        )
    return lines


def impact_blocks(impact: ErasureImpact) -> list[Block]:
    steps = step_lines(_plan_steps(impact), RECEIPT_LISTS_ALL)
    return [*lines_sections(steps), *lines_sections(list(detail_lines(impact)))]


def dry_run_blocks(run: DryRun, request: CommandRequest) -> list[Block]:
    result = run.result
    head = md(
        ":test_tube: Dry run on *{}*{}: forgetting {} changes *{}* in one transaction, which was rolled back:"
        " nothing changed.",
        run.stage,
        " (protected)" if run.protected else "",
        who(request, run.impact.label),
        f"{result.total_rows:,} {noun(result.total_rows, 'row')}",
    )
    return [
        section(head),
        *lines_sections(step_lines(result.steps, RECEIPT_LISTS_ALL)),
        *lines_sections(list(detail_lines(run.impact))),
    ]


@renders("forget-user")
def render_forget_user(request: CommandRequest, result: Any) -> Message:
    if isinstance(result, DryRun):
        return message(f"forget-user dry run on {result.stage}", dry_run_blocks(result, request), ephemeral=True)
    if isinstance(result, AllStages):
        return _all_stages(request, result)
    if isinstance(result, ErasurePosted):
        return _posted(request, result)
    if isinstance(result, BackupsPurged):
        return _purged_later(request, result)
    if isinstance(result, ErasureRefused):
        head = md(
            ":no_entry: {} can't be forgotten on *{}* as it is: the database would refuse. Nothing was asked.",
            who(request, result.impact.label),
            result.stage,
        )
        return message("forget-user refused", [section(head), *impact_blocks(result.impact)], ephemeral=True)
    raise TypeError(f"no renderer for {type(result).__name__}")


def _all_stages(request: CommandRequest, result: AllStages) -> Message:
    total = sum(s.dry_run.result.total_rows for s in result.stages if s.dry_run)
    found = [s.stage for s in result.stages if s.dry_run]
    blocks: list[Block] = [
        section(
            md(
                ":test_tube: Dry run on every stage: forgetting {} changes *{}* on {} of {}; every run was"
                " rolled back. The erasures themselves are asked for stage by stage (`--stage`).",
                who(request, result.label),
                f"{total:,} {noun(total, 'row')}",
                str(len(found)),
                plural(len(result.stages), "stage"),
            )
        )
    ]
    file = filename("forget-user", result.label, "every-stage", ext="txt")
    report: list[str] = [f"Dry run on every stage: forgetting {result.label}", ""]
    long = False
    for entry in result.stages:
        name = md("*{}*{}", entry.stage, " (protected)" if entry.protected else "")
        if entry.error:
            blocks.append(section(md("{}: :warning: {}", name, prose(entry.error))))
            report += [f"{entry.stage}: {entry.error}", ""]
        elif entry.nothing or entry.dry_run is None:
            blocks.append(section(md("{}: nothing matches.", name)))
            report += [f"{entry.stage}: nothing matches.", ""]
        else:
            run = entry.dry_run
            rows = run.result.total_rows
            steps = step_lines(run.result.steps, md("the attached {} has them all", code(file)))
            long = long or len(steps) < len(step_lines(run.result.steps))
            blocks.append(section(md("{}: {} {}", name, f"{rows:,}", noun(rows, "row"))))
            blocks += lines_sections([*steps, *detail_lines(run.impact)])
            report += [f"{entry.stage}: {plural(rows, 'row')}", *step_lines(run.result.steps), ""]
            report += [*detail_lines(run.impact), ""]
    blocks.append(context(md("Scoped backups are looked through when an erasure runs; its receipt lists them.")))
    reply = message("forget-user on every stage", blocks)  # posted: the combined impact is for the channel
    title = f"forget-user dry run on every stage: {result.label}"
    return attach(reply, text_file(file, title, report)) if long else reply


def _posted(request: CommandRequest, result: ErasurePosted) -> Message:
    posted = result.request
    if posted.protected:
        text = md(
            "The erasure of {} is posted in this channel as request #{}: it needs {} from approvers other than you"
            " before {}. You can *Cancel* it.",
            who(request, result.impact.label),
            str(posted.id),
            plural(posted.required_approvals, "approval"),
            when(posted.expires_at),
        )
    else:
        text = md(
            "The erasure of {} is posted in this channel as request #{}. Only you can press *Forget* (or *Cancel*);"
            " it expires at {}.",
            who(request, result.impact.label),
            str(posted.id),
            when(posted.expires_at),
        )
    return message(text, [section(text)], ephemeral=True)


# -- the request and its receipt (kind `forget-user`) -------------------------------------------------

BACKUP_FATES = {"rewritten": "rewritten without them", "deleted": "deleted (it held nothing else)"}


def receipt_lines(result: dict[str, Any], more: Mrkdwn | None = None) -> list[Mrkdwn]:
    """What was erased where, and where the person may remain (with `more`: the head of each list, then
    how many more and where they are)."""
    lines = [md("Erasure #{} is recorded in the erasure ledger (digests only).", str(result.get("erasure")))]
    lines += step_lines(list(result.get("steps") or []), more)
    if result.get("verified"):
        lines.append(md(":white_check_mark: Checked after the commit: nothing matching the person is left."))
    else:
        lines.append(md(":warning: The check after the commit found: {}", "; ".join(result.get("verification") or [])))
    return lines + backup_lines(result, more=more)


def backup_lines(
    result: dict[str, Any],
    *,
    none: str = "No scoped backup taken before the erasure holds the person.",
    more: Mrkdwn | None = None,
) -> list[Mrkdwn]:
    """The scoped backups that held the person and what became of them; what may still hold them."""
    lines: list[Mrkdwn] = []
    backups = list(result.get("backups") or [])
    if result.get("backup_error"):
        lines.append(md(":warning: The scoped backups could not be read: {}", prose(result["backup_error"])))
    elif not backups:
        lines.append(md("{}", none))
    listed: list[Mrkdwn] = []
    for backup in backups:
        fate = BACKUP_FATES.get(str(backup.get("action")), "still holds them; a restore of it leaves them out")
        rows = int(backup.get("rows") or 0)
        listed.append(
            md("• scoped backup {}: {} of the person, {}", code(backup.get("backup_id")), plural(rows, "row"), fate)
        )
    lines += capped(listed, "scoped backups", more) if more is not None else listed
    if any(b.get("action") == "found" for b in backups):
        lines.append(md("To purge them later: the same `/mcp forget-user` with `--purge-backups`."))
    full = [str(b) for b in result.get("full_backups") or []]
    if full:
        shown = Mrkdwn(", ").join(code(b) for b in full[:5])
        more = ", …" if len(full) > 5 else ""
        lines.append(
            md("May remain until they expire: {} taken before ({}{})", plural(len(full), "full dump"), shown, more)
        )
    for snapshot in result.get("snapshots") or []:
        lines.append(md("May remain until it expires: RDS snapshot {}", code(snapshot)))
    return lines


def _purged_later(request: CommandRequest, result: BackupsPurged) -> Message:
    head = md(
        ":broom: {} was forgotten on *{}* by erasure #{}; the scoped backups taken before it are purged now:",
        who(request, result.label),
        result.stage,
        str(result.erasure_id),
    )
    found = {
        "backups": [b.to_json() for b in result.backups],
        "backup_error": result.backup_error,
        "full_backups": result.full_backups,
        "snapshots": result.snapshots,
    }
    lines = backup_lines(found, none="No scoped backup taken before the erasure holds the person any more.")
    return message(f"forget-user: backups purged on {result.stage}", [section(head), *lines_sections(lines)])


def _receipt(request: Request) -> dict[str, Any] | None:
    result = request.result
    return result if request.state == "done" and result and "erasure" in result else None


def _receipt_files(view: RequestView) -> list[Attachment]:
    """The whole receipt in the request's thread, when the message shows only the head of its lists."""
    result = _receipt(view.request)
    if result is None or receipt_lines(result, RECEIPT_IN_THREAD) == receipt_lines(result):
        return []
    request = view.request
    name = filename("receipt", request.stage, f"erasure-{result.get('erasure')}", ext="txt")
    title = f"Receipt of erasure #{result.get('erasure')} on {request.stage}"
    return [text_file(name, title, [title, "", *receipt_lines(result)])]


def request_body(view: RequestView) -> list[Block]:
    request = view.request
    result = _receipt(request)
    if result is not None:
        return lines_sections(receipt_lines(result, RECEIPT_IN_THREAD))
    blocks = impact_blocks(ErasureImpact.from_json(request.impact))
    if request.options.get("purge_backups"):
        blocks.append(context(md("Scoped backups that hold the person will be rewritten without them.")))
    else:
        blocks.append(context(md("Scoped backups that hold the person will be listed in the receipt.")))
    return blocks


def _running(view: RequestView) -> Mrkdwn:
    progress = view.progress
    phase = str(getattr(progress, "phase", "") or "starting")
    table = str(getattr(progress, "table", "") or "")
    return md(":gear: Erasing in one transaction: {}{}…", phase, f" ({table})" if table else "")


def _done(request: Request) -> Mrkdwn:
    rows = int((request.result or {}).get("rows") or 0)
    return md(
        ":white_check_mark: Done: *{}* erased or anonymised in one transaction. The receipt:", plural(rows, "row")
    )


def _rows(request: Request) -> Mrkdwn:
    return md("{}", plural(int((request.impact or {}).get("total_rows") or 0), "row"))


@kind_view("forget-user")
def _forget_user_view() -> KindView:
    return KindView(
        title=lambda r: f"Forget {r.subject} on {r.stage}",
        body=request_body,
        running=_running,
        done=_done,
        summary=_rows,
        confirm="Forget",
        files=_receipt_files,
        confirm_title="Forget this person?",
        confirm_text=lambda r: (
            f"Erase this person's {plural(int((r.impact or {}).get('total_rows') or 0), 'row')} on {r.stage}?"
            " This can't be undone."
        ),
    )
