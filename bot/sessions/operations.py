"""`/mcp sessions`: what the session checks see on a stage, read-only, with the same buttons as the alerts."""

from __future__ import annotations

from bot.runtime import Runtime
from bot.service import CommandRequest, operation
from bot.sessions.activity import SessionList, list_sessions

CATEGORIES = ("long", "idle", "blocked")


@operation("sessions")
def run_sessions(runtime: Runtime, request: CommandRequest) -> SessionList:
    stage = request.stage
    assert stage is not None, "sessions always names a stage"
    which = tuple(c for c in CATEGORIES if request.parsed.flags.get(c)) or CATEGORIES
    with stage.read() as conn:
        return list_sessions(conn, stage.name, runtime.settings.health, which)
