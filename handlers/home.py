"""The App Home tab: published when someone opens it, and again when what it shows changes."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import App

from bot.health.alerts import SEVERITY_ORDER, AlertView
from bot.home import HomeView
from bot.service import CommandService
from handlers.blocks import Block, Mrkdwn, code, context, divider, header, lines_sections, md, section, view, when
from handlers.render import audit_entry_line
from handlers.render_health import alert_line
from handlers.render_requests import home_request_blocks

log = logging.getLogger(__name__)


def stage_alert_lines(stage: str, alerts: list[AlertView]) -> list[Mrkdwn]:
    """A stage's worst open finding (the most severe, then the longest firing) and how many others there are."""
    worst = min(alerts, key=lambda a: (SEVERITY_ORDER.get(a.severity, 9), a.fired_at or a.first_seen_at))
    lines = [md("*{}*", stage), alert_line(worst)]
    if len(alerts) > 1:
        lines.append(md("_and {:,} more: {}_", len(alerts) - 1, code(f"/mcp alerts --stage {stage}")))
    return lines


def render_home(home: HomeView) -> dict[str, Any]:
    roles = [name for name, held in (("an operator", home.is_operator), ("an approver", home.is_approver)) if held]
    blocks: list[Block] = [
        header("mcp-ops"),
        context(
            md("You are {}. Type {} anywhere.", " and ".join(roles) if roles else "a read-only user", code("/mcp help"))
        ),
    ]
    if home.requests:
        blocks += [divider(), section(Mrkdwn("*Waiting for you*"))]
        for request in home.requests:
            blocks += home_request_blocks(request, home.viewer)
        if home.requests_more:
            more = md("_… and {:,} more: {} lists every open request_", home.requests_more, code("/mcp pending"))
            blocks.append(context(more))
    blocks += [divider(), section(Mrkdwn("*Open alerts*"))]
    if home.alerts_by_stage:
        for stage, alerts in home.alerts_by_stage.items():
            blocks += lines_sections(stage_alert_lines(stage, alerts))
    else:
        blocks.append(section(Mrkdwn("_Nothing is firing on any stage._ :white_check_mark:")))
    if home.recent_audit is not None:
        blocks += [divider(), section(Mrkdwn("*Latest activity*"))]
        blocks += lines_sections([audit_entry_line(r) for r in home.recent_audit] or [Mrkdwn("_no entries yet_")])
    blocks.append(context(md("Updated {}", when(home.generated_at))))
    return view("home", blocks)


def register(app: App, service: CommandService) -> None:
    runtime = service.runtime

    def publish(user_id: str, view: HomeView) -> None:
        runtime.slack.views_publish(user_id=user_id, view=render_home(view))

    @app.event("app_home_opened")
    def home_opened(event: dict[str, Any]) -> None:
        if event.get("tab", "home") != "home" or not isinstance(event.get("user"), str) or not event["user"]:
            return
        user_id = str(event["user"])
        view, now = runtime.home.opened(user_id)
        if now:
            publish(user_id, view)
        else:  # published moments ago: this one goes in the person's next slot
            runtime.home.queue_publish([(user_id, render_home(view))])
            runtime.outbox_worker.notify()

    def refresh(kinds: frozenset[str]) -> None:
        """Every recent viewer's tab, rendered now and delivered through the outbox (retried, never older)."""
        try:
            viewers = runtime.home.recent_viewers()
            views = [(user_id, render_home(runtime.home.view_for(user_id))) for user_id in viewers]
            runtime.home.queue_publish(views)
        except Exception:
            log.warning("App Home refresh failed", extra={"kinds": sorted(kinds)}, exc_info=True)
            return
        runtime.outbox_worker.notify()

    runtime.changes.subscribe(refresh)
