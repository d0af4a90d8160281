"""What every command that asks for an operation shares."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.errors import CommandError
from bot.stages import Stage

if TYPE_CHECKING:
    from bot.service import CommandRequest


def reason_for(request: CommandRequest, stage: Stage) -> str | None:
    """`--reason`, which a change on a protected stage must give."""
    reason: str | None = request.parsed.flags.get("reason")
    if stage.protected and not reason:
        raise CommandError(
            f'stage {stage.name} is protected: say why with `--reason "..."`', usage=request.parsed.verb.usage()
        )
    return reason
