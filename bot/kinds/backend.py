"""Kinds `cancel` and `terminate`: signal one backend of a stage (bot/sessions/).

- plan: from a button on an alert or on `/mcp sessions`: the backend by identity (pid,
  backend_start, query or transaction start, what it was doing), as it is now; a target that is
  gone, or that the bot refuses to signal (its own, a superuser's, a replication backend, a role
  it lacks the grant for), answers at once and asks nothing.
- check: still the same backend doing the same thing, else stale: "already gone, nothing sent".
- run: the re-check and the signal in one statement; then pg_stat_activity again: did it stop,
  and how many sessions wait on locks before and after. The report goes to the alert's thread.
"""

from __future__ import annotations

from typing import Any

from bot.requests.kinds import Kind, ProgressCallback, Proposal, Stale, kind
from bot.requests.store import Request
from bot.sessions import signal
from bot.stages import Stage


class BackendSignal(Kind):
    how = "cancel"

    def plan(self, stage: Stage, target: dict[str, Any], options: dict[str, Any]) -> Proposal:
        now = signal.current(stage, target, self.how)
        return Proposal(
            kind=self.name,
            stage=stage.name,
            subject=f"pid {now.pid}",
            target=dict(target),
            impact={"label": now.label, "state": now.state, "query": now.query, "blocking": now.blocking},
            snapshot={"blocking": now.blocking},
            options=options,
        )

    def check(self, request: Request) -> None:
        stage = self.runtime.stages.get(request.stage)
        try:
            signal.current(stage, request.target, self.how)
        except signal.Gone as exc:
            raise Stale(exc.message, target_changed=True) from None

    def run(self, request: Request, progress: ProgressCallback) -> dict[str, Any]:
        stage = self.runtime.stages.get(request.stage)
        try:
            report = signal.send(
                stage,
                request.target,
                self.how,
                lock_timeout_ms=self.runtime.settings.lock_timeout_ms,
                work_name=stage.work_name(f"request-{request.id}"),
            )
        except signal.Gone as exc:
            raise Stale(exc.message, target_changed=True) from None
        return report.to_json()

    def recover(self, request: Request) -> tuple[str, str | None] | None:
        """The bot stopped around the signal: whether it was sent can't be told; say what the backend does now."""
        stage = self.runtime.stages.get(request.stage)
        try:
            signal.current(stage, request.target, self.how)
        except signal.Gone:
            return "failed", "the bot stopped while signalling; the backend has stopped since (check the alert)"
        except signal.Refused as exc:
            return "failed", exc.message
        return "failed", "the bot stopped before the signal; the backend is still there: ask again if needed"


@kind
class CancelKind(BackendSignal):
    name = "cancel"
    title = "Cancel query"
    done = "signalled"
    how = "cancel"


@kind
class TerminateKind(BackendSignal):
    name = "terminate"
    title = "Terminate session"
    done = "signalled"
    how = "terminate"
