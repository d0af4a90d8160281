"""Sends requests shaped and signed like Slack's to the bot's HTTP endpoint.

The console uses it to drive the bot the way Slack would; the tests use it to exercise
the real endpoint, signature checks included.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode


@dataclass
class HttpReply:
    status: int
    body: str

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def sign(secret: str, body: bytes, timestamp: int) -> str:
    base = b"v0:" + str(timestamp).encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


class SlackRequestSender:
    """`on_reply(status, body)` sees every reply the bot gives (acks included), e.g. the fake Slack's
    `check_ack`, which checks a reply as Slack would check it."""

    def __init__(
        self,
        events_url: str,
        signing_secret: str,
        *,
        response_base: str,
        team_id: str = "T0LOCAL",
        on_reply: Callable[[int, str], None] | None = None,
    ) -> None:
        self.events_url = events_url
        self.signing_secret = signing_secret
        self.response_base = response_base.rstrip("/")
        self.team_id = team_id
        self.on_reply = on_reply

    def new_response_url(self) -> str:
        return f"{self.response_base}/response/{uuid.uuid4().hex}"

    def post(
        self,
        body: bytes,
        *,
        content_type: str = "application/x-www-form-urlencoded",
        timestamp: int | None = None,
        signature: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> HttpReply:
        timestamp = int(time.time()) if timestamp is None else timestamp
        all_headers = {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": str(timestamp),
            "X-Slack-Signature": signature if signature is not None else sign(self.signing_secret, body, timestamp),
        }
        all_headers.update(headers or {})
        if not self.events_url.startswith(("http://", "https://")):
            raise ValueError("the events URL must be http(s)")
        request = urllib.request.Request(self.events_url, data=body, headers=all_headers, method="POST")  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - checked above
                reply = HttpReply(response.status, response.read().decode("utf-8", "replace"))
        except urllib.error.HTTPError as exc:
            reply = HttpReply(exc.code, exc.read().decode("utf-8", "replace"))
        if self.on_reply is not None:
            self.on_reply(reply.status, reply.body)
        return reply

    def slash_body(
        self, text: str, *, user: str, channel: str, response_url: str | None = None, command: str = "/mcp"
    ) -> bytes:
        return urlencode(
            {
                "token": "legacy-verification-token-unused",
                "team_id": self.team_id,
                "team_domain": "local",
                "channel_id": channel,
                "channel_name": "local",
                "user_id": user,
                "user_name": user.lower(),
                "command": command,
                "text": text,
                "api_app_id": "A0LOCAL",
                "is_enterprise_install": "false",
                "response_url": response_url or self.new_response_url(),
                "trigger_id": f"trigger.{uuid.uuid4().hex[:12]}",
            }
        ).encode()

    def slash(self, text: str, *, user: str, channel: str, response_url: str | None = None) -> HttpReply:
        return self.post(self.slash_body(text, user=user, channel=channel, response_url=response_url))

    def interaction(self, payload: dict[str, Any], **kwargs: Any) -> HttpReply:
        body = urlencode({"payload": json.dumps(payload)}).encode()
        return self.post(body, **kwargs)

    def block_actions(
        self,
        element: dict[str, Any],
        *,
        user: str,
        channel: str,
        message: dict[str, Any] | None = None,
        block_id: str = "actions",
        response_url: str | None = None,
        message_ts: str | None = None,
    ) -> HttpReply:
        payload: dict[str, Any] = {
            **self._interaction_head(user),
            "channel": {"id": channel, "name": "local"},
            "container": {
                "type": "message",
                "message_ts": message_ts or f"{time.time():.6f}",
                "channel_id": channel,
                "is_ephemeral": False,
            },
            "message": message or {},
            "response_url": response_url or self.new_response_url(),
            "actions": [_action(element, block_id)],
        }
        return self.interaction(payload)

    def view_actions(self, element: dict[str, Any], *, user: str, view_id: str = "VHOME0001") -> HttpReply:
        """A button pressed on the App Home tab: no channel, no message, no response_url."""
        payload: dict[str, Any] = {
            **self._interaction_head(user),
            "container": {"type": "view", "view_id": view_id},
            "view": {"id": view_id, "type": "home", "callback_id": "", "state": {"values": {}}},
            "actions": [_action(element, "home")],
        }
        return self.interaction(payload)

    def _interaction_head(self, user: str) -> dict[str, Any]:
        """What every block_actions payload starts with: who clicked, in which app and team."""
        return {
            "type": "block_actions",
            "team": {"id": self.team_id, "domain": "local"},
            "user": {"id": user, "username": user.lower(), "team_id": self.team_id},
            "api_app_id": "A0LOCAL",
            "token": "legacy-verification-token-unused",
            "trigger_id": f"trigger.{uuid.uuid4().hex[:12]}",
        }

    def event(self, event: dict[str, Any]) -> HttpReply:
        """An Events API callback, e.g. {"type": "app_home_opened", "user": ..., "tab": "home"}."""
        body = json.dumps(
            {
                "token": "legacy-verification-token-unused",
                "team_id": self.team_id,
                "api_app_id": "A0LOCAL",
                "type": "event_callback",
                "event_id": f"Ev{uuid.uuid4().hex[:10].upper()}",
                "event_time": int(time.time()),
                "event": {"event_ts": f"{time.time():.6f}", **event},
            }
        ).encode()
        return self.post(body, content_type="application/json")

    def view_submission(self, view: dict[str, Any], values: dict[str, dict[str, Any]], *, user: str) -> HttpReply:
        payload = {
            "type": "view_submission",
            "team": {"id": self.team_id, "domain": "local"},
            "user": {"id": user, "username": user.lower(), "team_id": self.team_id},
            "api_app_id": "A0LOCAL",
            "token": "legacy-verification-token-unused",
            "trigger_id": f"trigger.{uuid.uuid4().hex[:12]}",
            "view": {**view, "id": view.get("id", "VLOCAL"), "state": {"values": values}},
        }
        return self.interaction(payload)


def _action(element: dict[str, Any], block_id: str) -> dict[str, Any]:
    """The `actions[0]` Slack sends for a pressed button element, or for an option chosen in a select menu."""
    if "selected_option" in element:
        return {
            "type": element.get("type", "static_select"),
            "action_id": element["action_id"],
            "block_id": block_id,
            "selected_option": element["selected_option"],
            "placeholder": element.get("placeholder", {"type": "plain_text", "text": ""}),
            "action_ts": f"{time.time():.6f}",
        }
    action = {
        "type": element.get("type", "button"),
        "action_id": element["action_id"],
        "block_id": block_id,
        "value": element.get("value", ""),
        "text": element.get("text", {"type": "plain_text", "text": ""}),
        "action_ts": f"{time.time():.6f}",
    }
    if "style" in element:
        action["style"] = element["style"]
    return action
