"""`/mcp sessions` and the cancel / terminate requests: how they look in Slack."""

from __future__ import annotations

from bot.health.checks.base import duration
from bot.requests.messages import RequestView
from bot.requests.store import Request
from bot.service import CommandRequest
from bot.sessions.activity import Backend, SessionList
from bot.slacktext.long import head_items
from handlers.blocks import Block, Message, Mrkdwn, actions, code, context, lines_sections, md, message, plural, section
from handlers.render import renders
from handlers.render_operations import operation_buttons
from handlers.render_requests import KindView, kind_view

CATEGORY_WORDS = {"long": "running for", "idle": "idle in a transaction for", "blocked": "waiting on a lock for"}
MAX_BUTTON_ROWS = 20  # sessions in one message, each with its buttons: 2 blocks apiece, within Slack's 50
MAX_QUERY_CHARS = 300  # of each query's text, so a screenful of sessions fits in one message


def _cut(query: str) -> str:
    """A query's head: enough to recognise it; the session checks' alerts carry more."""
    return query if len(query) <= MAX_QUERY_CHARS else query[: MAX_QUERY_CHARS - 1].rstrip() + "…"


def _line(backend: Backend) -> Mrkdwn:
    line = md(
        "• *{}* {}, {} {}: {}",
        backend.category,
        backend.label,
        CATEGORY_WORDS[backend.category],
        duration(backend.seconds),
        code(_cut(backend.query)),
    )
    if backend.blocked_by:
        line += md("\n    blocked by {}", "; ".join(backend.blocked_by))
    return line


@renders("sessions")
def render_sessions(request: CommandRequest, result: SessionList) -> Message:
    limits = ", ".join(f"{c} over {duration(result.thresholds[c])}" for c in result.which)
    head = md(":busts_in_silhouette: Sessions on *{}* ({}): {:,}", result.stage, limits, result.total)
    blind = (
        []
        if result.sees_all
        else [
            context(
                Mrkdwn(
                    ":warning: This stage's role sees only its own sessions (other roles' state and query are "
                    "hidden): `GRANT pg_read_all_stats TO &lt;role&gt;;`"
                )
            )
        ]
    )
    if not result.backends:
        nothing = context(Mrkdwn("Nothing over the thresholds right now."))
        return message(head, [section(head), nothing, *blind], ephemeral=True)

    def rest(more: int) -> Mrkdwn:
        return md(
            "_… and {:,} more: narrow it with {}, {} or {}_", more, code("--long"), code("--idle"), code("--blocked")
        )

    items = []
    for index, backend in enumerate(result.backends):
        buttons = operation_buttons(result.stage, list(backend.actions), start=index * 10)
        items.append([section(_line(backend)), *([actions(*buttons, block_id=f"session_{index}")] if buttons else [])])
    # An ephemeral reply shares no file: the sessions that fit (each with its buttons), then the count of the rest.
    kept, shown = head_items(items, limit=MAX_BUTTON_ROWS)
    blocks: list[Block] = [section(head), *kept, *blind]
    if result.total > shown:
        blocks.append(context(rest(result.total - shown)))
    blocks.append(
        context(
            Mrkdwn(
                "*Cancel query* stops the statement (a client that rolls back releases its locks); *Terminate "
                "session* ends the connection and rolls its transaction back. Both re-check the session right "
                "before signalling."
            )
        )
    )
    return message(f"{plural(result.total, 'session')} on {result.stage}", blocks, ephemeral=True)


# -- the requests ---------------------------------------------------------------------------------

VERBS = {"cancel": "Cancel the query of", "terminate": "Terminate the session of"}


def _body(view: RequestView) -> list[Block]:
    impact = view.request.impact
    lines = [
        md(
            "{}, {}: {}",
            impact.get("label", view.request.subject),
            impact.get("state", "?"),
            code(impact.get("query", "")),
        )
    ]
    if impact.get("blocking"):
        lines.append(
            md(
                "It blocks *{}* other {}.",
                int(impact["blocking"]),
                "session" if impact["blocking"] == 1 else "sessions",
            )
        )
    return [
        *lines_sections(lines),
        context(
            Mrkdwn(
                "Sent only if it is still the same session doing the same thing (pid, backend start, query or "
                "transaction start); never to the bot's own, superuser or replication sessions."
            )
        ),
    ]


def _done(request: Request) -> Mrkdwn:
    result = request.result or {}
    what = "query cancelled" if result.get("signal") == "cancel" else "session terminated"
    state = str(result.get("state_after", "?"))
    outcome = (
        md("it stopped ({} now)", state)
        if result.get("ended")
        else md("it is still there ({}): try *Terminate session*", state)
    )
    return md(
        ":white_check_mark: Done: pid {} {}; {}. Sessions waiting on locks: *{}* before, *{}* after.",
        int(result.get("pid", 0)),
        what,
        outcome,
        int(result.get("blocked_before", 0)),
        int(result.get("blocked_after", 0)),
    )


def _view(kind: str) -> KindView:
    return KindView(
        title=lambda r: f"{VERBS[kind]} {r.subject} on {r.stage}",
        body=_body,
        running=lambda view: Mrkdwn(":gear: Running: re-checking the session, then signalling it…"),
        done=_done,
        summary=lambda r: md("{}", r.impact.get("label", r.subject)),
        confirm="Cancel query" if kind == "cancel" else "Terminate session",
        failed="Failed",
    )


kind_view("cancel")(lambda: _view("cancel"))
kind_view("terminate")(lambda: _view("terminate"))
