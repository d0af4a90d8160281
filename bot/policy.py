"""Who may ask for an operation, who approves it, and how many approvals it needs: one table.

Keyed by (kind, protected stage?). `bot/access.py` answers every question about requests from
it (may this person ask, may this person press this button, do the requester and approvers still
hold their rights when the request moves on), and `docs/operations.md` shows it. A new kind of
operation adds its two lines here.

- `requesters`: who may ask (always the operators, today).
- `approvers`: `requester` (the operator confirms their own request), `approvers` (people in
  APPROVERS other than the requester), or `none` (no request at all: the command runs at once).
- `approvals`: how many; None means REQUIRED_APPROVALS.
- `confirmed_by_request`: the click that asks is itself the confirmation (a button behind Slack's
  confirm dialog, on an alert or a listing): the request runs at once, its message is the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Approvers = Literal["requester", "approvers", "none"]


@dataclass(frozen=True)
class Rule:
    approvers: Approvers
    approvals: int | None  # None: REQUIRED_APPROVALS
    confirmed_by_request: bool = False
    requesters: Literal["operators"] = "operators"


SELF = Rule("requester", 1)
SELF_AT_ONCE = Rule("requester", 1, confirmed_by_request=True)
TWO_PERSON = Rule("approvers", None)

RULES: dict[tuple[str, bool], Rule] = {
    # kind           protected?  rule
    ("delete", False): SELF,  # the plan is posted; its requester presses Delete
    ("delete", True): TWO_PERSON,
    ("restore", False): Rule("none", 0),  # `/mcp restore` runs at once (audited as a command)
    ("restore", True): TWO_PERSON,
    ("cancel", False): SELF_AT_ONCE,  # Cancel query on an alert or `/mcp sessions`
    ("cancel", True): TWO_PERSON,
    ("terminate", False): SELF_AT_ONCE,
    ("terminate", True): TWO_PERSON,
    ("create-index", False): SELF_AT_ONCE,  # Create index on a finding or `/mcp indexes`
    ("create-index", True): TWO_PERSON,
    ("drop-index", False): SELF_AT_ONCE,
    ("drop-index", True): TWO_PERSON,
    ("forget-user", False): SELF,  # the erasure's plan is posted; its requester presses Forget
    ("forget-user", True): TWO_PERSON,
}


class UnknownKind(KeyError):
    pass


def rule_for(kind: str, protected: bool) -> Rule:
    try:
        return RULES[(kind, protected)]
    except KeyError:
        raise UnknownKind(kind) from None
