"""Messages of `/mcp forget-user`: impact, dry runs, the combined impact of every stage, the receipt.

The person appears as the digest label of the identifier (and, to whoever typed it, their email masked);
never as typed.
"""

from __future__ import annotations

from typing import Any

from bot.erasure.identity import normalise
from bot.erasure.operations import IDENTIFIER
from bot.erasure.plan import ErasureImpact
from bot.erasure.service import AllStages, DryRun
from bot.pii import mask_email, scrub
from bot.service import CommandRequest
from handlers.blocks import Block, Message, code, context, escape, human_bytes, lines_sections, message, section
from handlers.render import renders

ACTIONS = {
    "delete": "deleted",
    "set null": "set to NULL",
    "set default": "set to their default",
    "anonymise": "anonymised",
    "replace email": "with the email replaced",
}


def who(request: CommandRequest, label: str) -> str:
    """The person as the one who typed the command may see them: the digest label, the email masked."""
    typed = request.parsed.args.get(IDENTIFIER, "")
    shown = f" ({mask_email(normalise(typed))})" if "@" in typed else ""
    return f"{code(label)}{escape(shown)}"


def step_lines(steps: list[dict[str, Any]]) -> list[str]:
    lines = [
        f"• {code(str(s['table']))}: {int(s['rows']):,} rows {ACTIONS.get(str(s['action']), str(s['action']))}"
        for s in steps
        if s.get("rows")
    ]
    return lines or ["• nothing to change"]


def _plan_steps(impact: ErasureImpact) -> list[dict[str, Any]]:
    steps = [{"table": t.table, "action": t.action, "rows": t.rows} for t in impact.delete.tables]
    steps += [{"table": a.table, "action": "anonymise", "rows": a.rows} for a in impact.anonymised]
    steps += [{"table": j.column, "action": "replace email", "rows": j.replaced or 0} for j in impact.json]
    return steps


def detail_lines(impact: ErasureImpact) -> list[str]:
    """What the counts do not say: who matched, servers used, JSON, scans, blockers, skipped columns."""
    lines = [f"Matched {impact.users:,} user row(s); listed columns are matched on {impact.emails:,} email(s)."]
    if impact.memberships:
        lines.append("Servers this person used: " + ", ".join(code(s) for s in impact.memberships))
    if impact.servers_untouched:
        lines.append("The servers themselves are untouched.")
    for anon in impact.anonymised:
        cleared = f"; {', '.join(anon.cleared)} cleared" if anon.cleared else ""
        lines.append(
            f"{code(anon.table)} rows in `anonymise` mode keep their place: "
            f"{escape(', '.join(anon.columns))} become a stable token{escape(cleared)}."
        )
    for found in impact.json:
        if found.in_deleted:
            lines.append(f"{code(found.column)}: the email is in {found.in_deleted:,} row(s) the erasure deletes.")
        if found.scan_rows or found.scan_bytes:
            lines.append(
                f"{code(found.column)} is read whole (ERASURE_SCAN_ALL): ~{found.scan_rows:,} rows,"
                f" {human_bytes(found.scan_bytes)}, est. {found.scan_estimated_s:.1f} s; mentions in rows kept are"
                " replaced by the token."
            )
    for blocker in impact.delete.blockers:
        lines.append(f":no_entry: {escape(scrub(blocker.reason))}")
    if impact.skipped:
        lines.append("Listed but not in this database (skipped): " + ", ".join(code(c) for c in impact.skipped))
    return lines


def impact_blocks(impact: ErasureImpact) -> list[Block]:
    return [*lines_sections(step_lines(_plan_steps(impact))), *lines_sections(detail_lines(impact))]


def dry_run_blocks(run: DryRun, request: CommandRequest) -> list[Block]:
    result = run.result
    protected = " (protected)" if run.protected else ""
    head = (
        f":test_tube: Dry run on *{escape(run.stage)}*{protected}: forgetting {who(request, run.impact.label)} "
        f"changes *{result.total_rows:,} rows* in one transaction, which was rolled back: nothing changed."
    )
    blocks = [section(head), *lines_sections(step_lines(result.steps)), *lines_sections(detail_lines(run.impact))]
    return blocks


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
            f":test_tube: Dry run on every stage: forgetting {who(request, result.label)} changes *{total:,} rows* on "
            f"{len(found)} of {len(result.stages)} stage(s); every run was rolled back. The erasures themselves "
            "are asked for stage by stage (`--stage`)."
        )
    ]
    for entry in result.stages:
        name = f"*{escape(entry.stage)}*" + (" (protected)" if entry.protected else "")
        if entry.error:
            blocks.append(section(f"{name}: :warning: {escape(scrub(entry.error))}"))
        elif entry.nothing or entry.dry_run is None:
            blocks.append(section(f"{name}: nothing matches."))
        else:
            run = entry.dry_run
            blocks.append(section(f"{name}: {run.result.total_rows:,} rows"))
            blocks += lines_sections(step_lines(run.result.steps) + detail_lines(run.impact))
    blocks.append(context("Scoped backups are looked through when an erasure runs; its receipt lists them."))
    return message("forget-user on every stage", blocks, ephemeral=True)
