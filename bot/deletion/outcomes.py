"""A delete's result types and refusals, apart from the engine so callers can name them without it."""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.errors import UserFacingError


class DeleteFailed(UserFacingError):
    """The delete did not happen; the transaction was rolled back."""

    outcome = "failed"


class SnapshotChanged(DeleteFailed):
    """The fresh counts differ from the confirmed ones; nothing was deleted."""

    outcome = "stale"

    def __init__(self, message: str, *, changes: list[str], fresh: dict[str, int]) -> None:
        super().__init__(message)
        self.changes = changes
        self.fresh = fresh


class Blocked(DeleteFailed):
    outcome = "blocked"


@dataclass
class StepResult:
    key: str
    table: str
    action: str
    rows: int
    seconds: float


@dataclass
class DeleteResult:
    slug: str
    counts: dict[str, int]
    steps: list[StepResult]
    duration_s: float
    dry_run: bool
    verified: bool
    verification: list[str] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        return sum(s.rows for s in self.steps if s.action == "delete")
