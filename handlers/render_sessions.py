"""`/mcp sessions` and the cancel / terminate requests: how they look in Slack."""

from __future__ import annotations

from bot.health.checks.base import duration
from bot.requests.buttons import operation_buttons
from bot.requests.messages import RequestView
from bot.requests.store import Request
from bot.service import CommandRequest
from bot.sessions.activity import Backend, SessionList
from handlers.blocks import Block, Message, actions, code, context, escape, lines_sections, message, section
from handlers.render import renders
from handlers.render_requests import KindView, clean, kind_view

CATEGORY_WORDS = {"long": "running for", "idle": "idle in a transaction for", "blocked": "waiting on a lock for"}
MAX_BUTTON_ROWS = 20  # actions blocks in one message (it may hold 50 blocks)


def _line(backend: Backend) -> str:
    line = (
        f"• *{escape(backend.category)}* {clean(backend.label)}, {CATEGORY_WORDS[backend.category]} "
        f"{duration(backend.seconds)}: {code(backend.query)}"
    )
    if backend.blocked_by:
        line += "\n    blocked by " + "; ".join(clean(b) for b in backend.blocked_by)
    return line


@renders("sessions")
def render_sessions(request: CommandRequest, result: SessionList) -> Message:
    limits = ", ".join(f"{c} over {duration(result.thresholds[c])}" for c in result.which)
    head = f":busts_in_silhouette: Sessions on *{escape(result.stage)}* ({limits}): {result.total}"
    if not result.backends:
        return message(head, [section(head), context("Nothing over the thresholds right now.")], ephemeral=True)
    blocks: list[Block] = [section(head)]
    rows = 0
    for index, backend in enumerate(result.backends):
        blocks.append(section(_line(backend)))
        buttons = operation_buttons(result.stage, list(backend.actions), start=index * 10)
        if buttons and rows < MAX_BUTTON_ROWS:
            blocks.append(actions(*buttons, block_id=f"session_{index}"))
            rows += 1
    if result.total > len(result.backends):
        blocks.append(
            context(f"… and {result.total - len(result.backends)} more; narrow with --long, --idle, --blocked")
        )
    blocks.append(
        context(
            "*Cancel query* stops the statement (a client that rolls back releases its locks); *Terminate session* "
            "ends the connection and rolls its transaction back. Both re-check the session right before signalling."
        )
    )
    return message(f"{result.total} sessions on {result.stage}", blocks, ephemeral=True)


# -- the requests ---------------------------------------------------------------------------------

VERBS = {"cancel": "Cancel the query of", "terminate": "Terminate the session of"}


def _body(view: RequestView) -> list[Block]:
    request = view.request
    impact = request.impact
    lines = [
        f"{clean(impact.get('label', request.subject))}, {escape(str(impact.get('state', '?')))}: "
        f"{code(str(impact.get('query', '')))}",
    ]
    if impact.get("blocking"):
        lines.append(f"It blocks *{int(impact['blocking'])}* other session(s).")
    blocks = lines_sections(lines)
    blocks.append(
        context(
            "Sent only if it is still the same session doing the same thing (pid, backend start, query or "
            "transaction start); never to the bot's own, superuser or replication sessions."
        )
    )
    return blocks


def _done(request: Request) -> str:
    result = request.result or {}
    what = "query cancelled" if result.get("signal") == "cancel" else "session terminated"
    outcome = (
        f"it stopped ({escape(str(result.get('state_after', '?')))} now)"
        if result.get("ended")
        else f"it is still there ({escape(str(result.get('state_after', '?')))}): try *Terminate session*"
    )
    return (
        f":white_check_mark: Done: pid {int(result.get('pid', 0))} {what}; {outcome}. Sessions waiting on locks: "
        f"*{int(result.get('blocked_before', 0))}* before, *{int(result.get('blocked_after', 0))}* after."
    )


def _view(kind: str) -> KindView:
    return KindView(
        title=lambda r: f"{VERBS[kind]} {r.subject} on {r.stage}",
        body=_body,
        running=lambda view: ":gear: Running: re-checking the session, then signalling it…",
        done=_done,
        summary=lambda r: clean(r.impact.get("label", r.subject)),
        confirm="Cancel query" if kind == "cancel" else "Terminate session",
        failed="Failed",
    )


kind_view("cancel")(lambda: _view("cancel"))
kind_view("terminate")(lambda: _view("terminate"))
