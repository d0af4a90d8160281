"""The schema verbs: `/mcp migrations` and `/mcp drift`; results are plain data."""

from __future__ import annotations

from bot.runtime import Runtime
from bot.schema.drift import DriftReport, drift
from bot.service import CommandRequest, operation


@operation("drift")
def run_drift(runtime: Runtime, request: CommandRequest) -> DriftReport:
    args = request.parsed.args
    stage_a, stage_b = runtime.stages.get(args["stage-a"]), runtime.stages.get(args["stage-b"])
    return drift(stage_a, stage_b, runtime.settings.schema)
