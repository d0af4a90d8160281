"""The interface every kind of operation implements, and the registry of kinds.

A kind is four small parts (design notes: "Operations are one machine with many kinds"):

- **plan**: what it will touch, in words and counts: a `Proposal` (made by the kind's own entry
  point: a command, a button), which becomes the request its approvers look at;
- **check**: is the target still the one approved (same identity, same counts)? Raise `Stale`
  if not: the request ends `stale` and nothing happens;
- **run**: the effect; return the result (JSON) the request keeps, raise `Stale` (nothing done),
  or raise a UserFacingError (failed: nothing done, or rolled back);
- **verify**: did it happen? Problems found after the effect, in words.

The machine (bot/requests/machine.py) owns everything else (states, votes, expiry, exactly-once,
audit, outbox, App Home, `/mcp pending`) and calls the kind at those four points. Who may ask
and approve is the table in bot/policy.py. docs/operations.md: "Adding a kind".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from bot.errors import UserFacingError
from bot.requests.store import Request

if TYPE_CHECKING:
    from bot.runtime import Runtime
    from bot.stages import Stage


@dataclass(frozen=True)
class Proposal:
    """A planned operation, as its approvers will see it; stored with the request."""

    kind: str
    stage: str
    subject: str  # what it is about, in words: a slug, `pid 4242`, `public.t (a, b)`
    target: dict[str, Any]  # the target's identity by key, what `check` compares (never a reusable name)
    impact: dict[str, Any]  # the kind's plan, for its message (JSON); `total_rows` if it counts rows
    snapshot: dict[str, int] = field(default_factory=dict)  # counts the approvers saw (hashed with the request)
    options: dict[str, Any] = field(default_factory=dict)  # the kind's own (`thread_ts`: post in that thread)


class Stale(UserFacingError):
    """The target is not what was approved any more; nothing was done.

    `successor`: the same operation planned afresh, to post for a new approval (delete drift).
    """

    outcome = "stale"

    def __init__(self, message: str, *, successor: Proposal | None = None, **result: Any) -> None:
        super().__init__(message)
        self.successor = successor
        self.result = result


# Called by a kind while it runs, as often as it likes: the machine throttles the message updates.
ProgressCallback = Callable[[Any], None]


class Kind:
    """Subclass, set the class attributes, implement `run` (and `check`, `verify` where they mean something)."""

    name: ClassVar[str]  # as stored in requests.kind and keyed in bot/policy.py
    title: ClassVar[str]  # a message header: "Delete", "Cancel query"
    done: ClassVar[str]  # past tense for "nothing was …": "deleted", "signalled"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def plan(self, stage: Stage, target: dict[str, Any], options: dict[str, Any]) -> Proposal:
        """A button's ask (an alert's, a listing's): the target as it is now; a UserFacingError says why not."""
        raise UserFacingError(f"a {self.name} is not asked for with a button")

    def check(self, request: Request) -> None:
        """Raise Stale unless the target is still the one approved. Runs right before `run`."""

    def run(self, request: Request, progress: ProgressCallback) -> dict[str, Any]:
        raise NotImplementedError

    def verify(self, request: Request, result: dict[str, Any]) -> list[str]:
        """Problems found after the effect (empty: it happened as planned)."""
        return []

    def recover(self, request: Request) -> tuple[str, str | None] | None:
        """A request left `running` by a process that died: ("done" | "failed", error) or None (look later).

        The default: nothing can tell, so it failed and its message says to look.
        """
        return "failed", f"the bot stopped while the {self.name} ran; check the stage before asking again"

    def notes(self, request: Request) -> dict[str, Any]:
        """Facts its message shows that are not stored with the request (where a backup would go)."""
        return {}


KINDS: dict[str, type[Kind]] = {}


def kind(cls: type[Kind]) -> type[Kind]:
    """Register a kind (a class decorator); its module must be listed in bot/kinds/__init__.py."""
    if cls.name in KINDS and KINDS[cls.name] is not cls:
        raise ValueError(f"operation kind {cls.name!r} is registered twice")
    KINDS[cls.name] = cls
    return cls
