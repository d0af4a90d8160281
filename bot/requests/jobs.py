"""The scheduled jobs of the request machine: expire, remind, recover (each once per slot across replicas)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, or_

from bot import outbox
from bot.errors import UserFacingError
from bot.requests.store import Notify, Request, RequestStore, delete_requests
from bot.slacktext import code, md, mention, noun

if TYPE_CHECKING:
    from bot.requests.kinds import Kind
    from bot.requests.messages import Renderer
    from bot.runtime import Runtime

REMIND_BEFORE = timedelta(minutes=5)  # or a third of the TTL, whichever is shorter
POST_GRACE = timedelta(minutes=1)  # an approved request's message not posted by then: its process died


class RequestJobs:
    """Mixed into the machine (bot/requests/machine.py)."""

    runtime: Runtime
    store: RequestStore
    render: Renderer | None
    clock: Callable[[], datetime]
    ttl: timedelta

    if TYPE_CHECKING:  # provided by the machine and its other parts

        def kind(self, name: str) -> Kind: ...

        def _audited(self, actor: str | None, outcome: str, detail: dict[str, Any] | None = None) -> Notify: ...

        def _nudge(self) -> None: ...

        def _runner_lock(self, request_id: int) -> AbstractContextManager[bool]: ...

        def start(self, request_id: int) -> None: ...

        def _post(self, request: Request) -> Request: ...

        def finish(self, request: Request, state: str, *, error: str | None = None, **values: Any) -> None: ...

    def expire_due(self, now: datetime | None = None) -> int:
        """Close pending requests past their expiry; their messages say so."""
        now = now or self.clock()
        closed = 0
        for request_id in self.store.ids_where(
            delete_requests.c.state == "pending", delete_requests.c.expires_at <= now
        ):
            done = self.store.transition(
                request_id,
                "pending",
                "expired",
                where=(delete_requests.c.expires_at <= now,),
                notify=self._audited("system", "expired"),
            )
            if done is not None:
                closed += 1
        if closed:
            self._nudge()
        return closed

    def remind_due(self, now: datetime | None = None) -> int:
        """Shortly before a pending request expires, say so in its thread, once."""
        now = now or self.clock()
        window = min(REMIND_BEFORE, self.ttl / 3)
        sent = 0
        for request_id in self.store.ids_where(
            delete_requests.c.state == "pending",
            delete_requests.c.reminded_at.is_(None),
            delete_requests.c.expires_at > now,
            delete_requests.c.expires_at <= now + window,
        ):
            done = self.store.transition(
                request_id,
                "pending",
                "pending",
                where=(delete_requests.c.reminded_at.is_(None),),
                reminded_at=now,
                notify=self._remind,
            )
            sent += done is not None
        if sent:
            self._nudge()
        return sent

    def _remind(self, conn: Connection, request: Request) -> None:
        if not request.channel or not request.message_ts or self.render is None:
            return
        missing = max(request.required_approvals - len(request.approvals), 0)
        if request.needs_approvers:
            needed = md("{} more {}", missing, noun(missing, "approval"))
        else:
            needed = md("a confirmation from {}", mention(request.requester))
        remaining = max(round((request.expires_at - (request.reminded_at or self.clock())).total_seconds() / 60), 0)
        text = md(
            ":alarm_clock: Reminder: {} request #{} for {} on {} expires in about {} min; it still needs {}.",
            request.kind,
            request.id,
            code(request.subject),
            request.stage,
            remaining,
            needed,
        )
        outbox.enqueue(
            conn, "chat.postMessage", {"channel": request.channel, "thread_ts": request.message_ts, "text": text}
        )

    def recover(self) -> int:
        """Requests left `running` by a process that died, and approved requests nobody started:
        each is settled once, whichever replica gets there first."""
        if self.render is None:
            return 0
        # Approved requests nobody started. The asking process posts a request's message, then starts it:
        # one without its message yet is still being posted (left alone), or, a while on, its process died
        # in between: posted now (a post that fails cancels it), then started.
        for request_id in self.store.ids_where(
            delete_requests.c.state == "approved",
            or_(
                delete_requests.c.message_ts.is_not(None),
                delete_requests.c.channel.is_(None),
                delete_requests.c.created_at < func.now() - POST_GRACE,
            ),
        ):
            request = self.store.get(request_id)
            if request is not None and request.channel and not request.message_ts:
                try:
                    self._post(request)
                except UserFacingError:
                    continue
            self.start(request_id)  # the runner lock and the CAS make it run once
        fixed = 0
        for request_id in self.store.ids_where(delete_requests.c.state == "running"):
            with self._runner_lock(request_id) as free:
                if not free:
                    continue  # a live runner holds it
                request = self.store.get(request_id)
                if request is None or request.state != "running":
                    continue
                stage = self.runtime.stages.get(request.stage)
                try:
                    if stage.is_running(stage.work_name(f"request-{request.id}")):
                        continue  # its transaction is still open on the stage (its process died mid-statement)
                    settled = self.kind(request.kind).recover(request)
                except UserFacingError:
                    continue  # the stage is unreachable; the next run looks again
                if settled is None:
                    continue
                state, error = settled
                self.finish(request, state, error=error, result={"recovered": True} if state == "done" else None)
                fixed += 1
        return fixed
