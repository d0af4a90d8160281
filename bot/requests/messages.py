"""A request's Slack message, its audit rows and its progress updates; no Slack imports.

The message is rendered by a function the Slack layer injects (`set_renderer`); every state
change queues its `chat.update` through the outbox in the same transaction as the change, so a
message can lag behind its request but never contradict it. Progress updates while a request
runs are best-effort `chat.update` calls, throttled.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from bot import outbox
from bot.audit import AuditEntry
from bot.errors import UserFacingError
from bot.requests.store import Notify, Request, RequestStore

if TYPE_CHECKING:
    from bot.requests.kinds import Kind
    from bot.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestView:
    """Everything a request's message shows: the request, its progress while it runs, the kind's notes."""

    request: Request
    progress: Any = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def backup_note(self) -> str | None:
        return self.notes.get("backup")


Renderer = Callable[[RequestView], dict[str, Any]]


def permalink(channel: str | None, ts: str | None) -> str | None:
    if not channel or not ts:
        return None
    return f"https://slack.com/archives/{channel}/p{ts.replace('.', '')}"


class RequestMessages:
    """Mixed into the machine: rendering, posting, refreshing and auditing a request."""

    runtime: Runtime
    store: RequestStore
    render: Renderer | None

    if TYPE_CHECKING:  # provided by the machine and its other parts

        def kind(self, name: str) -> Kind: ...

    def view(self, request: Request, progress: Any = None) -> RequestView:
        try:
            notes = self.kind(request.kind).notes(request)
        except KeyError:
            notes = {}
        return RequestView(request=request, progress=progress, notes=notes)

    def message(self, request: Request, progress: Any = None) -> dict[str, Any] | None:
        if self.render is None:
            return None
        return self.render(self.view(request, progress))

    def _post(self, request: Request) -> Request:
        """The request's message: in its channel, or in the thread it came from (an alert's)."""
        payload = self.message(request)
        if payload is None or not request.channel:
            return request
        where: dict[str, Any] = {"channel": request.channel}
        thread = request.options.get("thread_ts")
        if thread:
            # In the alert's thread; shown in the channel too when someone else has to approve it.
            where.update(thread_ts=thread, reply_broadcast=request.state == "pending")
        try:
            response = self.runtime.slack.api_call("chat.postMessage", json={**where, **payload})
        except Exception as exc:  # SlackApiError or a transport error: the request can't be confirmed
            response = getattr(exc, "response", None)
            error = response.get("error", "unknown") if hasattr(response, "get") else "unreachable"
            why = f"couldn't post the {request.kind} request in this channel (Slack said `{error}`)"
            self.store.transition(
                request.id,
                ("pending", "approved"),
                "cancelled",
                decided_by="system",
                notify=self._audited("system", "cancelled", {"reason": why}),
            )
            raise UserFacingError(f"{why}; invite the bot and try again") from exc
        ts = str(response.get("ts", ""))
        channel = str(response.get("channel", request.channel))
        self.store.set_message(request.id, channel, ts)
        return self.store.get(request.id) or request

    def _notify(self, conn: Connection, request: Request) -> None:
        """Queue the message's refresh in the transition's own transaction."""
        if not request.channel or not request.message_ts:
            return
        payload = self.message(request)
        if payload is None:
            return
        outbox.enqueue(conn, "chat.update", {"channel": request.channel, "ts": request.message_ts, **payload})

    def amend_result(self, request_id: int, changes: dict[str, Any]) -> Request | None:
        """A done request's result amended afterwards (an erasure's backups purged later); its message follows.

        None when the request is not (or no longer) done.
        """
        request = self.store.get(request_id)
        if request is None or request.state != "done":
            return None
        amended = self.store.transition(
            request_id, "done", "done", result={**(request.result or {}), **changes}, notify=self._notify
        )
        self._nudge()
        return amended

    def _nudge(self) -> None:
        """After a commit: queued Slack calls go out, and App Home tabs showing requests refresh."""
        self.runtime.outbox_worker.notify()
        self.runtime.changes.publish("approvals")

    def _audited(self, actor: str | None, outcome: str, detail: dict[str, Any] | None = None) -> Notify:
        """A transition's hook: its message refresh and its audit row, both in the transition's transaction.

        `actor` None: whoever decided the request (its last approver), else its requester.
        """

        def notify(conn: Connection, request: Request) -> None:
            self._notify(conn, request)
            self._audit(request, actor or request.decided_by or request.requester, outcome, detail=detail, conn=conn)

        return notify

    def _audit(
        self,
        request: Request,
        actor: str,
        outcome: str,
        *,
        detail: dict[str, Any] | None = None,
        required: bool = True,
        conn: Connection | None = None,
    ) -> None:
        """With `conn`, the row commits (or not) with the change it records."""
        self.runtime.audit.record(
            AuditEntry(
                actor=actor,
                stage=request.stage,
                command=request.kind,
                args=f"#{request.id} {request.subject}",
                outcome=outcome,
                detail={"request": request.id, "state": request.state, **(detail or {})},
            ),
            required=required,
            conn=conn,
        )


class ProgressReporter:
    """Turns a kind's progress into at most one `chat.update` every `interval` seconds.

    Progress goes straight to Slack, state changes through the outbox: `close()` (before the outcome is
    recorded) waits for a progress update in flight and stops any later one, so none can land after the
    outcome's update and show the request running again.
    """

    def __init__(self, machine: RequestMessages, request: Request, interval: float) -> None:
        self.machine = machine
        self.request = request
        self.interval = interval
        self.last: Any = None
        self.started = time.monotonic()
        self.sent_at = 0.0
        self._lock = threading.Lock()
        self._sending = threading.Lock()  # held for a whole `chat.update`
        self._closed = False

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def update(self, progress: Any) -> None:
        with self._lock:
            self.last = progress
            due = time.monotonic() - self.sent_at >= self.interval
        if due:
            self._send(progress)

    def tick(self) -> None:
        """The heartbeat: the last progress again, with its elapsed time brought up to date."""
        with self._lock:
            last = self.last
        if last is not None:
            if dataclasses.is_dataclass(last) and any(f.name == "elapsed_s" for f in dataclasses.fields(last)):
                last = dataclasses.replace(last, elapsed_s=self.elapsed_s)  # type: ignore[type-var]
            self._send(last)

    def close(self) -> None:
        with self._sending:
            self._closed = True

    def _send(self, progress: Any) -> None:
        request = self.request
        payload = self.machine.message(request, progress)
        if payload is None or not request.channel or not request.message_ts:
            return
        with self._lock:
            self.sent_at = time.monotonic()
        with self._sending:
            if self._closed:
                return
            try:
                self.machine.runtime.slack.api_call(
                    "chat.update", json={"channel": request.channel, "ts": request.message_ts, **payload}
                )
            except Exception:
                log.warning("progress update failed", extra={"request": request.id}, exc_info=True)
