"""Slack's retries of clicks, submitted forms and events run nothing twice.

Slack retries a delivery it believes timed out, with `X-Slack-Retry-Num` and the same payload:
an interaction keeps its `trigger_id`, an event its `event_id`. Every such delivery claims its
key in the bot database before its listener runs (bot/deliveries.py), so a retry that finds the
key claimed, in whichever replica the first delivery landed, is acknowledged with an empty 200
and nothing else: no second vote, signal or index build, and no "already done" answer for a
click that was made once. Slash commands are claimed where they are counted (a changing one, in
bot/ratelimit.py), so that a read-only command's ack needs no database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from slack_bolt import App, BoltRequest, BoltResponse
from sqlalchemy.exc import SQLAlchemyError

from bot import deliveries
from bot.runtime import Runtime

log = logging.getLogger(__name__)

INTERACTIONS = frozenset({"block_actions", "view_submission", "view_closed", "shortcut", "message_action"})
RETRY_HEADER = "x-slack-retry-num"


def delivery_key(body: dict[str, Any]) -> str | None:
    """The key Slack keeps across retries of this delivery; None for a slash command or anything else."""
    kind = body.get("type")
    if kind == "event_callback" and body.get("event_id"):
        return f"event:{body['event_id']}"
    if kind in INTERACTIONS and body.get("trigger_id"):
        return f"{kind}:{body['trigger_id']}"
    return None


def register(app: App, runtime: Runtime) -> None:
    @app.middleware
    def once_per_delivery(
        body: dict[str, Any], request: BoltRequest, next_: Callable[[], BoltResponse]
    ) -> BoltResponse | None:
        key = delivery_key(body)
        if key is None:
            return next_()
        try:
            first = deliveries.claim_once(runtime.bot_engine, key)
        except SQLAlchemyError as exc:
            # Fail open: the listener's own work needs the bot database and says so when it is down.
            log.warning("delivery not claimed: bot database unavailable", extra={"error": type(exc).__name__})
            first = True
        if not first and request.headers.get(RETRY_HEADER):
            log.info("a Slack retry of a delivery already handled", extra={"delivery": key.split(":", 1)[0]})
            return BoltResponse(status=200, body="")
        return next_()
