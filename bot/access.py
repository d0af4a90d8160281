"""Who may do what: the only place that answers it."""

from __future__ import annotations

from dataclasses import dataclass

from bot.approvers import Membership
from bot.commands import Verb
from bot.config import Settings
from bot.errors import PermissionDenied

# Read-only verbs that still show other people's activity.
PRIVILEGED_READS = frozenset({"audit", "backups", "pending"})


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

    def check_restore(self, stage: str, *, protected: bool, dry_run: bool) -> None:
        """A restore writes to the stage: on a protected stage it needs the two-person approval of a delete.

        Until approvals are wired to restores, a protected stage only allows `--dry-run`, which writes nothing.
        """
        if protected and not dry_run:
            raise PermissionDenied(
                f"stage {stage} is protected: a restore there needs two-person approval, which restores do not"
                " have yet. `--dry-run` checks the backup and its conflicts without writing."
            )

    def delete_click_refusal(
        self,
        user_id: str,
        action: str,
        *,
        requester: str,
        protected: bool,
        approver: Membership | None = None,
    ) -> str | None:
        """Why `user_id` may not press `action` on a delete request, or None; checked at every click.

        `approver` is the clicker's APPROVERS membership as resolved at the time of the click.
        """
        if action in ("confirm", "cancel"):
            if user_id != requester:
                return f"only <@{requester}>, who asked for it, can {action} it"
            if not self.is_operator(user_id):
                return "you are no longer an operator"
            if action == "confirm" and protected:
                return "on a protected stage someone else has to approve it"
            return None
        if action in ("approve", "reject"):
            if not protected:
                return "this stage needs no approval; the requester confirms it"
            if user_id == requester:
                return (
                    "you asked for this delete, so someone else has to approve it"
                    if action == "approve"
                    else "you asked for this delete; use Cancel instead"
                )
            if approver is None or not approver.is_approver:
                if approver is not None and approver.unresolved:
                    return "your approver group membership could not be checked with Slack just now; try again"
                return "you are not in APPROVERS"
            return None
        return "unknown action"
