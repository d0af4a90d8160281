"""A per-user limit on mutating commands, shared by every replica through the bot database.

A sliding one-minute window: each accepted command is a row; a user with `limit` rows in the
last minute is refused until the oldest one ages out. The check and the insert run under a
transaction-level advisory lock on the user, so two replicas cannot both let the 11th through.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Column, DateTime, Engine, Index, Table, Text, delete, func, select, text
from sqlalchemy.exc import SQLAlchemyError

from bot import deliveries
from bot.botdb import metadata
from bot.errors import RateLimited, UserFacingError

WINDOW = timedelta(minutes=1)

rate_limit_hits = Table(
    "rate_limit_hits",
    metadata,
    Column("actor", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("rate_limit_hits_actor_at_idx", "actor", "at"),
)


class RateLimitUnavailable(UserFacingError):
    outcome = "unavailable"


class RateLimiter:
    def __init__(self, engine: Engine, per_minute: int, *, clock: Callable[[], datetime] | None = None) -> None:
        self.engine = engine
        self.per_minute = per_minute
        self.clock = clock or (lambda: datetime.now(UTC))

    def check(self, actor: str, *, delivery: str | None = None) -> None:
        """Count one mutating command for `actor`, or raise RateLimited; fails closed.

        `delivery` (Slack's trigger_id) is claimed first: a retry of a command already counted
        raises DuplicateDelivery and counts nothing (bot/deliveries.py).
        """
        now = self.clock()
        since = now - WINDOW
        try:
            with self.engine.begin() as conn:
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('mcp-ops rate:' || :a))"), {"a": actor})
                if delivery:
                    deliveries.claim(conn, delivery)
                conn.execute(
                    delete(rate_limit_hits).where(rate_limit_hits.c.actor == actor, rate_limit_hits.c.at <= since)
                )
                count, oldest = conn.execute(
                    select(func.count(), func.min(rate_limit_hits.c.at)).where(rate_limit_hits.c.actor == actor)
                ).one()
                if count >= self.per_minute:
                    wait = max(1, math.ceil((oldest + WINDOW - now).total_seconds()))
                    raise RateLimited(
                        f"slow down: at most {self.per_minute} changing commands a minute per person; "
                        f"try again in {wait} s"
                    )
                conn.execute(rate_limit_hits.insert().values(actor=actor, at=now))
        except SQLAlchemyError:
            raise RateLimitUnavailable(
                "the bot database is unavailable, so no change can run now; try again shortly"
            ) from None
