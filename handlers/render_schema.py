"""Replies of the schema verbs: `/mcp drift` and `/mcp migrations`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bot.schema.drift import DriftReport, group_title
from bot.schema.migrations import (
    APPLIED,
    CRLF,
    EDITED,
    PENDING,
    SKIPPED,
    Entry,
    MigrationsReport,
    StageMigrations,
)
from bot.service import CommandRequest
from bot.slacktext.files import Attachment, attach, filename, text_file
from bot.slacktext.long import as_plain
from handlers.blocks import (
    Message,
    Mrkdwn,
    code,
    code_block,
    context,
    lines_sections,
    md,
    message,
    plural,
    prose,
    section,
    when,
)
from handlers.render import renders

MAX_DIFF_LINES = 25  # shown in the message; the whole diff goes in the attached file
MAX_LINE_CHARS = 300
MAX_SUMMARY_GROUPS = 12


def _clip(line: str) -> str:
    return line if len(line) <= MAX_LINE_CHARS else line[: MAX_LINE_CHARS - 1] + "…"


@renders("drift")
def render_drift(request: CommandRequest, report: DriftReport) -> Message:
    a, b = report.stage_a, report.stage_b
    left_out = Mrkdwn(", ").join(code(p) for p in (*report.excluded, *report.ignored))
    footer = context(
        md(
            "{} compared from the catalogs in {:,} ms ({} per stage); left out: {} and objects that belong "
            "to extensions.",
            plural(report.tables_compared, "table"),
            report.took_ms,
            plural(max(report.queries.values(), default=0), "catalog query", "catalog queries"),
            left_out,
        )
    )
    if report.identical:
        text = f"{report.stage_a} and {report.stage_b}: identical schemas"
        return message(text, [section(md(":white_check_mark: *{}* and *{}* have identical schemas.", a, b)), footer])
    grouped = report.by_group()
    summary = ", ".join(
        f"{group.removeprefix('public.') or 'database'} ({len(diffs)})"
        for group, diffs in list(grouped.items())[:MAX_SUMMARY_GROUPS]
    )
    if len(grouped) > MAX_SUMMARY_GROUPS:
        summary += f" and {len(grouped) - MAX_SUMMARY_GROUPS:,} more"
    title = md(
        ":twisted_rightwards_arrows: Schema drift between *{}* and *{}*: {} in {}: {}",
        a,
        b,
        plural(len(report.differences), "difference"),
        plural(len(grouped), "place"),
        summary,
    )
    lines: list[Mrkdwn] = []
    shown = clipped = 0
    for group, diffs in grouped.items():
        if shown >= MAX_DIFF_LINES:
            break
        lines.append(md("*{}*", prose(group_title(group, report.views))))
        for diff in diffs[: MAX_DIFF_LINES - shown]:
            line = diff.describe(report.stage_a, report.stage_b)
            clipped += len(line) > MAX_LINE_CHARS
            lines.append(md("• {}", prose(_clip(line))))
            shown += 1
    blocks = [section(title), *lines_sections(lines)]
    file = text_file(filename("drift", a, b, ext="txt"), f"Schema drift: {a} vs {b}", report.as_text().splitlines())
    left = len(report.differences) - shown
    if left:
        blocks.append(
            section(
                md(
                    "_… and {:,} more: all {:,} are in the attached {}_",
                    left,
                    len(report.differences),
                    code(file.filename),
                )
            )
        )
    elif clipped:  # a long definition (a view's query, a trigger's) cut short here: whole in the file
        blocks.append(
            section(
                md(
                    "_{} cut short here: the whole diff is in the attached {}_",
                    plural(clipped, "line"),
                    code(file.filename),
                )
            )
        )
    blocks.append(footer)
    reply = message(
        f"{report.stage_a} vs {report.stage_b}: {plural(len(report.differences), 'schema difference')}", blocks
    )
    return attach(reply, file) if left or clipped else reply


STATE_WORDS = {
    APPLIED: "applied",
    CRLF: "CRLF-only",
    EDITED: "EDITED",
    PENDING: "pending",
    SKIPPED: "SKIPPED",
}
STATE_LINES = {
    PENDING: ":hourglass_flowing_sand: `{name}` pending: the next migrate runs it",
    SKIPPED: ":no_entry: `{name}` *skipped*: older than the newest applied migration, so Drizzle's migrate will "
    "never run it (generated on a branch merged after a newer one was applied)",
    EDITED: ":pencil2: `{name}` *edited*: the applied migration's hash differs from the file's",
    CRLF: ":page_facing_up: `{name}` applied; the file differs only in line endings (CRLF), not an edit",
}
RERUNS = (
    ":rotating_light: row {} has no created_at: Drizzle (0.x) reads it as the newest row (NULL sorts first, as 0), "
    "so its next migrate runs all {} migrations of the journal again (and fails at the first that is not "
    "idempotent, every time); set its created_at to its journal entry's `when`"
)
MAX_MATRIX_ROWS = 40
MAX_STAGE_LINES = 30


def _generated(millis: int | None) -> str:
    if millis is None:
        return "?"
    return datetime.fromtimestamp(millis / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _newest(stage: StageMigrations) -> Mrkdwn:
    row = stage.newest
    if row is None:
        return Mrkdwn("none applied")
    label = code(stage.newest_name) if stage.newest_name else md("hash {}", code(row.hash[:12]))
    if row.applied_at is not None:
        dated = f"applied {when(row.applied_at.astimezone(UTC))}"
    else:
        dated = f"generated {_generated(row.created_at)}"
    return md("newest {} ({})", label, dated)


def _stage_summary(report: MigrationsReport, stage: StageMigrations) -> Mrkdwn:
    lock = Mrkdwn(" :lock:" if stage.protected else "")
    head = md("*{}*{}", stage.stage, lock)
    if not stage.readable:
        return md("{}: :grey_question: {}", head, prose(stage.reason or stage.table))
    parts: list[str] = [_newest(stage)]
    counts = stage.counts()
    if report.local:
        problems = [f"{counts[s]} {STATE_WORDS[s].lower()}" for s in (PENDING, SKIPPED, EDITED, CRLF) if counts.get(s)]
        parts.append(", ".join(problems) if problems else "every migration applied")
    if stage.unknown:
        parts.append(f"{len(stage.unknown)} unknown")
    if stage.reruns is not None:
        parts.append("the next migrate reruns every migration")
    if repeated := sum(1 for e in stage.entries if e.repeats):
        parts.append(f"{repeated} applied more than once")
    reference = report.stage(report.reference) if report.reference else None
    if reference is not None and reference is not stage and reference.readable:
        behind = report.behind(stage, reference)
        if behind:
            parts.append(f"{stage.stage} is {len(behind)} behind {reference.stage}")
    return md("{}: {}", head, Mrkdwn(" · ").join(parts))


def _cell(entry: Entry | None) -> str:
    if entry is None:
        return "-"
    return STATE_WORDS[entry.state] + (f" x{1 + len(entry.repeats)}" if entry.repeats else "")


def _matrix(report: MigrationsReport) -> list[str]:
    readable = [s for s in report.stages if s.readable]
    rows: list[tuple[str, list[str]]] = []
    if report.local:
        for name in report.not_everywhere():
            rows.append((name, [_cell(s.entry(name)) for s in readable]))
        for stage in readable:
            for row in stage.unknown:
                rows.append((f"unknown {row.hash[:12]}", ["UNKNOWN" if s is stage else "-" for s in readable]))
    else:
        hashes: dict[str, int | None] = {}
        for stage in readable:
            for row in stage.rows:
                hashes.setdefault(row.hash, row.created_at)
        for digest, created in sorted(hashes.items(), key=lambda item: (item[1] or 0, item[0])):
            have = ["yes" if digest in s.applied_keys() else "-" for s in readable]
            if "-" in have:
                rows.append((f"{digest[:12]} ({_generated(created)[:10]})", have))
    if not rows:
        return []
    width = min(max(len(name) for name, _ in rows), 48)
    widths = [max(len(s.stage), *(len(cells[i]) for _, cells in rows)) for i, s in enumerate(readable)]
    header = (
        "migration".ljust(width) + "  " + "  ".join(s.stage.ljust(w) for s, w in zip(readable, widths, strict=True))
    )
    body = [
        name[:width].ljust(width) + "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
        for name, cells in rows
    ]
    return [header.rstrip(), *(line.rstrip() for line in body)]


def _code_sections(lines: list[str]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    chunk: list[str] = []
    for line in lines:
        if chunk and sum(len(c) + 1 for c in chunk) + len(line) > 2800:
            blocks.append(section(code_block("\n".join(chunk))))
            chunk = []
        chunk.append(line)
    if chunk:
        blocks.append(section(code_block("\n".join(chunk))))
    return blocks


def _entry_line(entry: Entry) -> Mrkdwn:
    line = md(STATE_LINES[entry.state], name=entry.name)
    if entry.state == EDITED and entry.row is not None:
        line += md(" (applied {}, file {})", code(entry.row.hash[:12]), code(entry.file_hash[:12]))
    return line


MAX_APPLIED_NAMES = 8
ALL_APPLIED = Mrkdwn(":white_check_mark: every migration in the folder is applied, none edited, no unknown rows")


def _applied_line(stage: StageMigrations) -> Mrkdwn | None:
    """The applied migrations by name (the newest few when there are many)."""
    applied = [e.name for e in stage.entries if e.state == APPLIED]
    if not applied:
        return None
    shown = applied[-MAX_APPLIED_NAMES:]
    names = Mrkdwn(", ").join(code(n) for n in shown)
    earlier = len(applied) - len(shown)
    more = md(" (and {:,} earlier)", earlier) if earlier else Mrkdwn("")
    return md(":white_check_mark: {} applied: {}{}", len(applied), names, more)


def _stage_detail(report: MigrationsReport, stage: StageMigrations) -> list[Mrkdwn]:
    lines = [_entry_line(e) for e in stage.entries if e.state in STATE_LINES]
    if stage.reruns is not None:
        lines.insert(0, md(RERUNS, stage.reruns.id, len(stage.entries)))
    lines += [
        md(
            ":repeat: {} recorded {} times (rows {}): it ran more than once, as two migrates started together do "
            "(Drizzle takes no lock)",
            code(e.name),
            1 + len(e.repeats),
            ", ".join(str(r.id) for r in (e.row, *e.repeats) if r is not None),
        )
        for e in stage.entries
        if e.repeats
    ]
    lines += [
        md(":question: unknown row {}: hash {}", row.id, code(row.hash[:12]))
        + (md(" name {}", code(row.name)) if row.name else Mrkdwn(""))
        + md(" (created_at {}): no migration in the folder matches it", _generated(row.created_at))
        for row in stage.unknown
    ]
    return lines


def _stage_file_lines(report: MigrationsReport, stage: StageMigrations) -> list[str]:
    """Every migration of the folder with its state on the stage, then the rows that match no file."""
    lines = [as_plain(_stage_summary(report, stage)), ""]
    width = max((len(e.name) for e in stage.entries), default=9)
    lines.append(f"{'migration'.ljust(width)}  {'state'.ljust(9)}  generated         row hash")
    for e in stage.entries:
        row = f"{e.row.id:>5} {e.row.hash[:16]}" if e.row else ""
        lines.append(f"{e.name.ljust(width)}  {STATE_WORDS[e.state].ljust(9)}  {_generated(e.when)}  {row}".rstrip())
    for row in stage.unknown:
        named = f" name {row.name}" if row.name else ""
        lines.append(f"unknown row {row.id}: hash {row.hash}{named} (created_at {_generated(row.created_at)})")
    return lines


@renders("migrations")
def render_migrations(request: CommandRequest, report: MigrationsReport) -> Message:
    layout = "journal" if report.layout == "journal" else "one folder each"
    folder = (
        f"{plural(len(report.local), 'migration')} in MIGRATIONS_DIR ({layout})"
        if report.layout
        else "no MIGRATIONS_DIR: the stages' tables are compared with each other"
    )
    if request.stage is not None:
        return _render_stage(report, request.stage.name, folder)
    ordered = sorted(report.stages, key=lambda s: (s.protected, s.stage == report.reference, s.stage))
    report.stages = ordered
    summary = [md("• {}", _stage_summary(report, s)) for s in ordered]
    matrix = _matrix(report)
    blocks = [section(Mrkdwn(":card_file_box: Migrations across stages")), *lines_sections(summary)]
    files: list[Attachment] = []
    if matrix:
        shown = matrix[: MAX_MATRIX_ROWS + 1]
        blocks += _code_sections(shown)
        if len(matrix) > len(shown):
            file = text_file(
                filename("migrations", *(s.stage for s in ordered), ext="txt"),
                "Migrations across stages",
                ["Migrations across stages", *summary, "", *matrix],
            )
            files.append(file)
            blocks.append(
                section(
                    md(
                        "_… and {:,} more: all {} are in the attached {}_",
                        len(matrix) - len(shown),
                        plural(len(matrix) - 1, "row"),
                        code(file.filename),
                    )
                )
            )
    elif any(s.readable for s in ordered):
        blocks.append(section(Mrkdwn(":white_check_mark: every stage has the same migrations applied")))
    blocks.append(context(folder))
    return attach(message("migrations across stages", blocks), *files)


def _render_stage(report: MigrationsReport, name: str, folder: str) -> Message:
    stage = report.stage(name)
    assert stage is not None
    blocks = [section(md(":card_file_box: Migrations on {}", _stage_summary(report, stage))), context(folder)]
    detail = _stage_detail(report, stage)
    files: list[Attachment] = []
    if stage.readable and report.local:
        if detail:
            applied = _applied_line(stage)
            detail += [applied] if applied is not None else []
        else:
            detail = [ALL_APPLIED]
    if len(detail) > MAX_STAGE_LINES:
        file = text_file(
            filename("migrations", stage.stage, ext="txt"),
            f"Migrations on {stage.stage}",
            _stage_file_lines(report, stage),
        )
        files.append(file)
        left = len(detail) - MAX_STAGE_LINES
        detail = [
            *detail[:MAX_STAGE_LINES],
            md("_… and {:,} more: every migration's state is in the attached {}_", left, code(file.filename)),
        ]
    blocks[1:1] = lines_sections(detail)
    return attach(message(f"migrations on {stage.stage}", blocks), *files)
