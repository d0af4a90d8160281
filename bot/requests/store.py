"""Requests in the bot database: a state machine whose every move is a compare-and-set.

A request asks for one operation of some kind (`delete`, `restore`, `cancel`, ...: bot/kinds/) on
one stage; this module knows nothing of kinds. Its row names the target by identity (`target`,
stored in the historic `server_key` column: a server's primary key, a backend's pid and
`backend_start`, an index's table and columns) with a short `subject` in words (stored in the
historic `slug` column), and keeps the snapshot of counts its approvers saw with its hash.

    pending -> approved -> running -> done | failed | stale | revoked
    pending -> rejected | cancelled | expired | stale | revoked

Each transition is one `UPDATE ... WHERE id = :id AND state = <expected> RETURNING *`; no row
back means somebody else moved it first (a second click, another replica), and the caller
does nothing. Votes are rows keyed by (request, voter), so a double click is a no-op; the
vote that completes the quorum moves the request to `approved` under the request's row lock.
On an unprotected stage the requester's own confirmation is the approval (quorum of one).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    Table,
    Text,
    cast,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert

from bot.botdb import metadata, reading
from bot.policy import UnknownKind, rule_for

STATES = (
    "pending",
    "approved",
    "running",
    "done",
    "failed",
    "rejected",
    "cancelled",
    "expired",
    "stale",
    "revoked",  # the requester (or an approver) lost the right before it ran: it never runs
)
OPEN_STATES = ("pending", "approved", "running")
FINAL_STATES = tuple(s for s in STATES if s not in OPEN_STATES)
STATE_CHECK = f"state IN ({', '.join(repr(s) for s in STATES)})"

delete_requests = Table(
    "delete_requests",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("stage", Text, nullable=False),
    Column("slug", Text, nullable=False),
    Column("server_key", JSONB, nullable=False, server_default="{}"),
    Column("requester", Text, nullable=False),
    Column("reason", Text),
    Column("protected", Boolean, nullable=False),
    Column("required_approvals", Integer, nullable=False),
    Column("state", Text, nullable=False),
    Column("impact", JSONB, nullable=False),
    Column("snapshot", JSONB, nullable=False),
    Column("snapshot_hash", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("channel", Text),
    Column("message_ts", Text),
    Column("decided_by", Text),
    Column("decision_reason", Text),
    Column("runner", Text),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("result", JSONB),
    Column("error", Text),
    Column("reminded_at", DateTime(timezone=True)),
    Column("replaces", BigInteger),
    Column("replaced_by", BigInteger),
    Column("kind", Text, nullable=False, server_default="delete"),  # a kind of bot/kinds/
    Column("options", JSONB, nullable=False, server_default="{}"),  # the kind's own (delete: {"backup": bool})
    CheckConstraint(STATE_CHECK, name="delete_requests_state_check"),
    Index("delete_requests_open_idx", "state", "expires_at"),
    Index("delete_requests_stage_idx", "stage", "state"),
)

delete_votes = Table(
    "delete_request_votes",
    metadata,
    Column("request_id", BigInteger, ForeignKey("delete_requests.id", ondelete="CASCADE"), nullable=False),
    Column("voter", Text, nullable=False),
    Column("vote", Text, nullable=False),  # confirm | approve | reject
    Column("reason", Text),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("request_id", "voter"),
    CheckConstraint("vote IN ('confirm', 'approve', 'reject')", name="delete_request_votes_vote_check"),
)


@dataclass(frozen=True)
class Vote:
    voter: str
    vote: str
    reason: str | None
    at: datetime


@dataclass(frozen=True)
class Request:
    id: int
    stage: str
    slug: str
    server_key: dict[str, str]
    requester: str
    reason: str | None
    protected: bool
    required_approvals: int
    state: str
    impact: dict[str, Any]
    snapshot: dict[str, int]
    snapshot_hash: str
    created_at: datetime
    expires_at: datetime
    updated_at: datetime
    channel: str | None
    message_ts: str | None
    decided_by: str | None
    decision_reason: str | None
    runner: str | None
    started_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] | None
    error: str | None
    reminded_at: datetime | None
    replaces: int | None
    replaced_by: int | None
    kind: str = "delete"
    options: dict[str, Any] = field(default_factory=dict)
    votes: tuple[Vote, ...] = field(default=())

    @property
    def approvals(self) -> list[str]:
        return [v.voter for v in self.votes if v.vote in ("approve", "confirm")]

    @property
    def subject(self) -> str:
        """What the request is about, in words (a slug, `pid 4242`, `public.t (a, b)`)."""
        return self.slug

    @property
    def target(self) -> dict[str, Any]:
        """The target's identity by key, as the approvers saw it; the kind's check compares it."""
        return self.server_key

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    @property
    def needs_approvers(self) -> bool:
        """Approvers other than the requester decide it (else its requester confirms it): bot/policy.py's answer."""
        try:
            return rule_for(self.kind, self.protected).approvers == "approvers"
        except UnknownKind:
            return self.protected


def _request(row: Any, votes: tuple[Vote, ...] = ()) -> Request:
    values = {c.name: row._mapping[c.name] for c in delete_requests.columns}
    return Request(**values, votes=votes)


# Called inside a transition's transaction with the request as it now is: queues its Slack update.
Notify = Callable[[Connection, Request], None]


@dataclass(frozen=True)
class VoteOutcome:
    request: Request
    recorded: bool  # False: this voter had already voted (double click)
    approved_now: bool  # this vote completed the quorum


class RequestStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, conn: Connection | None = None, **values: Any) -> Request:
        stmt = delete_requests.insert().values(**values).returning(*delete_requests.columns)
        if conn is not None:
            return _request(conn.execute(stmt).one())
        with self.engine.begin() as own:
            return _request(own.execute(stmt).one())

    def _votes(self, conn: Connection, request_id: int) -> tuple[Vote, ...]:
        rows = conn.execute(
            select(delete_votes).where(delete_votes.c.request_id == request_id).order_by(delete_votes.c.at)
        )
        return tuple(Vote(r.voter, r.vote, r.reason, r.at) for r in rows)

    def get(self, request_id: int, conn: Connection | None = None) -> Request | None:
        if conn is None:
            with reading(self.engine) as own:
                return self.get(request_id, own)
        row = conn.execute(select(delete_requests).where(delete_requests.c.id == request_id)).first()
        return _request(row, self._votes(conn, request_id)) if row else None

    def list(self, *, states: tuple[str, ...], stage: str | None = None, limit: int = 50) -> list[Request]:
        query = select(delete_requests).where(delete_requests.c.state.in_(states))
        if stage:
            query = query.where(delete_requests.c.stage == stage)
        with reading(self.engine) as conn:
            rows = conn.execute(query.order_by(delete_requests.c.id).limit(limit)).all()
            return [_request(r, self._votes(conn, r.id)) for r in rows]

    def count(self, *, states: tuple[str, ...], stage: str | None = None) -> int:
        query = select(func.count()).select_from(delete_requests).where(delete_requests.c.state.in_(states))
        if stage:
            query = query.where(delete_requests.c.stage == stage)
        with reading(self.engine) as conn:
            return int(conn.execute(query).scalar_one())

    def find_open(self, conn: Connection, *, stage: str, kind: str, target: dict[str, Any]) -> Request | None:
        """An open request for the same operation on the same target (a double click), under a lock on that key.

        The lock is held until `conn`'s transaction ends, so two clicks at once create one request.
        """
        key = f"{stage}/{kind}/{json.dumps(target, sort_keys=True, default=str)}"
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": key})
        row = conn.execute(
            select(delete_requests)
            .where(
                delete_requests.c.stage == stage,
                delete_requests.c.kind == kind,
                delete_requests.c.server_key == cast(target, JSONB),
                delete_requests.c.state.in_(OPEN_STATES),
            )
            .order_by(delete_requests.c.id.desc())
            .limit(1)
        ).first()
        return _request(row, self._votes(conn, row.id)) if row else None

    def ids_where(self, *conditions: Any) -> list[int]:
        with reading(self.engine) as conn:
            return list(conn.execute(select(delete_requests.c.id).where(*conditions)).scalars())

    def set_message(self, request_id: int, channel: str, ts: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(delete_requests)
                .where(delete_requests.c.id == request_id)
                .values(channel=channel, message_ts=ts, updated_at=func.now())
            )

    def transition(
        self,
        request_id: int,
        expect: str | tuple[str, ...],
        to: str,
        *,
        notify: Notify | None = None,
        where: tuple[Any, ...] = (),
        **values: Any,
    ) -> Request | None:
        """Move `expect` -> `to` atomically; None if the request was not in `expect` (someone else won)."""
        expected = (expect,) if isinstance(expect, str) else expect
        with self.engine.begin() as conn:
            row = conn.execute(
                update(delete_requests)
                .where(delete_requests.c.id == request_id, delete_requests.c.state.in_(expected), *where)
                .values(state=to, updated_at=func.now(), **values)
                .returning(*delete_requests.columns)
            ).first()
            if row is None:
                return None
            request = _request(row, self._votes(conn, request_id))
            if notify is not None:
                notify(conn, request)
            return request

    def add_vote(self, conn: Connection, request_id: int, voter: str, vote: str) -> None:
        """A vote recorded with the request's creation (the asking click was the confirmation)."""
        conn.execute(insert(delete_votes).values(request_id=request_id, voter=voter, vote=vote))

    def vote(
        self,
        request_id: int,
        voter: str,
        vote: str,
        *,
        now: datetime,
        reason: str | None = None,
        notify: Notify | None = None,
    ) -> VoteOutcome | None:
        """Record a vote on a pending, unexpired request; None if it no longer takes votes.

        The request row is locked for the transaction, so two votes completing the quorum at
        once are counted one after the other and only one of them approves.
        """
        with self.engine.begin() as conn:
            row = conn.execute(
                select(delete_requests)
                .where(
                    delete_requests.c.id == request_id,
                    delete_requests.c.state == "pending",
                    delete_requests.c.expires_at > now,
                )
                .with_for_update()
            ).first()
            if row is None:
                return None
            inserted = conn.execute(
                insert(delete_votes)
                .values(request_id=request_id, voter=voter, vote=vote, reason=reason)
                .on_conflict_do_nothing()
                .returning(delete_votes.c.voter)
            ).first()
            request = _request(row, self._votes(conn, request_id))
            if inserted is None:
                return VoteOutcome(request, recorded=False, approved_now=False)
            if vote == "reject":
                updated = conn.execute(
                    update(delete_requests)
                    .where(delete_requests.c.id == request_id)
                    .values(state="rejected", decided_by=voter, decision_reason=reason, updated_at=func.now())
                    .returning(*delete_requests.columns)
                ).one()
                request = _request(updated, self._votes(conn, request_id))
                if notify is not None:
                    notify(conn, request)
                return VoteOutcome(request, recorded=True, approved_now=False)
            if len(request.approvals) >= max(request.required_approvals, 1):
                updated = conn.execute(
                    update(delete_requests)
                    .where(delete_requests.c.id == request_id)
                    .values(state="approved", decided_by=voter, updated_at=func.now())
                    .returning(*delete_requests.columns)
                ).one()
                request = _request(updated, self._votes(conn, request_id))
                if notify is not None:
                    notify(conn, request)
                return VoteOutcome(request, recorded=True, approved_now=True)
            if notify is not None:
                notify(conn, request)
            return VoteOutcome(request, recorded=True, approved_now=False)
