"""Replies of the health verbs: `/mcp health`, `/mcp slow-queries`, `/mcp alerts`."""

from __future__ import annotations

from bot.health.alerts import AlertView
from bot.health.checks import CheckReport, duration
from bot.health.explain import ExplainResult
from bot.health.messages import EXPLAIN_ACTION, explain_command
from bot.health.monitor import HealthSummary
from bot.health.operations import AlertsResult, SlowQueriesResult
from bot.service import CommandRequest
from handlers.blocks import Message, button, code, context, escape, lines_sections, message, section, when
from handlers.render import _stage_tag, renders

SEVERITY_ICONS = {"critical": ":red_circle:", "warning": ":large_orange_circle:", "info": ":large_blue_circle:"}
STATUS_ICONS = {"ok": ":white_check_mark:", "unavailable": ":grey_question:", "error": ":warning:"}
MAX_FINDING_LINES = 20
EXPLAIN_BUTTONS = 44  # a section per entry, within Slack's 50 blocks a message


def _icon(report: CheckReport) -> str:
    if report.status != "findings":
        return STATUS_ICONS[report.status]
    worst = min(report.findings, key=lambda f: ["critical", "warning", "info"].index(f.severity))
    return SEVERITY_ICONS[worst.severity]


@renders("health")
def render_health(request: CommandRequest, summary: HealthSummary) -> Message:
    result = summary.round
    title = f":stethoscope: Health of {_stage_tag(request)} at {when(summary.checked_at)}"
    if not result.reachable:
        blocks = [section(title), section(f":red_circle: {escape(result.reason or 'unreachable')}")]
        return message(f"{summary.stage}: unreachable", blocks)
    lines = [f"{_icon(r)} *{escape(r.label)}*: {escape(r.summary)}" for r in result.reports]
    findings = result.findings
    finding_lines = [
        f"{SEVERITY_ICONS.get(f.severity, ':warning:')} {escape(f.title)}" for f in findings[:MAX_FINDING_LINES]
    ]
    if len(findings) > MAX_FINDING_LINES:
        finding_lines.append(f"_… and {len(findings) - MAX_FINDING_LINES} more_")
    # The round trip of `SELECT 1` alone is the "Round trip" line; connecting costs several.
    blocks = [section(f"{title}\nConnected in {result.connect_ms or 0:,.0f} ms."), *lines_sections(lines)]
    if finding_lines:
        blocks += [section("*Findings*"), *lines_sections(finding_lines)]
    alerts = summary.open_alerts
    who = (
        "the scheduled checks raise alerts"
        if summary.scheduled
        else "the scheduled checks are off (HEALTH_CHECKS=off), so nothing raises alerts"
    )
    blocks.append(
        context(
            f"{len(alerts)} open alert{'s' if len(alerts) != 1 else ''} on this stage (`/mcp alerts --stage "
            f"{escape(summary.stage)}`). This run is read-only and posts nothing; {who}."
        )
    )
    text = f"{summary.stage}: {len(findings)} findings" if findings else f"{summary.stage}: all checks passed"
    return message(text, blocks)


@renders("slow-queries")
def render_slow_queries(request: CommandRequest, result: SlowQueriesResult) -> Message:
    if result.interval_start is None or result.interval_end is None:
        blocks = [section(f":snail: Slow queries on {_stage_tag(request)}"), section(escape(result.note or ""))]
        return message("no interval measured yet", blocks)
    span = duration((result.interval_end - result.interval_start).total_seconds())
    title = (
        f":snail: Busiest queries on {_stage_tag(request)} from {when(result.interval_start)} "
        f"to {when(result.interval_end)} ({span}), by total time"
    )
    lines = [
        f"{i}. {':warning: *slow* · ' if r.slow else ''}mean *{r.mean_ms:,.1f} ms* · {r.calls:,} "
        f"call{'s' if r.calls != 1 else ''} · "
        f"{r.total_ms:,.0f} ms total · queryid {r.queryid}\n{code(r.text)}"
        for i, r in enumerate(result.rows, 1)
    ] or ["_no statement ran in this interval_"]
    # Each entry carries Explain (its generic plan); past EXPLAIN_BUTTONS the rest are plain lines.
    explained = [
        section(line, accessory=button("Explain", EXPLAIN_ACTION, {"t": explain_command(result.stage, r.queryid)}))
        for line, r in zip(lines[:EXPLAIN_BUTTONS], result.rows, strict=False)
    ]
    blocks = [section(title), *explained, *lines_sections(lines[len(explained) :])]
    if result.note:
        blocks.append(section(f":grey_question: {escape(result.note)}"))
    taken = (
        f"taken every {duration(result.snapshot_every_s)}"
        if result.snapshot_every_s
        else "taken by `/mcp health`, the scheduled checks being off"
    )
    blocks.append(
        context(
            f"Counted between two pg_stat_statements snapshots ({taken}), "
            f"not since the last reset. Slow means a mean over {result.threshold_ms:,} ms with at least "
            f"{result.min_calls} calls. Showing {len(result.rows)} of {result.statements}."
        )
    )
    slow = sum(r.slow for r in result.rows)
    return message(f"{len(result.rows)} busiest queries, {slow} slow", blocks)


def alert_line(alert: AlertView) -> str:
    runs = f"{alert.consecutive} run{'s' if alert.consecutive != 1 else ''}"
    return (
        f"{SEVERITY_ICONS.get(alert.severity, ':warning:')} *{escape(alert.stage)}* {escape(alert.title)} · "
        f"{code(alert.check)} · firing since {when(alert.fired_at)} · seen in {runs} in a row"
    )


@renders("alerts")
def render_alerts(request: CommandRequest, result: AlertsResult) -> Message:
    where = f" on stage *{escape(result.stage)}*" if result.stage else ""
    count = len(result.alerts)
    lines = [alert_line(a) for a in result.alerts] or ["_nothing is firing_ :white_check_mark:"]
    title = f":rotating_light: {count} open alert{'s' if count != 1 else ''}{where}"
    return message(title.split(" ", 1)[1], [section(title), *lines_sections(lines)])


@renders("explain")
def render_explain(request: CommandRequest, result: ExplainResult) -> Message:
    title = (
        f":mag: Generic plan of queryid {result.queryid} on {_stage_tag(request)}: planned, never run "
        f"({escape(result.method)}, PostgreSQL {escape(result.server_version)})"
    )
    first = [
        f"• Sequential scan of *{escape(s.table)}* (~{s.table_rows:,} rows in the table, ~{s.plan_rows:,} estimated"
        + (f" to match {code(s.filter)}" if s.filter else " read")
        + ")"
        for s in result.seq_scans
    ] or ["• No sequential scan of a table over 10,000 rows."]
    if result.costliest is not None:
        c = result.costliest
        on = f" on {escape(c.on)}" if c.on else ""
        first.append(f"• Costliest step: *{escape(c.node)}*{on}, {c.share:.0f}% of the plan's cost ({c.cost:,.1f})")
    first += [
        f"• Foreign key `{escape(h.constraint)}` on {escape(h.table)} ({escape(h.columns)}) has no index and this plan "
        f"filters on it: {code(h.create)}"
        for h in result.hints
    ]
    blocks = [
        section(title),
        section(code(result.query)),
        section(f"*Look at first* (estimated total cost {result.total_cost:,.1f}, ~{result.plan_rows:,} rows)"),
        *lines_sections(first),
        context("Costs and rows are the planner's estimates for any parameter values, in its own units."),
    ]
    return message(f"plan of queryid {result.queryid}", blocks)
