"""The HTTP surface: Slack events, health, readiness and metrics, as one WSGI app."""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, jsonify, request
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from slack_bolt import App
from slack_bolt.adapter.flask import SlackRequestHandler
from sqlalchemy import text
from werkzeug.exceptions import HTTPException

from bot import metrics
from bot.errors import UserFacingError
from bot.runtime import Runtime

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
EVENTS_PATH = "/slack/events"


def create_wsgi_app(runtime: Runtime, bolt_app: App) -> Flask:
    web = Flask("mcp-ops")
    web.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    slack_handler = SlackRequestHandler(bolt_app)

    @web.post(EVENTS_PATH)
    def slack_events() -> Response:
        if not runtime.accepting:
            return Response("shutting down", status=503, headers={"Retry-After": "5"})
        started = time.perf_counter()
        try:
            response = slack_handler.handle(request)
        except HTTPException:
            raise
        except Exception:
            log.exception("malformed Slack request")
            return Response("malformed request", status=400)
        metrics.ack_latency_seconds.observe(time.perf_counter() - started)
        return response

    @web.get("/healthz")
    def healthz() -> Response:
        return Response("ok", mimetype="text/plain")

    @web.get("/readyz")
    def readyz() -> tuple[Response, int]:
        report: dict[str, object] = {}
        ready = True
        try:
            with runtime.bot_engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            report["bot_database"] = "ok"
        except Exception:
            report["bot_database"] = "unreachable"
            ready = False
        stages: dict[str, str] = {}
        for name, stage in runtime.stages.all.items():
            try:
                stages[name] = f"ok ({stage.ping():.0f} ms)"
            except UserFacingError:
                stages[name] = "unreachable"
        report["stages"] = stages
        report["status"] = "ready" if ready else "not ready"
        return jsonify(report), 200 if ready else 503

    @web.get("/metrics")
    def prometheus() -> Response:
        metrics.outbox_backlog.set(_safe_backlog(runtime))
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    @web.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[str, int]:
        return f"{exc.code} {exc.name}", exc.code or 500

    return web


def _safe_backlog(runtime: Runtime) -> int:
    try:
        return runtime.outbox.backlog()
    except Exception:
        return -1
