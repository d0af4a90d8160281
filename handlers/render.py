"""How every command reply looks: one renderer per verb, keyed by verb name."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from bot.audit import AuditRow
from bot.commands import overview
from bot.errors import UserFacingError
from bot.operations import AuditResult, HelpResult
from bot.platform.servers import Page, ServerStats, ServerSummary, ServerUser
from bot.service import CommandOutcome, CommandRequest
from bot.slacktext.files import Attachment, attach, csv_file, filename
from bot.slacktext.long import head
from handlers.blocks import (
    Message,
    Mrkdwn,
    actions,
    button,
    code,
    context,
    fields,
    header,
    lines_sections,
    md,
    mention,
    message,
    plural,
    prose,
    section,
    view,
    when,
)

PAGE_ACTION = "page_more"
LIST_LINES = 25  # lines of a list in one message; a longer page goes along as a file
NARROW = code("--limit") + " or " + code("--stage")

Renderer = Callable[[CommandRequest, Any], Message]
RENDERERS: dict[str, Renderer] = {}
# Verbs whose work reports while it runs: a message is posted, then edited with each state.
PROGRESS_RENDERERS: dict[str, Renderer] = {}


def renders(verb: str) -> Callable[[Renderer], Renderer]:
    def register(func: Renderer) -> Renderer:
        RENDERERS[verb] = func
        return func

    return register


def renders_progress(verb: str) -> Callable[[Renderer], Renderer]:
    def register(func: Renderer) -> Renderer:
        PROGRESS_RENDERERS[verb] = func
        return func

    return register


def usage_text(usage: str) -> Mrkdwn:
    """One usage line as code, or the overview's lines (already `code: summary`); `<slug>` shows as typed."""
    if "\n" in usage:
        return md("Usage:\n{}", prose(usage))
    return md("Usage: {}", code(usage))


def error(exc: UserFacingError) -> Message:
    blocks = [section(md(":warning: {}", prose(exc.message)))]
    if exc.usage:
        blocks.append(context(usage_text(exc.usage)))
    return message(prose(exc.message), blocks, ephemeral=True)


def notice_modal(title: str, text: str) -> dict[str, Any]:
    """A form with one line and a Close button: an answer for someone where no channel is at hand (a shortcut)."""
    return view(
        "modal",
        [section(md(":warning: {}", prose(text)))],
        title={"type": "plain_text", "text": title[:24]},
        close={"type": "plain_text", "text": "Close"},
    )


def outcome(result: CommandOutcome) -> Message:
    if result.error is not None:
        return error(result.error)
    assert result.request is not None
    return RENDERERS[result.request.verb](result.request, result.result)


def _stage_tag(request: CommandRequest) -> Mrkdwn:
    if request.stage is None:
        return Mrkdwn("")
    lock = Mrkdwn(" :lock:" if request.stage.protected else "")
    return md("stage *{}*{}", request.stage.name, lock)


def _more_button(request: CommandRequest, cursor: str | None, on_page: int, total: int) -> list[dict[str, Any]]:
    if not cursor:
        return []
    seen = request.seen + on_page
    value = {"t": request.parsed.canonical(), "c": cursor, "n": seen}
    return [actions(button(f"More ({total - seen:,} left)" if total > seen else "More", PAGE_ACTION, value))]


def _paged(
    request: CommandRequest, page: Page[Any], title: Mrkdwn, lines: list[Mrkdwn], text: str, file: Attachment
) -> Message:
    """A page of a list: title with position, the lines that fit, and More while rows remain.

    A page longer than the message shows keeps its head in the message and all of it in `file`.
    """
    title += _continued(request, len(page.items), page.total)
    more = _more_button(request, page.next_cursor, len(page.items), page.total)

    def rest(left: int) -> Mrkdwn:
        return md("_… and {:,} more on this page: all of them are in the attached {}_", left, code(file.filename))

    shown, left = head(lines, limit=LIST_LINES, rest=rest)
    reply = message(text, [section(title), *lines_sections(shown), *more])
    return attach(reply, file) if left else reply


def _continued(request: CommandRequest, on_page: int, total: int) -> Mrkdwn:
    if not request.cursor:
        return Mrkdwn("")
    return md(" ({:,} to {:,} of {:,})", request.seen + 1, request.seen + on_page, total)


@renders("help")
def render_help(request: CommandRequest, result: HelpResult) -> Message:
    if result.topic is not None:
        verb = result.topic
        lines = [code(verb.usage()), verb.summary]
        lines += [md("• {}: {}", code(flag.usage()), flag.help) for flag in verb.flags]
        if verb.stage != "none":
            lines.append(md("• {}: which database (or run it in a channel bound to a stage)", code("--stage <stage>")))
        return message(verb.summary, [section(Mrkdwn("\n").join(lines))], ephemeral=True)
    blocks = [header("mcp-ops commands"), *lines_sections([prose(line) for line in overview().splitlines()])]
    blocks.append(
        context(
            md(
                "Every command that touches a database names its stage with {}, unless the channel is bound "
                "to one. {} shows one command.",
                code("--stage"),
                code("/mcp help <command>"),
            )
        )
    )
    return message("mcp-ops commands", blocks, ephemeral=True)


def _server_fields(server: ServerSummary) -> list[tuple[str, str]]:
    return [
        ("Name", server.name),
        ("Slug", code(server.slug)),
        ("ID", code(server.id)),
        ("Organization", md("{} ({})", server.organization_name or "?", code(server.organization_id))),
        ("Product", server.product),
        ("Created", when(server.created_at)),
    ]


@renders("find")
def render_find(request: CommandRequest, server: ServerSummary) -> Message:
    blocks = [section(md(":mag: {} on {}", code(server.slug), _stage_tag(request))), fields(_server_fields(server))]
    return message(f"{server.slug}: {server.name}", blocks)


@renders("list")
def render_list(request: CommandRequest, page: Page[ServerSummary]) -> Message:
    org = request.parsed.flags.get("org")
    scope = md(" in organization {}", code(org)) if org else Mrkdwn("")
    title = md(":card_index: {}{} on {}, newest first", plural(page.total, "server"), scope, _stage_tag(request))
    lines = [
        md("• {}: {} · {} · {}", code(s.slug), s.name, s.organization_name or s.organization_id, when(s.created_at))
        for s in page.items
    ]
    stage = request.stage.name if request.stage else ""
    file = csv_file(
        filename("servers", stage, org or "", request.seen + 1 if request.cursor else "", ext="csv"),
        f"Servers on {stage}",
        ["slug", "name", "organization_id", "organization", "product", "id", "created_at"],
        [
            (s.slug, s.name, s.organization_id, s.organization_name, s.product, s.id, when(s.created_at))
            for s in page.items
        ],
    )
    return _paged(request, page, title, lines or [Mrkdwn("_no servers_")], plural(page.total, "server"), file)


@renders("stats")
def render_stats(request: CommandRequest, stats: ServerStats) -> Message:
    top = Mrkdwn("\n").join(md("{}. {}: {:,}", i, code(t.tool_name), t.calls) for i, t in enumerate(stats.top_tools, 1))
    window = plural(stats.days, "day") if stats.days != 1 else "day"
    blocks = [
        section(md(":bar_chart: {} on {}, last {}", code(stats.server.slug), _stage_tag(request), window)),
        fields(
            [
                ("Tool calls", f"{stats.tool_calls:,}"),
                ("Sessions", f"{stats.sessions:,}"),
                ("Users", f"{stats.users:,}"),
                ("Last activity", when(stats.last_activity)),
            ]
        ),
        section(md("*Top tools*\n{}", top) if top else Mrkdwn("*Top tools*\n_no tool calls in this window_")),
        context(
            md(
                "Since {}. Sessions and users are counted from sessions, tool calls from tool calls: "
                "no join multiplies them.",
                when(stats.since),
            )
        ),
    ]
    text = (
        f"{stats.server.slug}: {plural(stats.tool_calls, 'tool call')}, {plural(stats.sessions, 'session')}, "
        f"{plural(stats.users, 'user')}"
    )
    return message(text, blocks)


@renders("users")
def render_users(request: CommandRequest, page: Page[ServerUser]) -> Message:
    slug = request.parsed.args["slug"]
    title = md(":busts_in_silhouette: {} of {} on {}", plural(page.total, "user"), code(slug), _stage_tag(request))
    lines = [
        md(
            "• {} · {} · {} · first seen {}",
            code(u.id),
            u.masked_email,
            code(u.distinct_id or "-"),
            when(u.first_seen_at),
        )
        for u in page.items
    ]
    stage = request.stage.name if request.stage else ""
    file = csv_file(
        filename("users", stage, slug, request.seen + 1 if request.cursor else "", ext="csv"),
        f"Users of {slug} on {stage}",
        ["id", "email", "distinct_id", "first_seen_at"],
        [(u.id, u.masked_email, u.distinct_id, when(u.first_seen_at)) for u in page.items],
    )
    text = f"{plural(page.total, 'user')} of {slug}"
    return _paged(request, page, title, lines or [Mrkdwn("_no users_")], text, file)


def audit_entry_line(row: AuditRow) -> Mrkdwn:
    # Scheduled work (alerts) is audited as the bot itself, which is no Slack user to mention: shown in bold.
    where = md(" on {}", row.stage) if row.stage else Mrkdwn("")
    command = code((row.command + " " + row.args).strip())
    return md("• {} {} {}{}: {}", when(row.at), mention(row.actor), command, where, row.outcome)


@renders("audit")
def render_audit(request: CommandRequest, result: AuditResult) -> Message:
    where = md(" on stage *{}*", result.stage) if result.stage else Mrkdwn("")
    lines = [audit_entry_line(r) for r in result.rows] or [Mrkdwn("_no entries_")]
    # An ephemeral reply shares no file: what does not fit is counted, with how to see it.
    shown, _ = head(lines, limit=len(lines), rest=lambda n: md("_… and {:,} more: narrow it with {}_", n, NARROW))
    blocks = [section(md(":scroll: Latest audit entries{}", where)), *lines_sections(shown)]
    return message("audit log", blocks, ephemeral=True)


# Modules with more @renders functions, imported once this module's names exist.
RENDER_MODULES = ("handlers.render_health", "handlers.render_schema")
for _module in RENDER_MODULES:
    importlib.import_module(_module)
