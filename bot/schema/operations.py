"""The schema verbs: `/mcp migrations` and `/mcp drift`; results are plain data."""

from __future__ import annotations

from bot.runtime import Runtime
from bot.schema.drift import DriftReport, drift
from bot.schema.migrations import MigrationsReport, migrations_report
from bot.service import CommandRequest, operation


@operation("drift")
def run_drift(runtime: Runtime, request: CommandRequest) -> DriftReport:
    args = request.parsed.args
    stage_a, stage_b = runtime.stages.get(args["stage-a"]), runtime.stages.get(args["stage-b"])
    return drift(stage_a, stage_b, runtime.settings.schema)


@operation("migrations")
def run_migrations(runtime: Runtime, request: CommandRequest) -> MigrationsReport:
    stages = [request.stage] if request.stage is not None else list(runtime.stages.all.values())
    if request.stage is not None and runtime.settings.schema.reference_stage not in (None, request.stage.name):
        # The reference is read too, so "N behind staging" can be said of the one stage asked about.
        stages.append(runtime.stages.get(runtime.settings.schema.reference_stage))
    return migrations_report(stages, runtime.settings.schema)
