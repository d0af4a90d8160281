"""Kind `forget-user`: erase one end user on one stage (bot/erasure/), leaving a receipt.

- plan: the erasure's impact (rows deleted, anonymised, set to NULL per table; blockers; the servers
  the person used); `/mcp forget-user` asks. The request holds digests, never the identifier.
- check: on a protected stage the impact is taken again from those digests: other user rows or
  emails than approved make the request stale; counts beyond APPROVAL_DRIFT_PERCENT make it stale
  with a fresh request for the new numbers.
- run: the ledger row, then the erasure in one transaction (which finds the person again and compares
  the counts inside it), then the scoped backups read (or purged); the result is the receipt.
- verify: after the commit nothing matching the person is left (checked by the run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from bot.deletion.execute import SnapshotChanged
from bot.deletion.identity import snapshot_changes
from bot.erasure.plan import ErasureImpact, ErasureTarget
from bot.errors import NotFound, UserFacingError
from bot.pii import scrub
from bot.requests.asking import reason_for
from bot.requests.kinds import Kind, ProgressCallback, Proposal, Stale, kind
from bot.requests.store import Request
from bot.stages import Stage

if TYPE_CHECKING:
    from bot.runtime import Runtime
    from bot.service import CommandRequest


@dataclass(frozen=True)
class ErasurePosted:
    request: Request
    impact: ErasureImpact


@dataclass(frozen=True)
class ErasureRefused:
    """Blockers (a RESTRICT reference to the person's rows): the database would refuse, nothing is asked."""

    stage: str
    impact: ErasureImpact


def proposal(stage: Stage, impact: ErasureImpact, options: dict[str, Any]) -> Proposal:
    return Proposal(
        kind="forget-user",
        stage=stage.name,
        subject=impact.label,
        target=impact.target,
        impact=impact.to_json(),
        snapshot=impact.snapshot,
        options=options,
    )


@kind
class ForgetUserKind(Kind):
    name = "forget-user"
    title = "Forget user"
    done = "erased"

    def request(self, command: CommandRequest, stage: Stage, identifier: str) -> ErasurePosted | ErasureRefused:
        reason = reason_for(command, stage)
        reason = scrub(reason) if reason else reason  # kept with the request: an email in it is masked
        impact = self.runtime.erasures.impact(stage, identifier)
        if not impact.deletable:
            return ErasureRefused(stage.name, impact)
        options = {"purge_backups": bool(command.parsed.flags.get("purge-backups"))}
        posted = self.runtime.requests.propose(
            proposal(stage, impact, options),
            requester=command.actor,
            reason=reason,
            channel=command.invocation.channel_id,
            detail={"rows": impact.total_rows, "reason": reason or ""},
        )
        return ErasurePosted(posted, impact)

    def _target(self, request: Request) -> ErasureTarget:
        return ErasureTarget.from_json(request.target)

    def check(self, request: Request) -> None:
        if not request.protected:
            return  # the run compares the counts inside its transaction; the requester's own numbers, no drift
        stage = self.runtime.stages.get(request.stage)
        target = self._target(request)
        try:
            fresh = self.runtime.erasures.impact_of(stage, target.person)
        except NotFound:
            raise Stale("nothing matches the person any more", target_changed=True) from None
        if ErasureTarget.from_json(fresh.target) != target:
            raise Stale("the user rows or emails matching the person changed since the approval", target_changed=True)
        drift = float(self.runtime.settings.approval_drift_percent)
        changes = snapshot_changes(request.snapshot, fresh.snapshot, drift_percent=drift)
        if changes or not fresh.deletable:
            raise Stale(
                "the rows in scope changed since the approval: " + "; ".join((changes or ["now blocked"])[:6]),
                successor=proposal(stage, fresh, request.options) if fresh.deletable else None,
            )

    def run(self, request: Request, progress: ProgressCallback) -> dict[str, Any]:
        stage = self.runtime.stages.get(request.stage)
        impact = ErasureImpact.from_json(request.impact)
        erasures = self.runtime.erasures
        try:
            receipt = erasures.run(
                stage,
                self._target(request),
                expected=request.snapshot,
                requested_by=request.requester,
                approved_by=tuple(a for a in request.approvals if a != request.requester),
                reason=request.reason,
                request_id=request.id,
                purge_backups=bool(request.options.get("purge_backups")),
                budget_s=erasures.budget_s(impact),
                drift_percent=float(self.runtime.settings.approval_drift_percent) if request.protected else 0.0,
                lock_timeout_ms=self.runtime.settings.lock_timeout_ms,
                progress=progress,
                work_name=stage.work_name(f"request-{request.id}"),
            )
        except SnapshotChanged as exc:
            raise Stale(exc.message) from None
        return receipt.to_json()

    def verify(self, request: Request, result: dict[str, Any]) -> list[str]:
        return list(result.get("verification") or [])

    def recover(self, request: Request) -> tuple[str, str | None] | None:
        """One transaction: if the ledger row says it committed, or nothing matches any more, it happened."""
        entry = self.runtime.erasures.ledger.for_request(request.id)
        stage = self.runtime.stages.get(request.stage)
        try:
            self.runtime.erasures.impact_of(stage, self._target(request).person)
        except NotFound:
            if entry is not None:
                self.runtime.erasures.ledger.finish(entry.id, state="done", counts=entry.counts, verified=None)
            return "done", None
        except UserFacingError:
            return None  # the stage is unreachable: look again later
        if entry is not None:
            self.runtime.erasures.ledger.finish(entry.id, state="failed", counts={}, verified=None)
        return "failed", "the bot stopped while the erasure ran; the transaction was rolled back and nothing was erased"


def forget_user_kind(runtime: Runtime) -> ForgetUserKind:
    return cast(ForgetUserKind, runtime.requests.kind("forget-user"))
