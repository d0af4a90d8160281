"""`/mcp forget-user <email|distinct-id|user-id> --stage S [--dry-run] [--reason "..."] [--all-stages]
[--purge-backups]`: a dry run, the dry run on every stage, or an erasure request (a kind of operation);
`--purge-backups` for a person already erased without it purges the backups still holding them."""

from __future__ import annotations

from typing import Any

from bot.erasure.service import ErasureBlocked
from bot.errors import CommandError, NotFound
from bot.kinds.forget_user import ErasureRefused, forget_user_kind
from bot.runtime import Runtime
from bot.service import CommandRequest, operation
from bot.stages import Stage

IDENTIFIER = "email|distinct-id|user-id"


def identifier_of(request: CommandRequest) -> str:
    return request.parsed.args[IDENTIFIER]


def stage_of(runtime: Runtime, request: CommandRequest) -> Stage:
    """`--stage`, or the channel's stage; never a default production."""
    if request.stage is not None:
        return request.stage
    return runtime.stages.resolve(None, request.invocation.channel_id)


@operation("forget-user")
def run_forget_user(runtime: Runtime, request: CommandRequest) -> Any:
    flags = request.parsed.flags
    identifier = identifier_of(request)
    if flags.get("all-stages"):
        if request.parsed.stage:
            raise CommandError(
                "`--all-stages` dry-runs every stage: leave out `--stage`", usage=request.parsed.verb.usage()
            )
        if flags.get("purge-backups"):
            raise CommandError(
                "`--all-stages` only dry-runs: ask for `--purge-backups` stage by stage",
                usage=request.parsed.verb.usage(),
            )
        return runtime.erasures.all_stages(runtime.stages, identifier)
    stage = stage_of(runtime, request)
    if flags.get("dry-run"):
        try:
            return runtime.erasures.dry_run(stage, identifier)
        except ErasureBlocked as blocked:
            return ErasureRefused(blocked.stage, blocked.impact)
    try:
        return forget_user_kind(runtime).request(request, stage, identifier)
    except NotFound:
        # Nothing matches any more: if the person was erased without --purge-backups, purge those now.
        purged = runtime.erasures.purge_later(stage, identifier) if flags.get("purge-backups") else None
        if purged is None:
            raise
        if purged.request_id is not None and purged.backups:
            # The request's message is the receipt: it now says what became of those backups.
            runtime.requests.amend_result(purged.request_id, {"backups": purged.recorded, "purged": True})
        return purged
