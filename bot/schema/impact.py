"""The impact report's schema warning: the tables a delete touches, compared with MIGRATION_REFERENCE_STAGE.

A delete planned on a stage whose tables differ from the reference stage (a missing index, another ON DELETE
rule, a dropped NOT NULL) may not do on that stage what it was tried on elsewhere: the report says so, in
plain lines (identifiers in backticks), before anyone approves. The reference being unreachable is a line too,
never a failure of the report.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from bot.config import SchemaSettings
from bot.errors import UserFacingError
from bot.pgcatalog import DATABASE
from bot.schema.drift import compare, read_both, skip_for
from bot.stages import Stage, StageRegistry

log = logging.getLogger(__name__)

MAX_LINES = 8
MAX_LINE_CHARS = 300


def _clip(line: str) -> str:
    return line if len(line) <= MAX_LINE_CHARS else line[: MAX_LINE_CHARS - 1] + "…"


def _qualified(table: str) -> str:
    """The snapshot's group for a table as the deletion engine names it (`public` left out)."""
    return table if "." in table else f"public.{table}"


def scope_drift_warnings(
    stages: StageRegistry, stage: Stage, tables: Iterable[str], settings: SchemaSettings
) -> list[str]:
    """Lines for the impact report; empty when the tables match the reference (or there is none to compare)."""
    reference_name = settings.reference_stage
    if reference_name is None or reference_name == stage.name or reference_name not in stages.names:
        return []
    reference = stages.get(reference_name)
    scope = {_qualified(t) for t in tables}
    try:
        mine, theirs = read_both([stage, reference], skip_for(settings))
    except UserFacingError as exc:
        log.info("impact: reference schema not compared", extra={"stage": stage.name, "reference": reference_name})
        return [f"The schema was not compared with {reference_name} (MIGRATION_REFERENCE_STAGE): {exc.message}"]
    diffs = [
        d
        for d in compare(mine.restricted_to(scope), theirs.restricted_to(scope), stage.name, reference_name)
        if d.group != DATABASE
    ]
    if not diffs:
        return []
    touched = sorted({d.group.removeprefix("public.") for d in diffs})
    lines = [
        f"The schema differs from {reference_name} (MIGRATION_REFERENCE_STAGE) in {len(touched)} table"
        f"{'s' if len(touched) != 1 else ''} in scope ({', '.join(f'`{t}`' for t in touched)}): "
        f"this delete may not behave here as it does there."
    ]
    lines += [_clip(d.describe(stage.name, reference_name)) for d in diffs[:MAX_LINES]]
    if len(diffs) > MAX_LINES:
        lines.append(f"… and {len(diffs) - MAX_LINES} more: `/mcp drift {stage.name} {reference_name}`")
    return lines
