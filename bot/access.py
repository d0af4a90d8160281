"""Who may do what: the only place that answers it."""

from __future__ import annotations

from dataclasses import dataclass

from bot.approvers import ApproverDirectory, Membership
from bot.commands import Verb
from bot.config import Settings
from bot.errors import PermissionDenied

# Read-only verbs that still show other people's activity.
PRIVILEGED_READS = frozenset({"audit", "backups", "pending"})


@dataclass(frozen=True)
class AccessPolicy:
    settings: Settings
    # APPROVERS with user groups expanded (a Slack call, cached); None: user IDs only.
    directory: ApproverDirectory | None = None

    def is_operator(self, user_id: str) -> bool:
        return user_id in self.settings.operators

    def is_approver(self, user_id: str) -> bool:
        """In APPROVERS now, by user ID or through a user group (which may ask Slack: not before an ack)."""
        if user_id in self.settings.approvers:
            return True
        return self.directory is not None and self.directory.membership(user_id).is_approver

    def _may_be_approver(self, user_id: str) -> bool:
        """No I/O: an approver by ID, or possibly through a group (decided after the ack)."""
        return user_id in self.settings.approvers or bool(self.directory and self.directory.groups)

    def check_verb(self, user_id: str, verb: Verb) -> None:
        """Raise PermissionDenied unless `user_id` may run `verb`; fail closed. No I/O (runs before the ack)."""
        if verb.mutating and not self.is_operator(user_id):
            raise PermissionDenied(
                f"`{verb.name}` changes data: only operators may run it (ask an admin to add you to OPERATORS)"
            )
        if verb.name in PRIVILEGED_READS and not (self.is_operator(user_id) or self._may_be_approver(user_id)):
            raise PermissionDenied(f"`{verb.name}` is for operators and approvers only")

    def check_after_ack(self, user_id: str, verb: Verb) -> None:
        """What `check_verb` could not decide without asking Slack: approvers through a user group."""
        if verb.name in PRIVILEGED_READS and not (self.is_operator(user_id) or self.is_approver(user_id)):
            raise PermissionDenied(f"`{verb.name}` is for operators and approvers only")

    def alert_attention_refusal(self, user_id: str) -> str | None:
        """Acknowledge and Snooze on alerts: operators and approvers (may ask Slack: after the ack)."""
        if self.is_operator(user_id) or self.is_approver(user_id):
            return None
        return "only operators and approvers can acknowledge or snooze alerts"

    @staticmethod
    def restore_needs_approval(*, protected: bool, dry_run: bool) -> bool:
        """A restore writes to the stage: on a protected stage it needs the two-person approval of a delete."""
        return protected and not dry_run

    def delete_click_refusal(
        self,
        user_id: str,
        action: str,
        *,
        requester: str,
        protected: bool,
        approver: Membership | None = None,
        kind: str = "delete",
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
                    f"you asked for this {kind}, so someone else has to approve it"
                    if action == "approve"
                    else f"you asked for this {kind}; use Cancel instead"
                )
            if approver is None or not approver.is_approver:
                if approver is not None and approver.unresolved:
                    return "your approver group membership could not be checked with Slack just now; try again"
                return "you are not in APPROVERS"
            return None
        return "unknown action"
