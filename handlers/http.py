"""The HTTP surface: Slack events, health, readiness and metrics, as one WSGI app."""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, jsonify, request
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from slack_bolt import App
from slack_bolt.adapter.flask import SlackRequestHandler
from werkzeug.exceptions import HTTPException

from bot import metrics
from bot.logs import assign_request_id, clear_request_id
from bot.runtime import Runtime

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
EVENTS_PATH = "/slack/events"


def create_wsgi_app(runtime: Runtime, bolt_app: App) -> Flask:
    web = Flask("mcp-ops")
    web.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    slack_handler = SlackRequestHandler(bolt_app)

    @web.before_request
    def start_request() -> None:
        assign_request_id()

    @web.teardown_request
    def end_request(_: BaseException | None) -> None:
        clear_request_id()

    @web.post(EVENTS_PATH)
    def slack_events() -> Response:
        started = time.perf_counter()
        with runtime.handling_request() as accepted:
            if not accepted:
                metrics.http_refused_total.labels(status="503").inc()
                return Response("shutting down", status=503, headers={"Retry-After": "5"})
            try:
                response = slack_handler.handle(request)
            except HTTPException:
                raise
            except Exception as exc:
                # Bolt could not make sense of a signed body (e.g. a `payload` that is not JSON).
                log.warning("malformed Slack request", extra={"error": type(exc).__name__})
                metrics.http_refused_total.labels(status="400").inc()
                return Response("malformed request", status=400, mimetype="text/plain")
        if response.status_code in (401, 403):
            metrics.http_refused_total.labels(status=str(response.status_code)).inc()
        else:
            metrics.ack_latency_seconds.observe(time.perf_counter() - started)
        return response

    @web.get("/healthz")
    def healthz() -> Response:
        return Response("ok", mimetype="text/plain")

    @web.get("/readyz")
    def readyz() -> tuple[Response, int]:
        report = runtime.readiness.check()
        return jsonify(report.as_dict()), 200 if report.ready else 503

    @web.get("/metrics")
    def prometheus() -> Response:
        collector = metrics.ScrapeCollector(
            runtime.bot_engine,
            {name: stage.created_engine for name, stage in runtime.stages.all.items()},
            draining=not runtime.accepting,
        )
        return Response(metrics.exposition(collector), mimetype=CONTENT_TYPE_LATEST)

    @web.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        code = exc.code or 500
        if code == 413:
            metrics.http_refused_total.labels(status="413").inc()
        return Response(f"{code} {exc.name}", mimetype="text/plain"), code

    @web.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        # Never a traceback on the wire; the log line carries the request id to find it.
        log.error("unhandled error in the HTTP layer", exc_info=exc)
        return Response("internal error", mimetype="text/plain"), 500

    return web
