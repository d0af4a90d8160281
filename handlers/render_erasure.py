"""Messages of `/mcp forget-user`: impact, dry runs, the combined impact of every stage, the receipt.

The person appears as the digest label of the identifier (and, to whoever typed it, their email masked);
never as typed. Every text goes through the text boundary (bot/slacktext): markup is `md`, data is data.
"""

from __future__ import annotations

from typing import Any

from bot.erasure.identity import normalise
from bot.erasure.operations import IDENTIFIER
from bot.erasure.plan import ErasureImpact
from bot.erasure.service import AllStages, DryRun
from bot.pii import mask_email
from bot.service import CommandRequest
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
    prose,
    section,
)
from handlers.render import renders

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


def step_lines(steps: list[dict[str, Any]]) -> list[Mrkdwn]:
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
                "{} rows in `anonymise` mode stay: {} become a stable token{}.",
                code(anon.table),
                ", ".join(anon.columns),
                cleared,
            )
        )
    for found in impact.json:
        if found.in_deleted:
            lines.append(
                md("{}: the email is in {} the erasure deletes.", code(found.column), f"{found.in_deleted:,} row(s)")
            )
        if found.scan_rows or found.scan_bytes:
            lines.append(
                md(
                    "{} is read whole (ERASURE_SCAN_ALL): ~{} rows, {}, est. {} s; mentions in rows kept are"
                    " replaced by the token.",
                    code(found.column),
                    f"{found.scan_rows:,}",
                    human_bytes(found.scan_bytes),
                    f"{found.scan_estimated_s:.1f}",
                )
            )
    for blocker in impact.delete.blockers:
        lines.append(md(":no_entry: {}", prose(blocker.reason)))
    if impact.skipped:
        lines.append(
            md("Listed but not in this database (skipped): {}", Mrkdwn(", ").join(code(c) for c in impact.skipped))
        )
    return lines


def impact_blocks(impact: ErasureImpact) -> list[Block]:
    return [*lines_sections(list(step_lines(_plan_steps(impact)))), *lines_sections(list(detail_lines(impact)))]


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
        *lines_sections(list(step_lines(result.steps))),
        *lines_sections(list(detail_lines(run.impact))),
    ]


@renders("forget-user")
def render_forget_user(request: CommandRequest, result: Any) -> Message:
    if isinstance(result, DryRun):
        return message(f"forget-user dry run on {result.stage}", dry_run_blocks(result, request), ephemeral=True)
    if isinstance(result, AllStages):
        return _all_stages(request, result)
    raise TypeError(f"no renderer for {type(result).__name__}")


def _all_stages(request: CommandRequest, result: AllStages) -> Message:
    total = sum(s.dry_run.result.total_rows for s in result.stages if s.dry_run)
    found = [s.stage for s in result.stages if s.dry_run]
    blocks: list[Block] = [
        section(
            md(
                ":test_tube: Dry run on every stage: forgetting {} changes *{}* on {} of {} stage(s); every run was"
                " rolled back. The erasures themselves are asked for stage by stage (`--stage`).",
                who(request, result.label),
                f"{total:,} {noun(total, 'row')}",
                str(len(found)),
                str(len(result.stages)),
            )
        )
    ]
    for entry in result.stages:
        name = md("*{}*{}", entry.stage, " (protected)" if entry.protected else "")
        if entry.error:
            blocks.append(section(md("{}: :warning: {}", name, prose(entry.error))))
        elif entry.nothing or entry.dry_run is None:
            blocks.append(section(md("{}: nothing matches.", name)))
        else:
            run = entry.dry_run
            rows = run.result.total_rows
            blocks.append(section(md("{}: {} {}", name, f"{rows:,}", noun(rows, "row"))))
            blocks += lines_sections([*step_lines(run.result.steps), *detail_lines(run.impact)])
    blocks.append(context(md("Scoped backups are looked through when an erasure runs; its receipt lists them.")))
    return message("forget-user on every stage", blocks)  # posted: the combined impact is for the channel
