"""The findings a scheduled run raises about itself, and how soon alerts clear.

Split from monitor.py (which runs the rounds and schedules them) so the alert wording and the
clearing rules for "stage unreachable" and "check keeps failing" live in one small place.
"""

from __future__ import annotations

from bot.health.alerts import UNREACHABLE_CHECK
from bot.health.checks import REGISTRY, UNAVAILABLE_PREFIX, CheckReport, Finding

FAILING_PREFIX = "check_failing:"
# Findings whose absence is proof (the stage answered, the extension is there, the index was dropped,
# the check worked): they resolve at the first run without them, not after ALERT_CLEAR_AFTER_RUNS.
CLEAR_AT_ONCE = frozenset(
    {UNREACHABLE_CHECK, "pg_stat_statements", *(spec.name for spec in REGISTRY if spec.clear_at_once)}
)


def failing_check(check: str) -> str:
    """The alert check under which `check` failing run after run is reported."""
    return f"{FAILING_PREFIX}{check}"


def clears_at_once(check: str) -> bool:
    """Alerts whose absence is proof resolve at the first run without them."""
    return check in CLEAR_AT_ONCE or check.startswith(UNAVAILABLE_PREFIX)


def failing_finding(stage: str, report: CheckReport, runs: int) -> Finding:
    return Finding(
        check=failing_check(report.check),
        object="check",
        severity="warning",
        title=f"health check {report.label} keeps failing",
        detail=(
            f"It failed {runs} run{'s' if runs != 1 else ''} in a row, most recently: {report.summary}. Until it "
            "works again its own alerts stay as they are: nothing new fires and nothing resolves."
        ),
        advice=(
            "A time limit (HEALTH_STATEMENT_TIMEOUT_MS) points at a loaded server or a very large catalog: look at "
            "what the database is busy with, or raise the limit. A permission error needs a grant to the stage's "
            f"role (`pg_monitor`). `/mcp health --stage {stage}` shows the error now; this alert resolves when the "
            "check works again."
        ),
        remind=False,
    )


def unreachable_finding(stage: str, reason: str) -> Finding:
    return Finding(
        check=UNREACHABLE_CHECK,
        object="stage",
        severity="critical",
        title=f"stage {stage} is unreachable",
        detail=f"{reason}. Commands on this stage fail until it answers; its other alerts are held meanwhile.",
        advice=(
            "Check the database server (RDS console, events and status), the network path and the credentials "
            f"in DATABASE_URL_{stage.upper()}. The alert resolves by itself when the stage answers again."
        ),
    )
