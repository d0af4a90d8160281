"""Replies of the health verbs: `/mcp health`, `/mcp slow-queries`, `/mcp alerts`."""

from __future__ import annotations

from bot.health.alerts import AlertView
from bot.health.checks import CheckReport, duration
from bot.health.explain import ExplainResult
from bot.health.messages import explain_command
from bot.health.monitor import HealthSummary
from bot.health.operations import AlertsResult, SlowQueriesResult
from bot.pii import scrub
from bot.service import CommandRequest
from bot.slacktext.files import Attachment, attach, filename, text_file
from bot.slacktext.long import head
from handlers.blocks import (
    Message,
    Mrkdwn,
    button,
    code,
    context,
    lines_sections,
    md,
    message,
    plural,
    prose,
    section,
    when,
)
from handlers.render import _stage_tag, renders
from handlers.render_alerts import EXPLAIN_ACTION, SEVERITY_ICONS

STATUS_ICONS = {"ok": ":white_check_mark:", "unavailable": ":grey_question:", "error": ":warning:"}
MAX_FINDING_LINES = 20
MAX_ALERT_LINES = 25
EXPLAIN_BUTTONS = 44  # a section per entry, within Slack's 50 blocks a message


def _icon(report: CheckReport) -> str:
    if report.status != "findings":
        return STATUS_ICONS[report.status]
    worst = min(report.findings, key=lambda f: ["critical", "warning", "info"].index(f.severity))
    return SEVERITY_ICONS[worst.severity]


@renders("health")
def render_health(request: CommandRequest, summary: HealthSummary) -> Message:
    result = summary.round
    title = md(":stethoscope: Health of {} at {}", _stage_tag(request), when(summary.checked_at))
    if not result.reachable:
        blocks = [section(title), section(md(":red_circle: {}", prose(result.reason or "unreachable")))]
        return message(f"{summary.stage}: unreachable", blocks)
    lines = [md("{} *{}*: {}", Mrkdwn(_icon(r)), r.label, prose(r.summary)) for r in result.reports]
    findings = result.findings
    file = _health_file(summary)
    finding_lines, left = head(
        [md("{} {}", Mrkdwn(SEVERITY_ICONS.get(f.severity, ":warning:")), prose(f.title)) for f in findings],
        limit=MAX_FINDING_LINES,
        rest=lambda n: md("_… and {:,} more: the attached {} has every finding in full_", n, code(file.filename)),
    )
    # The round trip of `SELECT 1` alone is the "Round trip" line; connecting costs several.
    blocks = [section(md("{}\nConnected in {:,.0f} ms.", title, result.connect_ms or 0)), *lines_sections(lines)]
    if finding_lines:
        blocks += [section(Mrkdwn("*Findings*")), *lines_sections(finding_lines)]
    alerts = summary.open_alerts
    who = (
        "the scheduled checks raise alerts"
        if summary.scheduled
        else "the scheduled checks are off (HEALTH_CHECKS=off), so nothing raises alerts"
    )
    blocks.append(
        context(
            md(
                "{} on this stage ({}). This run is read-only and posts nothing; {}.",
                plural(len(alerts), "open alert"),
                code(f"/mcp alerts --stage {summary.stage}"),
                who,
            )
        )
    )
    text = f"{summary.stage}: {plural(len(findings), 'finding')}" if findings else f"{summary.stage}: all checks passed"
    reply = message(text, blocks)
    return attach(reply, file) if left else reply


def _health_file(summary: HealthSummary) -> Attachment:
    """Every check's line, then every finding with its detail and advice."""
    body = [f"Health of {summary.stage} at {when(summary.checked_at)}", ""]
    body += [f"{r.label} ({r.status}): {r.summary}" for r in summary.round.reports]
    for finding in summary.round.findings:
        body += ["", f"[{finding.severity}] {finding.title}", *(t for t in (finding.detail, finding.advice) if t)]
    return text_file(filename("health", summary.stage, ext="txt"), f"Health of {summary.stage}", body)


@renders("slow-queries")
def render_slow_queries(request: CommandRequest, result: SlowQueriesResult) -> Message:
    if result.interval_start is None or result.interval_end is None:
        blocks = [section(md(":snail: Slow queries on {}", _stage_tag(request))), section(prose(result.note or ""))]
        return message("no interval measured yet", blocks)
    span = duration((result.interval_end - result.interval_start).total_seconds())
    title = md(
        ":snail: Busiest queries on {} from {} to {} ({}), by total time",
        _stage_tag(request),
        when(result.interval_start),
        when(result.interval_end),
        span,
    )
    lines = [
        md(
            "{}. {}mean *{:,.1f} ms* · {} · {:,.0f} ms total · queryid {}\n{}",
            i,
            Mrkdwn(":warning: *slow* · " if r.slow else ""),
            r.mean_ms,
            plural(r.calls, "call"),
            r.total_ms,
            r.queryid,
            code(r.text),
        )
        for i, r in enumerate(result.rows, 1)
    ] or [Mrkdwn("_no statement ran in this interval_")]
    # Each entry shown carries Explain (its generic plan); what does not fit is in the attached file.
    file = text_file(
        filename("slow-queries", result.stage, ext="txt"), f"Busiest queries on {result.stage}", [title, *lines]
    )
    more = md("the attached {} has them all", code(file.filename))
    shown, left = head(lines, limit=EXPLAIN_BUTTONS, rest=lambda n: md("_… and {:,} more: {}_", n, more))
    explained = [
        section(line, accessory=button("Explain", EXPLAIN_ACTION, {"t": explain_command(result.stage, r.queryid)}))
        for line, r in zip(shown, result.rows, strict=False)
    ]
    blocks = [section(title), *explained, *lines_sections(shown[len(explained) :])]
    if result.note:
        blocks.append(section(md(":grey_question: {}", prose(result.note))))
    taken = (
        md("taken every {}", duration(result.snapshot_every_s))
        if result.snapshot_every_s
        else md("taken by {}, the scheduled checks being off", code("/mcp health"))
    )
    blocks.append(
        context(
            md(
                "Counted between two pg_stat_statements snapshots ({}), not since the last reset. Slow means a "
                "mean over {:,} ms with at least {}. Showing {:,} of {:,}.",
                taken,
                result.threshold_ms,
                plural(result.min_calls, "call"),
                len(result.rows),
                result.statements,
            )
        )
    )
    slow = sum(r.slow for r in result.rows)
    reply = message(f"{plural(len(result.rows), 'busiest query', 'busiest queries')}, {slow} slow", blocks)
    return attach(reply, file) if left else reply


def alert_line(alert: AlertView) -> Mrkdwn:
    return md(
        "{} *{}* {} · {} · firing since {} · {}",
        Mrkdwn(SEVERITY_ICONS.get(alert.severity, ":warning:")),
        alert.stage,
        prose(alert.title),
        code(alert.check),
        when(alert.fired_at),
        "seen in the last run" if alert.consecutive == 1 else f"seen in the last {alert.consecutive:,} runs",
    )


@renders("alerts")
def render_alerts(request: CommandRequest, result: AlertsResult) -> Message:
    where = md(" on stage *{}*", result.stage) if result.stage else Mrkdwn("")
    count = plural(len(result.alerts), "open alert")
    lines = [alert_line(a) for a in result.alerts] or [Mrkdwn("_nothing is firing_ :white_check_mark:")]
    file = text_file(filename("alerts", result.stage or "all", ext="txt"), f"Open alerts ({count})", lines)
    more = md("the attached {} has them all", code(file.filename))
    shown, left = head(lines, limit=MAX_ALERT_LINES, rest=lambda n: md("_… and {:,} more: {}_", n, more))
    blocks = [section(md(":rotating_light: {}{}", count, where)), *lines_sections(shown)]
    reply = message(md("{}{}", count, where), blocks)
    return attach(reply, file) if left else reply


@renders("explain")
def render_explain(request: CommandRequest, result: ExplainResult) -> Message:
    title = md(
        ":mag: Generic plan of queryid {} on {}: planned, never run ({}, PostgreSQL {})",
        result.queryid,
        _stage_tag(request),
        result.method,
        result.server_version,
    )
    first = [
        md(
            "• Sequential scan of *{}* (~{} in the table, ~{:,} estimated{})",
            s.table,
            plural(s.table_rows, "row"),
            s.plan_rows,
            md(" to match {}", code(s.filter)) if s.filter else Mrkdwn(" read"),
        )
        for s in result.seq_scans
    ] or [Mrkdwn("• No sequential scan of a table over 10,000 rows.")]
    if result.costliest is not None:
        c = result.costliest
        on = md(" on {}", c.on) if c.on else Mrkdwn("")
        first.append(md("• Costliest step: *{}*{}, {:.0f}% of the plan's cost ({:,.1f})", c.node, on, c.share, c.cost))
    first += [
        md(
            "• Foreign key {} on {} ({}) has no index and this plan filters on it: {}",
            code(h.constraint),
            h.table,
            h.columns,
            code(h.create),
        )
        for h in result.hints
    ]
    blocks = [
        section(title),
        section(code(result.query)),
        section(
            md(
                "*Look at first* (estimated total cost {:,.1f}, ~{})",
                result.total_cost,
                plural(result.plan_rows, "row"),
            )
        ),
        *lines_sections(first),
        context(
            "Costs and rows are the planner's estimates for any parameter values, in its own units. The whole plan "
            "(EXPLAIN VERBOSE, FORMAT JSON) is attached."
        ),
    ]
    plan = Attachment(
        filename("explain", result.stage, f"queryid{result.queryid}", ext="json"),  # keeps the sign
        f"Generic plan of queryid {result.queryid} on {result.stage}",
        scrub(result.plan_json()),
    )
    return attach(message(f"plan of queryid {result.queryid}", blocks), plan)
