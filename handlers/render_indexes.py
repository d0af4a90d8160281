"""`/mcp indexes` and the create-index / drop-index requests: how they look in Slack."""

from __future__ import annotations

from bot.indexes.build import BuildProgress
from bot.indexes.listing import IndexList
from bot.requests.messages import RequestView
from bot.requests.store import Request
from bot.service import CommandRequest
from bot.slacktext.long import head_items, in_turn
from handlers.blocks import (
    Block,
    Message,
    Mrkdwn,
    actions,
    code,
    code_block,
    context,
    human_bytes,
    lines_sections,
    md,
    message,
    plural,
    prose,
    section,
)
from handlers.render import renders
from handlers.render_deletion import duration
from handlers.render_operations import operation_buttons
from handlers.render_requests import KindView, kind_view

CATEGORY_WORDS = {"unindexed": "no index", "invalid": "invalid", "duplicate": "duplicate"}
MAX_BUTTON_ROWS = 20  # items in one message, each with its buttons: 2 blocks apiece, within Slack's 50


@renders("indexes")
def render_indexes(request: CommandRequest, result: IndexList) -> Message:
    counts = result.counts
    head_line = md(
        ":card_index_dividers: Indexes on *{}*: {} without an index, {}, {}.",
        result.stage,
        plural(counts.get("unindexed", 0), "foreign key"),
        plural(counts.get("invalid", 0), "invalid index", "invalid indexes"),
        plural(counts.get("duplicate", 0), "duplicate index", "duplicate indexes"),
    )
    if not result.items:
        return message(head_line, [section(head_line), context(Mrkdwn("Nothing to build or drop."))], ephemeral=True)
    lines = [md("• *{}* {}\n    {}", CATEGORY_WORDS[i.category], i.title, prose(i.detail)) for i in result.items]

    def rest(left: int) -> Mrkdwn:
        return md("_… and {:,} more: build or drop these first, then run {} again_", left, code("/mcp indexes"))

    items = []
    for index, (item, line) in enumerate(zip(result.items, lines, strict=True)):
        buttons = operation_buttons(result.stage, list(item.actions), start=index * 10)
        items.append([section(line), *([actions(*buttons, block_id=f"index_{index}")] if buttons else [])])
    # An ephemeral reply shares no file: the head of the list (each with its buttons), then the count of the rest
    # (the listing holds the first of them, the counts all of them).
    # Chosen from each category in turn (none crowded out), shown in the listing's order.
    order = in_turn([i.category for i in result.items])
    _, shown = head_items([items[i] for i in order], limit=MAX_BUTTON_ROWS)
    kept = [block for i in sorted(order[:shown]) for block in items[i]]
    blocks: list[Block] = [section(head_line), *kept]
    left = sum(counts.values()) - shown
    if left > 0:
        blocks.append(context(rest(left)))
    blocks.append(
        context(
            Mrkdwn(
                "*Create index* runs `CREATE INDEX CONCURRENTLY` outside any transaction (writes go on); a failed "
                "build's INVALID index is dropped. *Drop index* runs `DROP INDEX CONCURRENTLY`."
            )
        )
    )
    return message(f"Indexes on {result.stage}", blocks, ephemeral=True)


# -- the requests ---------------------------------------------------------------------------------


def _create_body(view: RequestView) -> list[Block]:
    impact = view.request.impact
    lines = [
        md(
            "{} on {} (~{}, {}): the name is predictable, `<table>_<columns>_idx`.",
            code(impact.get("name", "?")),
            code(impact.get("table", "?")),
            plural(int(impact.get("rows", 0)), "row"),
            human_bytes(int(impact.get("bytes", 0))),
        ),
        code_block(impact.get("statement", "")),
    ]
    if impact.get("leftover"):
        lines.append(
            Mrkdwn(":broom: An INVALID index of that name, left by an earlier failed build, is dropped first.")
        )
    return [
        *lines_sections(lines),
        context(
            Mrkdwn(
                "Outside any transaction, with `lock_timeout`; writes to the table go on while it builds. If the "
                "build fails or is cancelled, the INVALID index it leaves is dropped (`DROP INDEX CONCURRENTLY`)."
            )
        ),
    ]


def _create_running(view: RequestView) -> Mrkdwn:
    progress = view.progress
    if not isinstance(progress, BuildProgress):
        return Mrkdwn(":gear: Running: `CREATE INDEX CONCURRENTLY`, starting…")
    done = Mrkdwn("")
    if progress.blocks_total:
        done = md(", {:,} of {:,} blocks", progress.blocks_done, progress.blocks_total)
    elif progress.tuples_total:
        done = md(", {:,} of {}", progress.tuples_done, plural(progress.tuples_total, "row"))
    return md(
        ":gear: Running: `CREATE INDEX CONCURRENTLY`, {}{}, {} elapsed.",
        progress.phase or "starting",
        done,
        duration(progress.elapsed_s),
    )


def _create_done(request: Request) -> Mrkdwn:
    result = request.result or {}
    cleaned = md(" Before it: {}.", prose(result["cleaned"])) if result.get("cleaned") else Mrkdwn("")
    return md(
        ":white_check_mark: Done: index {} built in {} ({}), valid. Deletes of the parent rows now look it up "
        "instead of scanning the table; `/mcp impact` estimates with it.{}",
        code(result.get("index", "?")),
        duration(float(result.get("seconds", 0))),
        human_bytes(int(result.get("bytes", 0))),
        cleaned,
    )


def _drop_body(view: RequestView) -> list[Block]:
    impact = view.request.impact
    why = (
        Mrkdwn("invalid: maintained on every write, never used")
        if impact.get("reason") == "invalid"
        else md("a duplicate of {}: every lookup it serves, that one serves too", code(impact.get("keeper") or "?"))
    )
    return lines_sections(
        [
            md("{} ({}) is {}.", code(impact.get("index", "?")), human_bytes(int(impact.get("bytes", 0))), why),
            code_block(impact.get("definition", "")),
        ]
    )


def _drop_done(request: Request) -> Mrkdwn:
    result = request.result or {}
    return md(
        ":white_check_mark: Done: index {} dropped ({} freed).",
        code(result.get("index", "?")),
        human_bytes(int(result.get("bytes", 0))),
    )


kind_view("create-index")(
    lambda: KindView(
        title=lambda r: f"Create index on {r.subject} on {r.stage}",
        body=_create_body,
        running=_create_running,
        done=_create_done,
        summary=lambda r: md("{}", r.impact.get("name", r.subject)),
        confirm="Create index",
        failed="Failed",
    )
)
kind_view("drop-index")(
    lambda: KindView(
        title=lambda r: f"Drop index {r.subject} on {r.stage}",
        body=_drop_body,
        running=lambda view: Mrkdwn(":gear: Running: `DROP INDEX CONCURRENTLY`…"),
        done=_drop_done,
        summary=lambda r: md("{}", r.subject),
        confirm="Drop index",
        failed="Failed",
    )
)
