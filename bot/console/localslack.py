"""A local stand-in for the Slack Web API, served over real HTTP.

The console points SLACK_API_URL at it so the bot runs unchanged without a Slack
workspace; the tests use it as their fake Slack. It keeps every call, serves
`response_url` posts, remembers posted messages so `chat.update` edits them, and can be
told to answer 429 or 5xx for a while.

Every payload is checked as Slack would check it (bot/console/payloads.py): an invalid one gets
Slack's `ok: false` answer and is kept in `rejections`, which the tests' fixture fails on.
Slash-command and interaction acks, which the bot returns over HTTP to whoever sent the request,
are checked through `check_ack` (bot/console/client.py hands it every reply).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlparse

from bot.console.payloads import check


@dataclass
class SlackCall:
    method: str  # a Web API method such as "chat.postMessage", or "response_url"
    payload: dict[str, Any]
    at: float
    ok: bool = True
    path: str = ""
    error: str = ""  # Slack's error code when the call was refused
    detail: str = ""  # why, when the payload was invalid


@dataclass
class Failure:
    method: str  # "*" for any method
    status: int
    remaining: int
    retry_after: int | None = None
    channel: str | None = None  # only calls to this channel (Slack rate limits chat.postMessage per channel)
    where: Callable[[dict[str, Any]], bool] | None = None  # only calls whose payload this accepts


@dataclass
class StoredMessage:
    channel: str
    ts: str
    payload: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


JSON_FIELDS = ("blocks", "attachments", "view", "metadata", "files")


@dataclass
class UploadedFile:
    """A file sent through files.getUploadURLExternal, its bytes, then files.completeUploadExternal."""

    id: str
    filename: str
    length: int
    alt_txt: str | None = None
    content: bytes | None = None
    title: str | None = None
    completed: bool = False
    channel: str | None = None
    thread_ts: str | None = None

    @property
    def text(self) -> str:
        return (self.content or b"").decode("utf-8", "replace")


class LocalSlack:
    def __init__(self, *, bot_user_id: str = "UBOT0001", team_id: str = "T0LOCAL") -> None:
        self.bot_user_id = bot_user_id
        self.team_id = team_id
        self.calls: list[SlackCall] = []
        self.messages: dict[tuple[str, str], StoredMessage] = {}
        self.usergroups: dict[str, list[str]] = {}
        self.files: dict[str, UploadedFile] = {}
        self.rejections: list[SlackCall] = []
        self.listeners: list[Callable[[SlackCall], None]] = []
        self._failures: list[Failure] = []
        self._cond = threading.Condition()
        self._ts = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, port: int = 0) -> LocalSlack:
        handler = _make_handler(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-slack", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/"

    def new_response_url(self) -> str:
        return f"{self.base_url}/response/{uuid.uuid4().hex}"

    # -- control ---------------------------------------------------------------------

    def fail(
        self,
        method: str = "*",
        *,
        status: int = 500,
        times: int = 1,
        retry_after: int | None = None,
        channel: str | None = None,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        """Answer the next `times` calls of `method` (to `channel`, with a payload `where` accepts, if given)
        with `status` (429: Retry-After)."""
        with self._cond:
            self._failures.append(Failure(method, status, times, retry_after, channel, where))

    def clear_failures(self) -> None:
        with self._cond:
            self._failures.clear()

    def reset(self) -> None:
        with self._cond:
            self.calls.clear()
            self.messages.clear()
            self._failures.clear()

    # -- queries for tests and the console ----------------------------------------------

    def calls_to(self, method: str) -> list[SlackCall]:
        with self._cond:
            return [c for c in self.calls if c.method == method and c.ok]

    def shared_files(self, channel: str | None = None) -> list[UploadedFile]:
        """Files shared in a channel (in any channel without one), in upload order."""
        with self._cond:
            return [f for f in self.files.values() if f.completed and f.channel and channel in (None, f.channel)]

    def wait_for_file(
        self, where: Callable[[UploadedFile], bool] = lambda f: True, timeout: float = 10.0
    ) -> UploadedFile:
        return self.wait_for(lambda _calls: next((f for f in self.shared_files() if where(f)), None), timeout)

    def check_ack(self, status: int, body: str) -> None:
        """Check what the bot answered a slash command or an interaction with, as Slack would."""
        if status != 200 or not body.strip().startswith("{"):
            return
        try:
            payload = json.loads(body)
        except ValueError:
            return
        if not isinstance(payload, dict) or not ({"text", "blocks", "response_action"} & payload.keys()):
            return
        rejection = check("ack", payload)
        if rejection is not None:
            with self._cond:
                call = SlackCall("ack", payload, time.time(), ok=False, error=rejection.error, detail=rejection.detail)
                self.calls.append(call)
                self.rejections.append(call)

    def wait_for(self, predicate: Callable[[list[SlackCall]], Any], timeout: float = 10.0) -> Any:
        """Wait until predicate(calls) is truthy and return its value; raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate([c for c in self.calls if c.ok])
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("the expected Slack call did not arrive")
                self._cond.wait(remaining)

    def wait_for_call(
        self, method: str, where: Callable[[SlackCall], bool] = lambda c: True, timeout: float = 10.0, count: int = 1
    ) -> list[SlackCall]:
        return self.wait_for(
            lambda calls: (m := [c for c in calls if c.method == method and where(c)]) and len(m) >= count and m,
            timeout,
        )

    # -- request handling ------------------------------------------------------------

    def _take_failure(self, method: str, payload: dict[str, Any]) -> Failure | None:
        for failure in self._failures:
            if failure.channel is not None and failure.channel != payload.get("channel"):
                continue
            if failure.where is not None and not failure.where(payload):
                continue
            if failure.remaining > 0 and failure.method in ("*", method):
                failure.remaining -= 1
                return failure
        return None

    def handle(
        self, method: str, payload: dict[str, Any], token: str | None, path: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._cond:
            failure = self._take_failure(method, payload)
            if failure is not None:
                self.calls.append(SlackCall(method, payload, time.time(), ok=False, path=path))
                headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else {}
                error = "ratelimited" if failure.status == 429 else "internal_error"
                return failure.status, {"ok": False, "error": error}, headers
            if method != "response_url" and not (token or "").startswith("xoxb-"):
                return 200, {"ok": False, "error": "not_authed"}, {}
            rejection = check(method, payload)
            if rejection is not None:
                call = SlackCall(
                    method, payload, time.time(), ok=False, path=path, error=rejection.error, detail=rejection.detail
                )
                self.calls.append(call)
                self.rejections.append(call)
                self._cond.notify_all()
                messages = {"messages": [f"[ERROR] {rejection.detail}"]}
                return 200, {"ok": False, "error": rejection.error, "response_metadata": messages}, {}
            response = self._respond(method, payload)
            call = SlackCall(
                method, payload, time.time(), ok=bool(response.get("ok")), path=path, error=response.get("error", "")
            )
            self.calls.append(call)
            self._cond.notify_all()
        for listener in list(self.listeners):
            listener(call)
        return 200, response, {}

    def _next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    def _respond(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            return {"ok": True, "user_id": self.bot_user_id, "team_id": self.team_id, "bot_id": "B0LOCAL"}
        if method == "chat.postMessage":
            channel = str(payload.get("channel", ""))
            if not channel:
                return {"ok": False, "error": "channel_not_found"}
            ts = self._next_ts()
            self.messages[(channel, ts)] = StoredMessage(channel, ts, dict(payload))
            return {"ok": True, "channel": channel, "ts": ts, "message": {"ts": ts, **payload}}
        if method == "chat.update":
            key = (str(payload.get("channel", "")), str(payload.get("ts", "")))
            stored = self.messages.get(key)
            if stored is None:
                return {"ok": False, "error": "message_not_found"}
            stored.history.append(stored.payload)
            stored.payload = {**stored.payload, **payload}
            return {"ok": True, "channel": key[0], "ts": key[1]}
        if method == "chat.postEphemeral":
            return {"ok": True, "message_ts": self._next_ts()}
        if method in ("views.open", "views.publish", "views.update", "views.push"):
            return {"ok": True, "view": {"id": "V" + uuid.uuid4().hex[:10].upper(), **(payload.get("view") or {})}}
        if method == "usergroups.users.list":
            group = str(payload.get("usergroup", ""))
            if group not in self.usergroups:
                return {"ok": False, "error": "no_such_subteam"}
            return {"ok": True, "users": list(self.usergroups[group])}
        if method == "users.info":
            user = str(payload.get("user", ""))
            return {"ok": True, "user": {"id": user, "name": user.lower(), "is_bot": False}}
        if method == "conversations.info":
            return {"ok": True, "channel": {"id": payload.get("channel"), "name": "local"}}
        if method == "response_url":
            return {"ok": True}
        if method == "files.getUploadURLExternal":
            return self._upload_url(payload)
        if method == "files.completeUploadExternal":
            return self._complete_upload(payload)
        return {"ok": False, "error": "unknown_method"}

    def _upload_url(self, payload: dict[str, Any]) -> dict[str, Any]:
        filename, length = str(payload.get("filename") or ""), str(payload.get("length") or "")
        if not filename or not length.isdigit() or int(length) <= 0:
            return {"ok": False, "error": "invalid_arguments"}
        file_id = "F" + uuid.uuid4().hex[:10].upper()
        self.files[file_id] = UploadedFile(file_id, filename, int(length), alt_txt=payload.get("alt_txt"))
        return {"ok": True, "upload_url": f"{self.base_url}/upload/{file_id}", "file_id": file_id}

    def receive_upload(self, file_id: str, content: bytes) -> bool:
        """The bytes POSTed to an upload URL; False for an unknown file."""
        with self._cond:
            file = self.files.get(file_id)
            if file is None:
                return False
            file.content = content
            self._cond.notify_all()
            return True

    def _complete_upload(self, payload: dict[str, Any]) -> dict[str, Any]:
        wanted = payload.get("files")
        if not isinstance(wanted, list) or not wanted:
            return {"ok": False, "error": "invalid_arguments"}
        done = []
        for entry in wanted:
            file = self.files.get(str((entry or {}).get("id", "")))
            if file is None or file.content is None:
                return {"ok": False, "error": "file_not_found"}
            file.completed, file.title = True, entry.get("title") or file.filename
            file.channel, file.thread_ts = payload.get("channel_id"), payload.get("thread_ts")
            self._cond.notify_all()
            done.append({"id": file.id, "name": file.filename, "title": file.title, "size": len(file.content)})
        return {"ok": True, "files": done}


def _decode(body: bytes, content_type: str, query: str) -> dict[str, Any]:
    payload: dict[str, Any] = dict(parse_qsl(query))
    if body:
        if "json" in content_type:
            try:
                loaded = json.loads(body)
            except ValueError:
                loaded = {}
            if isinstance(loaded, dict):
                payload.update(loaded)
        else:
            payload.update(dict(parse_qsl(body.decode("utf-8", "replace"))))
    for key in JSON_FIELDS:
        if isinstance(payload.get(key), str):
            with contextlib.suppress(ValueError):
                payload[key] = json.loads(payload[key])
    return payload


def _make_handler(slack: LocalSlack) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _serve(self) -> None:
            parsed = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if parsed.path.startswith("/upload/"):  # raw file bytes, as Slack's upload URLs take them
                found = slack.receive_upload(parsed.path[len("/upload/") :], body)
                self._send(200 if found else 404, {"ok": found}, {})
                return
            payload = _decode(body, self.headers.get("Content-Type", ""), parsed.query)
            if parsed.path.startswith("/api/"):
                method = parsed.path[len("/api/") :]
            elif parsed.path.startswith("/response/"):
                method = "response_url"
            else:
                self._send(404, {"ok": False, "error": "not_found"}, {})
                return
            auth = self.headers.get("Authorization", "")
            token = auth.removeprefix("Bearer ").strip() or payload.get("token")
            status, response, headers = slack.handle(method, payload, token, parsed.path)
            self._send(status, response, headers)

        def _send(self, status: int, response: dict[str, Any], headers: dict[str, str]) -> None:
            data = json.dumps(response).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        do_POST = _serve
        do_GET = _serve

    return Handler
