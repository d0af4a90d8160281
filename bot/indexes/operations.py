"""`/mcp indexes`: read-only, with the same buttons as the index findings of the health checks."""

from __future__ import annotations

from bot.indexes.listing import IndexList, list_indexes
from bot.runtime import Runtime
from bot.service import CommandRequest, operation


@operation("indexes")
def run_indexes(runtime: Runtime, request: CommandRequest) -> IndexList:
    stage = request.stage
    assert stage is not None, "indexes always names a stage"
    with stage.read() as conn:
        return list_indexes(conn, stage.name, runtime.settings.health)
