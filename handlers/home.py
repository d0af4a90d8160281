"""The App Home tab: published when someone opens it, and again when what it shows changes."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import App

from bot.health.alerts import SEVERITY_ORDER, AlertView
from bot.home import HomeView
from bot.service import CommandService
from handlers.blocks import Block, context, divider, escape, header, lines_sections, section, when
from handlers.render import audit_entry_line
from handlers.render_deletion import home_request_blocks
from handlers.render_health import alert_line

log = logging.getLogger(__name__)


def stage_alert_lines(stage: str, alerts: list[AlertView]) -> list[str]:
    """A stage's worst open finding (the most severe, then the longest firing) and how many others there are."""
    worst = min(alerts, key=lambda a: (SEVERITY_ORDER.get(a.severity, 9), a.fired_at or a.first_seen_at))
    lines = [f"*{escape(stage)}*", alert_line(worst)]
    if len(alerts) > 1:
        lines.append(f"_and {len(alerts) - 1} more: `/mcp alerts --stage {escape(stage)}`_")
    return lines


def render_home(view: HomeView) -> dict[str, Any]:
    roles = [name for name, held in (("operator", view.is_operator), ("approver", view.is_approver)) if held]
    blocks: list[Block] = [
        header("mcp-ops"),
        context(f"You are {' and '.join(roles) if roles else 'a read-only user'}. Type `/mcp help` anywhere."),
    ]
    if view.requests:
        blocks += [divider(), section("*Waiting for you*")]
        for request in view.requests:
            blocks += home_request_blocks(request, view.viewer)
    blocks += [divider(), section("*Open alerts*")]
    if view.alerts_by_stage:
        for stage, alerts in view.alerts_by_stage.items():
            blocks += lines_sections(stage_alert_lines(stage, alerts))
    else:
        blocks.append(section("_Nothing is firing on any stage._ :white_check_mark:"))
    if view.recent_audit is not None:
        blocks += [divider(), section("*Latest activity*")]
        blocks += lines_sections([audit_entry_line(r) for r in view.recent_audit] or ["_no entries yet_"])
    blocks.append(context(f"Updated {when(view.generated_at)}"))
    return {"type": "home", "blocks": blocks[:100]}


def register(app: App, service: CommandService) -> None:
    runtime = service.runtime

    def publish(user_id: str, view: HomeView) -> None:
        runtime.slack.views_publish(user_id=user_id, view=render_home(view))

    @app.event("app_home_opened")
    def home_opened(event: dict[str, Any]) -> None:
        if event.get("tab", "home") != "home" or not event.get("user"):
            return
        user_id = str(event["user"])
        publish(user_id, runtime.home.opened(user_id))

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
