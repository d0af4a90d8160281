"""The `/mcp impact`, `/mcp delete` and `/mcp pending` verbs: thin calls into the delete kind and the requests."""

from __future__ import annotations

from dataclasses import dataclass

from bot.deletion.impact import ImpactReport
from bot.errors import NotFound, UserFacingError
from bot.kinds.delete import DeletePosted, DeleteRefused, DryRunDone, delete_kind
from bot.platform import servers
from bot.requests.store import Request
from bot.runtime import Runtime
from bot.service import CommandRequest, operation
from bot.stages import Stage


def _stage(request: CommandRequest) -> Stage:
    assert request.stage is not None, "impact and delete always name a stage"
    return request.stage


def _with_suggestions(stage: Stage, error: NotFound, slug: str) -> NotFound:
    """An unknown slug answers with the closest slugs, as `/mcp find` does."""
    try:
        with stage.read() as conn:
            close = servers.close_slugs(conn, slug)
    except UserFacingError:
        return error
    if close:
        return NotFound(f"{error.message}. Close matches: {', '.join(f'`{c}`' for c in close)}")
    return error


@operation("impact")
def run_impact(runtime: Runtime, request: CommandRequest) -> ImpactReport:
    slug = request.parsed.args["slug"]
    try:
        return delete_kind(runtime).impact(_stage(request), slug)
    except NotFound as exc:
        raise _with_suggestions(_stage(request), exc, slug) from None


@operation("delete")
def run_delete(runtime: Runtime, request: CommandRequest) -> DeletePosted | DeleteRefused | DryRunDone:
    slug = request.parsed.args["slug"]
    try:
        return delete_kind(runtime).request(request)
    except NotFound as exc:
        raise _with_suggestions(_stage(request), exc, slug) from None


@dataclass(frozen=True)
class PendingRequests:
    requests: list[Request]  # the oldest open requests (at most 50)
    stage: str | None
    total: int = 0  # every open request (of the stage)


@operation("pending")
def run_pending(runtime: Runtime, request: CommandRequest) -> PendingRequests:
    stage = request.stage.name if request.stage else None
    return PendingRequests(runtime.requests.pending(stage), stage, runtime.requests.pending_count(stage))
