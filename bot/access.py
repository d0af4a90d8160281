"""Who may do what: the only place that answers it."""

from __future__ import annotations

from dataclasses import dataclass

from bot.commands import Verb
from bot.config import Settings
from bot.errors import PermissionDenied

# Read-only verbs that still show other people's activity.
PRIVILEGED_READS = frozenset({"audit"})


@dataclass(frozen=True)
class AccessPolicy:
    settings: Settings

    def is_operator(self, user_id: str) -> bool:
        return user_id in self.settings.operators

    def is_approver(self, user_id: str) -> bool:
        return user_id in self.settings.approvers

    def check_verb(self, user_id: str, verb: Verb) -> None:
        """Raise PermissionDenied unless `user_id` may run `verb`; fail closed."""
        if verb.mutating and not self.is_operator(user_id):
            raise PermissionDenied(
                f"`{verb.name}` changes data: only operators may run it (ask an admin to add you to OPERATORS)"
            )
        if verb.name in PRIVILEGED_READS and not (self.is_operator(user_id) or self.is_approver(user_id)):
            raise PermissionDenied(f"`{verb.name}` is for operators and approvers only")
