"""Who may do what: the only place that answers it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bot.approvers import ApproverDirectory, Membership
from bot.commands import Verb
from bot.config import Settings
from bot.errors import PermissionDenied
from bot.policy import UnknownKind, rule_for

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

    # -- requests: every rule comes from bot/policy.py's table --------------------------------------

    def required_approvals(self, kind: str, protected: bool) -> int:
        rule = rule_for(kind, protected)
        return self.settings.required_approvals if rule.approvals is None else rule.approvals

    def runs_without_request(self, kind: str, *, protected: bool) -> bool:
        """The command itself is the confirmation (a restore on an unprotected stage)."""
        return rule_for(kind, protected).approvers == "none"

    def restore_needs_approval(self, *, protected: bool, dry_run: bool) -> bool:
        """A restore writes to the stage: whether it goes through a request is the table's answer."""
        return not dry_run and not self.runs_without_request("restore", protected=protected)

    def request_refusal(self, user_id: str, kind: str, *, protected: bool) -> str | None:
        """Why `user_id` may not ask for `kind` on a stage (protected or not) now, or None."""
        try:
            rule = rule_for(kind, protected)
        except UnknownKind:
            return f"`{kind}` is not an operation the bot knows"
        if rule.requesters == "operators" and not self.is_operator(user_id):
            return "only operators may ask for this (ask an admin to add you to OPERATORS)"
        return None

    def click_refusal(
        self,
        user_id: str,
        action: str,
        *,
        requester: str,
        protected: bool,
        approver: Membership | None = None,
        kind: str = "delete",
    ) -> str | None:
        """Why `user_id` may not press `action` on a request, or None; checked at every click.

        `approver` is the clicker's APPROVERS membership as resolved at the time of the click.
        """
        rule = rule_for(kind, protected)
        if action in ("confirm", "cancel"):
            if user_id != requester:
                return f"only <@{requester}>, who asked for it, can {action} it"
            if not self.is_operator(user_id):
                return "you are no longer an operator"
            if action == "confirm" and rule.approvers != "requester":
                return "on a protected stage someone else has to approve it"
            return None
        if action in ("approve", "reject"):
            if rule.approvers != "approvers":
                return "this stage needs no approval; the requester confirms it"
            if user_id == requester:
                return (
                    f"you asked for this {kind}, so someone else has to approve it"
                    if action == "approve"
                    else f"you asked for this {kind}; use Cancel instead"
                )
            return self._approver_refusal(approver)
        return "unknown action"

    @staticmethod
    def _approver_refusal(approver: Membership | None) -> str | None:
        if approver is None or not approver.is_approver:
            if approver is not None and approver.unresolved:
                return "your approver group membership could not be checked with Slack just now; try again"
            return "you are not in APPROVERS"
        return None

    def standing_refusal(
        self, *, kind: str, protected: bool, requester: str, approvals: list[str], membership: Any
    ) -> tuple[str, bool] | None:
        """Do the people behind a request still hold their rights now? Checked at every transition.

        The requester must still be allowed to ask; on a two-person stage each approval counted
        must come from someone still in APPROVERS (`membership(user)` resolves it now). Returns
        None, or (why not, transient): a lost right ends the request `revoked`; an approver group
        Slack could not resolve just now (transient) only holds it back.
        """
        if self.request_refusal(requester, kind, protected=protected):
            return (
                f"the requester ({requester}) is no longer allowed to ask for a {kind} (not in OPERATORS)",
                False,
            )
        if rule_for(kind, protected).approvers == "approvers":
            for user in approvals:
                if user == requester:
                    continue
                found = membership(user)
                if not found.is_approver and found.unresolved:
                    return f"the approval of {user} can't be checked with Slack just now", True
                if not found.is_approver:
                    return f"an approval no longer counts: {user} is no longer in APPROVERS", False
        return None
