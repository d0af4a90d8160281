"""Build the Bolt app: one place that wires listeners to the domain."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import App, BoltResponse, Respond
from slack_bolt.authorization import AuthorizeResult
from slack_sdk import WebClient

from bot.lanes import Busy
from bot.logs import ContextThreadPoolExecutor
from bot.runtime import Runtime
from bot.service import CommandService
from handlers import actions, alerts, charts, commands, fallback, home, operations, render, requests, retries
from handlers import render_backups as _render_backups  # noqa: F401 - registers the backup verbs' renderers

log = logging.getLogger(__name__)

# Each module has `register(app, service)` and adds its listeners; `fallback` (what the others leave) is last.
LISTENER_MODULES = (commands, actions, home, requests, alerts, charts, operations, fallback)


def build_app(runtime: Runtime) -> App:
    settings = runtime.settings

    def authorize(enterprise_id: str | None, team_id: str | None, **_: Any) -> AuthorizeResult:
        # A single-workspace bot: the token is configuration, so no auth.test round trip is needed
        # (and a Slack outage cannot stop the bot from acknowledging commands).
        return AuthorizeResult(enterprise_id=enterprise_id, team_id=team_id, bot_token=settings.bot_token)

    app = App(
        signing_secret=settings.signing_secret,
        client=WebClient(base_url=settings.slack_api_url, timeout=10),
        authorize=authorize,
        # Listeners ack, queue their work on a lane and return: Bolt runs them on the dispatching
        # thread and answers when they return (no second thread per request, no polling for the ack).
        process_before_response=True,
        listener_executor=ContextThreadPoolExecutor(max_workers=32, thread_name_prefix="listener"),
        # The HTTP edge verifies every signature before a body reaches Bolt (handlers/http.py);
        # Socket Mode needs none.
        request_verification_enabled=False,
        url_verification_enabled=True,
        ssl_check_enabled=True,
    )
    retries.register(app, runtime)  # before any listener: a retried click or event runs nothing twice
    service = CommandService(runtime)
    for module in LISTENER_MODULES:
        module.register(app, service)

    @app.error
    def on_error(error: Exception, body: dict[str, Any], respond: Respond | None = None) -> BoltResponse:
        if isinstance(error, Busy) and respond is not None:
            # A click's work found its lane full (bot/lanes.py): say so to the clicker only.
            respond(**render.error(error), replace_original=False)
            return BoltResponse(status=200, body="")
        log.error("unhandled listener error", exc_info=error)
        return BoltResponse(status=200, body="")

    return app
