"""How requests of every kind look in Slack: the message frame, its buttons, App Home lines, `/mcp pending`.

What differs per kind (its header, its plan or result, its status while it runs, its confirm
button) is a `KindView` registered by the kind's render module (`@kind_view`); everything else
is the same for every kind. Text reaches Slack through the boundary (bot/slacktext): the bot's
words are `Mrkdwn`, everything from a database or a person is data.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.deletion.operations import PendingRequests
from bot.requests.kinds import KINDS
from bot.requests.messages import RequestView, permalink
from bot.requests.store import Request
from bot.service import CommandRequest
from bot.slacktext.files import Attachment, attach
from bot.slacktext.long import head
from handlers.blocks import (
    Block,
    Message,
    Mrkdwn,
    actions,
    button,
    code,
    confirm_dialog,
    context,
    header,
    lines_sections,
    link,
    md,
    mention,
    mentions,
    message,
    noun,
    payload,
    plural,
    prose,
    section,
    when,
)
from handlers.render import renders

CONFIRM_ACTION = "delete_confirm"
CANCEL_ACTION = "delete_cancel"
APPROVE_ACTION = "delete_approve"
REJECT_ACTION = "delete_reject"
REJECT_MODAL = "delete_reject_modal"
REASON_BLOCK = "reason"
REASON_INPUT = "reason"
MAX_PENDING_LINES = 30  # requests listed by /mcp pending; the rest are counted


@dataclass(frozen=True)
class KindView:
    """How one kind's requests read."""

    title: Callable[[Request], str]  # the header (plain text): "Delete acme on production"
    body: Callable[[RequestView], list[Block]]  # its plan while it waits, what it did once done
    running: Callable[[RequestView], Mrkdwn]  # the status line while it runs
    done: Callable[[Request], Mrkdwn]  # the status line once done
    summary: Callable[[Request], Mrkdwn]  # one line for App Home and `/mcp pending`: "1,234 rows"
    confirm: str = "Confirm"  # the requester's own button where they confirm it
    confirm_title: str | None = None  # Slack's confirm dialog on that button (plain text)
    confirm_text: Callable[[Request], str] | None = None
    failed: str = "Failed and rolled back"  # how a failure starts: nothing it did is left
    files: Callable[[RequestView], list[Attachment]] = lambda view: []  # shared in the message's thread


KIND_VIEWS: dict[str, KindView] = {}


def kind_view(name: str) -> Callable[[Callable[[], KindView]], Callable[[], KindView]]:
    def register(make: Callable[[], KindView]) -> Callable[[], KindView]:
        KIND_VIEWS[name] = make()
        return make

    return register


FALLBACK = KindView(
    title=lambda r: f"{r.kind} {r.subject} on {r.stage}",
    body=lambda view: [],
    running=lambda view: Mrkdwn(":gear: Running…"),
    done=lambda request: Mrkdwn(":white_check_mark: Done."),
    summary=lambda request: md("{}", request.subject),
)


def view_of(request: Request) -> KindView:
    return KIND_VIEWS.get(request.kind, FALLBACK)


def past(request: Request) -> str:
    cls = KINDS.get(request.kind)
    return cls.done if cls is not None else "changed"


STATE_WORDS = {
    "pending": "waiting for confirmation",
    "pending approval": "waiting for approval",
    "approved": "confirmed, starting",
    "running": "running",
    "done": "done",
    "failed": "failed, rolled back",
    "rejected": "rejected",
    "cancelled": "cancelled",
    "expired": "expired",
    "stale": "stale",
    "revoked": "revoked",
}


def state_word(request: Request) -> str:
    key = "pending approval" if request.state == "pending" and request.needs_approvers else request.state
    return STATE_WORDS.get(key, request.state)


def _status(view: RequestView) -> Mrkdwn:
    request = view.request
    kind = view_of(request)
    who = mention(request.requester)
    state = request.state
    gone = past(request)
    approvers = mentions(request.approvals)
    if state == "pending" and request.needs_approvers:
        so_far = md("; approved so far by {}", approvers) if approvers else Mrkdwn("")
        return md(
            ":hourglass_flowing_sand: Needs *{}* {} from approvers other than {} before {}: {} of {}{}.",
            request.required_approvals,
            noun(request.required_approvals, "approval"),
            who,
            when(request.expires_at),
            len(request.approvals),
            request.required_approvals,
            so_far,
        )
    if state == "pending":
        return md(
            ":hourglass_flowing_sand: Waiting for {} to press *{}* (or *Cancel*) before {}.",
            who,
            kind.confirm,
            when(request.expires_at),
        )
    if state == "approved":
        verb = "Approved" if request.needs_approvers else "Confirmed"
        return md(":white_check_mark: {} by {}; starting.", verb, approvers or mention(request.decided_by))
    if state == "running":
        return kind.running(view)
    if state == "done":
        if (request.result or {}).get("recovered"):
            return Mrkdwn(":white_check_mark: Done: it committed, but the bot restarted before reporting the details.")
        return kind.done(request)
    if state == "failed":
        return md(":x: {}, nothing was {}: {}", kind.failed, gone, prose(request.error or "unknown error"))
    if state == "cancelled":
        return md(":no_entry_sign: Cancelled by {}.", mention(request.decided_by))
    if state == "expired":
        decided = "approved" if request.needs_approvers else "confirmed"
        return md(":alarm_clock: Expired: nobody {} it in time. Nothing was {}.", decided, gone)
    if state == "rejected":
        return md(":no_entry: Rejected by {}: {}", mention(request.decided_by), request.decision_reason or "")
    if state == "revoked":
        return md(":no_entry: Revoked, nothing was {}: {}.", gone, prose(request.error or ""))
    if state == "stale":
        successor = (request.result or {}).get("replaced_by") or request.replaced_by
        if (request.result or {}).get("target_changed"):
            again = md(" This is not what was approved; ask again if something still needs to be {}.", gone)
        elif successor:
            again = md(" The new numbers are posted as request #{} for a fresh approval.", successor)
        else:
            again = md(" Nothing can be {} as it is now.", gone)
        return md(":arrows_counterclockwise: Stale, nothing was {}: {}.{}", gone, prose(request.error or ""), again)
    return md(":warning: {}", STATE_WORDS.get(state, state))


def _approved_by(request: Request) -> Mrkdwn:
    """Who approved, on every message after the quorum (an update can be skipped, this line can't)."""
    if not request.needs_approvers or request.state not in ("approved", "running", "done", "failed", "stale"):
        return Mrkdwn("")
    approvals = [a for a in request.approvals if a != request.requester]
    return md(". Approved by {}", mentions(approvals)) if approvals else Mrkdwn("")


def request_message(view: RequestView) -> dict[str, Any]:
    """The request's message in every state; chat.postMessage and chat.update send exactly this."""
    request = view.request
    kind = view_of(request)
    lock = " :lock:" if request.protected else ""
    title = kind.title(request)
    blocks: list[Block] = [
        header(title),
        section(_status(view)),
        context(
            md("Request #{} by {} on stage *{}*{}", request.id, mention(request.requester), request.stage, lock)
            + (md(". Reason: {}", request.reason) if request.reason else Mrkdwn(""))
            + (md(". Replaces request #{}", request.replaces) if request.replaces else Mrkdwn(""))
            + _approved_by(request)
        ),
        *kind.body(view),
        *_buttons(request),
    ]
    return attach(payload(message(f"{title}: {state_word(request)}", blocks)), *kind.files(view))


def _buttons(request: Request) -> list[Block]:
    """Approve/Reject/Cancel while a request approvers decide waits; the kind's confirm button/Cancel elsewhere."""
    if request.state != "pending":
        return []
    value = {"r": request.id}
    if request.needs_approvers:
        elements = [
            button("Approve", APPROVE_ACTION, value, style="primary"),
            button("Reject", REJECT_ACTION, value, style="danger"),
            button("Cancel", CANCEL_ACTION, value),
        ]
    else:
        elements = [confirm_button(request), button("Cancel", CANCEL_ACTION, value)]
    return [actions(*elements, block_id=f"delete_request_{request.id}")]


def confirm_button(request: Request) -> Block:
    """The requester's confirmation on an unprotected stage: danger style, behind Slack's confirm dialog."""
    kind = view_of(request)
    text = kind.confirm_text(request) if kind.confirm_text else f"{kind.title(request)}."
    dialog = confirm_dialog(kind.confirm_title or f"{kind.confirm}?", text, kind.confirm, danger=True)
    return button(kind.confirm, CONFIRM_ACTION, {"r": request.id}, style="danger", confirm=dialog)


def home_request_blocks(request: Request, viewer: str) -> list[Block]:
    """One pending request on the viewer's App Home: what it is, and only the buttons they may press."""
    url = permalink(request.channel, request.message_ts)
    title = md("#{} {} {} on *{}*", request.id, request.kind, code(request.subject), request.stage)
    mine = request.requester == viewer
    if request.needs_approvers:
        progress = md("{} of {} approvals", len(request.approvals), request.required_approvals)
        who = Mrkdwn("you asked") if mine else md("asked by {}", mention(request.requester))
    else:
        progress, who = Mrkdwn("waiting for your confirmation"), Mrkdwn("you asked")
    line = (
        md(
            "{}: {}, {}, {}, expires {}",
            title,
            view_of(request).summary(request),
            progress,
            who,
            when(request.expires_at),
        )
        + (md(". Reason: {}", request.reason) if request.reason else Mrkdwn(""))
        + (md(" ({})", link(url, "message")) if url else Mrkdwn(""))
    )
    value = {"r": request.id}
    if mine:
        buttons = [button("Cancel", CANCEL_ACTION, value)]
        if not request.needs_approvers:
            buttons.insert(0, confirm_button(request))
    else:
        buttons = [
            button("Approve", APPROVE_ACTION, value, style="primary"),
            button("Reject", REJECT_ACTION, value, style="danger"),
        ]
    return [section(line), actions(*buttons, block_id=f"home_request_{request.id}")]


def refusal(text: str) -> Message:
    shown = prose(text, keep_mentions=True)  # "only <@U1>, who asked for it, can cancel it"
    msg = message(shown, [section(md(":no_entry: {}", shown))], ephemeral=True)
    msg["replace_original"] = False
    return msg


def reject_modal(request_id: int) -> dict[str, Any]:
    """The form that asks a rejecting approver why."""
    return {
        "type": "modal",
        "callback_id": REJECT_MODAL,
        "private_metadata": json.dumps({"r": request_id}),
        "title": {"type": "plain_text", "text": "Reject request"},
        "submit": {"type": "plain_text", "text": "Reject"},
        "close": {"type": "plain_text", "text": "Back"},
        "blocks": [
            section(md("Why reject request #{}? The reason is shown on the request and audited.", request_id)),
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "label": {"type": "plain_text", "text": "Reason"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": REASON_INPUT,
                    "multiline": True,
                    "max_length": 500,
                },
            },
        ],
    }


@renders("pending")
def render_pending(request: CommandRequest, result: PendingRequests) -> Message:
    where = md(" on stage *{}*", result.stage) if result.stage else Mrkdwn("")
    lines: list[Mrkdwn] = []
    for r in result.requests:
        url = permalink(r.channel, r.message_ts)
        title = f"#{r.id} {r.kind} {r.subject}"
        named = link(url, title) if url else md("{}", title)
        approvals = (
            md(", {} of {} approvals", len(r.approvals), r.required_approvals) if r.needs_approvers else Mrkdwn("")
        )
        lines.append(
            md(
                "• {} on *{}*: {}{}, by {}, expires {}",
                named,
                r.stage,
                state_word(r),
                approvals,
                mention(r.requester),
                when(r.expires_at),
            )
            + (md(" ({})", r.reason) if r.reason else Mrkdwn(""))
        )
    count = max(result.total, len(lines))
    where_else = (
        md("narrow it with {}", code("--stage"))
        if not result.stage
        else Mrkdwn("the bot's App Home lists those waiting for you")
    )

    # An ephemeral reply shares no file: the requests that fit, then how many more and where else they are.
    shown, cut = head(lines, limit=MAX_PENDING_LINES, rest=lambda n: Mrkdwn(""))
    shown = shown[: len(shown) - 1] if cut else shown
    if count > len(shown):  # counted against every open request, not only those read
        shown.append(md("_… and {:,} more: {}_", count - len(shown), where_else))
    blocks = [
        section(md(":inbox_tray: Open requests{}: {:,}", where, count)),
        *lines_sections(shown or [Mrkdwn("_none_")]),
    ]
    return message(plural(count, "open request"), blocks, ephemeral=True)
