"""The HTTP surface: Slack events, health, readiness and metrics, as one ASGI app (Starlette).

A Slack request reaches Bolt only after its whole body was read within the body deadline and
the size cap, its signature verified, and its workspace checked (`SLACK_TEAM_ID`). Until then
it costs the event loop a few bytes and no thread; Bolt's dispatch (which waits for the
listener's ack) then runs on a bounded thread pool.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import anyio
from slack_bolt import App, BoltRequest, BoltResponse
from slack_bolt.request.internals import extract_enterprise_id, extract_team_id, extract_user_id
from slack_sdk.signature import SignatureVerifier
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bot import metrics
from bot.audit import AuditEntry
from bot.logs import assign_request_id, clear_request_id
from bot.runtime import Runtime

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
DRAIN_LIMIT = 4 * MAX_BODY_BYTES  # a larger declared body is refused without reading it
EVENTS_PATH = "/slack/events"
SIGNATURE_MAX_AGE_S = 300
CLOSE = {"Connection": "close"}  # the rest of a refused request is not worth reading
# Payloads Slack sends without a workspace: the endpoint checks when the app is configured
# (`url_verification` is JSON with a type; the slash command's `ssl_check=1` is a form without one).
WORKSPACELESS_TYPES = {"url_verification"}
INTERACTIONS = {"block_actions", "view_submission", "view_closed", "shortcut", "message_action", "block_suggestion"}


# Where Slack's response_url points (hooks.slack.com; GovSlack's slack-gov.com); else the Web API's own
# origin (SLACK_API_URL: the fake Slack of the console and the tests).
SLACK_HOOK_DOMAINS = ("slack.com", "slack-gov.com")
OBJECT_FIELDS = ("user", "team", "channel", "container", "message", "view", "enterprise")
TEXT_FIELDS = ("response_url", "trigger_id", "callback_id", "action_id")


def _nonempty_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def well_formed(body: dict[str, Any]) -> bool:
    """The parts Bolt and the listeners read have the shapes Slack gives them (a crafted payload may not):
    an interaction names its user, its objects are objects and its ids text; a slash command names its
    user and where to answer; a click carries its actions, a form its view, an event its event."""
    kind = body.get("type")
    if "command" in body and kind is None:  # a slash command (a form, no type)
        return _nonempty_text(body.get("user_id")) and _nonempty_text(body.get("response_url"))
    if kind in INTERACTIONS:
        # Slack sends null for some (`enterprise`, `team` of an org-wide install): absent or null is fine.
        if any(body.get(name) is not None and not isinstance(body[name], dict) for name in OBJECT_FIELDS):
            return False
        if any(body.get(name) is not None and not isinstance(body[name], str) for name in TEXT_FIELDS):
            return False
        if not _nonempty_text((body.get("user") or {}).get("id")):
            return False
    if kind == "block_actions":
        actions = body.get("actions")
        return (
            isinstance(actions, list)
            and bool(actions)
            and all(isinstance(a, dict) and _nonempty_text(a.get("action_id")) for a in actions)
        )
    if kind in ("view_submission", "view_closed"):
        view = body.get("view")
        return isinstance(view, dict) and isinstance(view.get("type"), str)
    if kind == "event_callback":
        event = body.get("event")
        return isinstance(event, dict) and isinstance(event.get("type"), str)
    return True


def answerable_at(response_url: str, api_url: str) -> bool:
    """Is this a response_url Slack would give? The bot posts its answer there: never to any other host."""
    parts, api = urlsplit(response_url), urlsplit(api_url)
    if (parts.scheme, parts.netloc) == (api.scheme, api.netloc):
        return True
    host = parts.hostname or ""
    return parts.scheme == "https" and any(host == d or host.endswith("." + d) for d in SLACK_HOOK_DOMAINS)


def _refused(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    metrics.http_refused_total.labels(status=str(status)).inc()
    log.info("request refused", extra={"status": status, "reason": text})  # never its body
    return PlainTextResponse(text, status_code=status, headers={**CLOSE, **(headers or {})})


class SlackEndpoint:
    """POST /slack/events: bounded read, signature, workspace, then Bolt on a worker thread."""

    def __init__(self, runtime: Runtime, bolt_app: App) -> None:
        self.runtime = runtime
        self.bolt_app = bolt_app
        self.edge = runtime.settings.edge
        self.verifier = SignatureVerifier(runtime.settings.signing_secret)
        self.api_url = runtime.settings.slack_api_url
        self.limiter = anyio.CapacityLimiter(self.edge.dispatch_threads)

    async def endpoint(self, request: Request) -> Response:
        assign_request_id()
        try:
            return await self._handle(request)
        finally:
            clear_request_id()

    async def _read_body(self, request: Request) -> bytes | Response:
        """The whole body, or 413 past MAX_BODY_BYTES (the server's body deadline bounds the time)."""
        declared = request.headers.get("content-length")
        if declared is not None and not declared.isdigit():
            return _refused(400, "malformed request")
        if declared is not None and int(declared) > DRAIN_LIMIT:
            return _refused(413, "request body too large")
        body, total = bytearray(), 0
        try:
            async for chunk in request.stream():
                total += len(chunk)
                if total > DRAIN_LIMIT:
                    return _refused(413, "request body too large")
                if len(body) <= MAX_BODY_BYTES:
                    body += chunk
                # Past the cap the rest is read and dropped (up to DRAIN_LIMIT), so the client, still
                # sending, can read the 413: closing on unread data would reset the connection.
        except ClientDisconnect:
            return Response(status_code=400, headers=CLOSE)
        if len(body) > MAX_BODY_BYTES:
            return _refused(413, "request body too large")
        return bytes(body)

    def _signature_headers_fresh(self, request: Request) -> bool:
        timestamp = request.headers.get("x-slack-request-timestamp", "")
        if not request.headers.get("x-slack-signature") or not timestamp.isdigit():
            return False
        return abs(time.time() - int(timestamp)) <= SIGNATURE_MAX_AGE_S

    async def _handle(self, request: Request) -> Response:
        started = time.perf_counter()
        # Cheap refusals first: a request without fresh signature headers is not worth its body.
        if not self._signature_headers_fresh(request):
            return _refused(401, "invalid request")
        body = await self._read_body(request)
        if isinstance(body, Response):
            return body
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:  # Slack sends UTF-8 only
            return _refused(400, "malformed request")
        headers = {key: value for key, value in request.headers.items()}
        if not self.verifier.is_valid(
            text, headers.get("x-slack-request-timestamp", ""), headers.get("x-slack-signature", "")
        ):
            return _refused(401, "invalid request")
        with self.runtime.handling_request() as accepted:
            if not accepted:
                return _refused(503, "shutting down", {"Retry-After": "5"})
            try:
                bolt_request = BoltRequest(body=text, query=request.url.query, headers=headers)
            except Exception as exc:  # a `payload` that is not JSON
                log.warning("malformed Slack request", extra={"error": type(exc).__name__})
                return _refused(400, "malformed request")
            answer_at = bolt_request.body.get("response_url")
            if not well_formed(bolt_request.body) or (answer_at and not answerable_at(answer_at, self.api_url)):
                return _refused(400, "malformed request")
            if not self._workspace_allowed(bolt_request.body):
                await run_in_threadpool(self._audit_foreign_workspace, bolt_request.body)
                return _refused(403, "this workspace is not served here")
            try:
                response: BoltResponse = await anyio.to_thread.run_sync(
                    self.bolt_app.dispatch, bolt_request, limiter=self.limiter
                )
            except Exception as exc:
                log.warning("malformed Slack request", extra={"error": type(exc).__name__})
                return _refused(400, "malformed request")
        if response.status == 404 and bolt_request.body.get("type") == "app_rate_limited":
            log.warning("Slack is holding back this app's events (app_rate_limited)")
            response = BoltResponse(status=200, body="")
        elif response.status == 404 or response.status >= 500:
            # No listener takes it (handlers/fallback.py takes whatever Slack sends this app): not a Slack payload.
            return _refused(400, "malformed request")
        metrics.ack_latency_seconds.observe(time.perf_counter() - started)
        reply_headers = {k: v[0] for k, v in response.headers.items() if v and k.lower() != "content-length"}
        if "x-slack-retry-num" in request.headers:
            reply_headers["X-Slack-No-Retry"] = "1"  # it was handled (or deduplicated): no more retries
        return Response(response.body, status_code=response.status, headers=reply_headers)

    def _workspace_allowed(self, body: dict[str, Any]) -> bool:
        allowed = self.edge.team_ids
        if not allowed:
            return True
        if body.get("type") in WORKSPACELESS_TYPES or body.get("ssl_check") == "1":
            return True
        ids = {extract_team_id(body), extract_enterprise_id(body)}
        return bool(ids & allowed)

    def _audit_foreign_workspace(self, body: dict[str, Any]) -> None:
        team, enterprise = extract_team_id(body), extract_enterprise_id(body)
        self.runtime.audit.record(
            AuditEntry(
                actor=extract_user_id(body) or "unknown",
                command="request",
                outcome="denied",
                detail={
                    "reason": "a request from a workspace not in SLACK_TEAM_ID",
                    "team_id": str(team or "")[:40],
                    "enterprise_id": str(enterprise or "")[:40],
                },
            )
        )


class MetricsEndpoint:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        token = runtime.settings.edge.metrics_token
        self.expected = f"Bearer {token}".encode() if token else None

    async def endpoint(self, request: Request) -> Response:
        if self.expected is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, self.expected):
                return PlainTextResponse("unauthorized", status_code=401, headers={"WWW-Authenticate": "Bearer"})
        runtime = self.runtime
        collector = metrics.ScrapeCollector(
            runtime.gauges,
            {name: stage.created_engine for name, stage in runtime.stages.all.items()},
            draining=not runtime.accepting,
            lanes={name: lane.held for name, lane in runtime.lanes.items()},
        )
        return Response(metrics.exposition(collector), media_type=metrics.CONTENT_TYPE)


def metrics_app(runtime: Runtime) -> Starlette:
    """/metrics alone, for METRICS_PORT."""
    app = Starlette(routes=[Route("/metrics", MetricsEndpoint(runtime).endpoint, methods=["GET"])])
    app.state.edge = runtime.settings.edge
    return app


def create_asgi_app(runtime: Runtime, bolt_app: App) -> Starlette:
    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(_: Request) -> Response:
        report = await run_in_threadpool(runtime.readiness.check)
        return JSONResponse(report.as_dict(), status_code=200 if report.ready else 503)

    routes = [
        Route(EVENTS_PATH, SlackEndpoint(runtime, bolt_app).endpoint, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    if runtime.settings.edge.metrics_port is None:
        routes.append(Route("/metrics", MetricsEndpoint(runtime).endpoint, methods=["GET"]))

    async def unexpected(_: Request, exc: Exception) -> Response:
        # Never a traceback on the wire; the log line carries the request id to find it.
        log.error("unhandled error in the HTTP layer", exc_info=exc)
        return PlainTextResponse("internal error", status_code=500)

    app = Starlette(routes=routes, exception_handlers={Exception: unexpected})
    app.state.edge = runtime.settings.edge  # the server's limits (handlers/server.py)
    return app
