"""How every command reply looks: one renderer per verb, keyed by verb name."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from bot.audit import AuditRow
from bot.commands import overview
from bot.config import SLACK_ID_RE
from bot.errors import UserFacingError
from bot.operations import AuditResult, HelpResult
from bot.platform.servers import Page, ServerStats, ServerSummary, ServerUser
from bot.service import CommandOutcome, CommandRequest
from handlers.blocks import (
    Message,
    actions,
    button,
    code,
    context,
    escape,
    fields,
    header,
    lines_sections,
    message,
    section,
    when,
)

PAGE_ACTION = "page_more"

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


def error(exc: UserFacingError) -> Message:
    blocks = [section(f":warning: {exc.message}")]
    if exc.usage:
        blocks.append(context(f"Usage:\n{exc.usage}" if "\n" in exc.usage else f"Usage: `{exc.usage}`"))
    return message(exc.message, blocks, ephemeral=True)


def outcome(result: CommandOutcome) -> Message:
    if result.error is not None:
        return error(result.error)
    assert result.request is not None
    return RENDERERS[result.request.verb](result.request, result.result)


def _stage_tag(request: CommandRequest) -> str:
    if request.stage is None:
        return ""
    lock = " :lock:" if request.stage.protected else ""
    return f"stage *{escape(request.stage.name)}*{lock}"


def _more_button(request: CommandRequest, cursor: str | None, on_page: int, total: int) -> list[dict[str, Any]]:
    if not cursor:
        return []
    seen = request.seen + on_page
    value = {"t": request.parsed.canonical(), "c": cursor, "n": seen}
    return [actions(button(f"More ({total - seen} left)" if total > seen else "More", PAGE_ACTION, value))]


def _paged(request: CommandRequest, page: Page[Any], title: str, lines: list[str], text: str) -> Message:
    """A page of a list: title with position, the lines, and More while rows remain."""
    title += _continued(request, len(page.items), page.total)
    more = _more_button(request, page.next_cursor, len(page.items), page.total)
    return message(text, [section(title), *lines_sections(lines), *more])


def _continued(request: CommandRequest, on_page: int, total: int) -> str:
    if not request.cursor:
        return ""
    return f" ({request.seen + 1} to {request.seen + on_page} of {total:,})"


@renders("help")
def render_help(request: CommandRequest, result: HelpResult) -> Message:
    if result.topic is not None:
        verb = result.topic
        lines = [f"`{verb.usage()}`", verb.summary]
        lines += [f"• `{flag.usage()}`: {flag.help}" for flag in verb.flags]
        if verb.stage != "none":
            lines.append("• `--stage <stage>`: which database (or run it in a channel bound to a stage)")
        return message(verb.summary, [section("\n".join(lines))], ephemeral=True)
    blocks = [header("mcp-ops commands"), *lines_sections(overview().splitlines())]
    blocks.append(
        context(
            "Every command that touches a database names its stage with `--stage`, "
            "unless the channel is bound to one. `/mcp help <command>` shows one command."
        )
    )
    return message("mcp-ops commands", blocks, ephemeral=True)


def _server_fields(server: ServerSummary) -> list[tuple[str, str]]:
    org = escape(server.organization_name or "?")
    return [
        ("Name", escape(server.name)),
        ("Slug", code(server.slug)),
        ("ID", code(server.id)),
        ("Organization", f"{org} ({code(server.organization_id)})"),
        ("Product", escape(server.product)),
        ("Created", when(server.created_at)),
    ]


@renders("find")
def render_find(request: CommandRequest, server: ServerSummary) -> Message:
    blocks = [section(f":mag: {code(server.slug)} on {_stage_tag(request)}"), fields(_server_fields(server))]
    return message(f"{server.slug}: {server.name}", blocks)


@renders("list")
def render_list(request: CommandRequest, page: Page[ServerSummary]) -> Message:
    org = request.parsed.flags.get("org")
    scope = f" in organization {code(org)}" if org else ""
    title = f":card_index: {page.total} servers{scope} on {_stage_tag(request)}, newest first"
    lines = [
        f"• {code(s.slug)}: {escape(s.name)} · {escape(s.organization_name or s.organization_id)}"
        f" · {when(s.created_at)}"
        for s in page.items
    ]
    return _paged(request, page, title, lines or ["_no servers_"], f"{page.total} servers")


@renders("stats")
def render_stats(request: CommandRequest, stats: ServerStats) -> Message:
    top = "\n".join(f"{i}. {code(t.tool_name)}: {t.calls:,}" for i, t in enumerate(stats.top_tools, 1))
    blocks = [
        section(f":bar_chart: {code(stats.server.slug)} on {_stage_tag(request)}, last {stats.days} days"),
        fields(
            [
                ("Tool calls", f"{stats.tool_calls:,}"),
                ("Sessions", f"{stats.sessions:,}"),
                ("Users", f"{stats.users:,}"),
                ("Last activity", when(stats.last_activity)),
            ]
        ),
        section(f"*Top tools*\n{top}" if top else "*Top tools*\n_no tool calls in this window_"),
        context(
            f"Since {when(stats.since)}. Sessions and users are counted from sessions, tool calls from "
            "tool calls: no join multiplies them."
        ),
    ]
    text = f"{stats.server.slug}: {stats.tool_calls} tool calls, {stats.sessions} sessions, {stats.users} users"
    return message(text, blocks)


@renders("users")
def render_users(request: CommandRequest, page: Page[ServerUser]) -> Message:
    slug = request.parsed.args["slug"]
    title = f":busts_in_silhouette: {page.total:,} users of {code(slug)} on {_stage_tag(request)}"
    lines = [
        f"• {code(u.id)} · {escape(u.masked_email)} · {code(u.distinct_id or '-')} · first seen {when(u.first_seen_at)}"
        for u in page.items
    ]
    return _paged(request, page, title, lines or ["_no users_"], f"{page.total} users of {slug}")


def _actor(actor: str) -> str:
    # Scheduled work (alerts) is audited as the bot itself, which is no Slack user to mention.
    return f"<@{actor}>" if SLACK_ID_RE.match(actor) else f"*{escape(actor)}*"


def audit_entry_line(row: AuditRow) -> str:
    where = f" on {escape(row.stage)}" if row.stage else ""
    return f"• {when(row.at)} {_actor(row.actor)} {code((row.command + ' ' + row.args).strip())}{where}: {row.outcome}"


@renders("audit")
def render_audit(request: CommandRequest, result: AuditResult) -> Message:
    where = f" on stage *{escape(result.stage)}*" if result.stage else ""
    lines = [audit_entry_line(r) for r in result.rows] or ["_no entries_"]
    return message(
        "audit log", [section(f":scroll: Latest audit entries{where}"), *lines_sections(lines)], ephemeral=True
    )


# Modules with more @renders functions, imported once this module's names exist.
RENDER_MODULES = ("handlers.render_health", "handlers.render_schema")
for _module in RENDER_MODULES:
    importlib.import_module(_module)
