"""The console as a person uses it: an alert seen as one line, shown in full with `alert`, acknowledged with
`press`, and refused to a read-only user (tests/test_demo.py drives the rest through `mcp-ops demo`)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from bot.config import load_settings
from bot.console.localslack import LocalSlack
from bot.console.repl import Console
from bot.health.checks import Finding
from tests.conftest import ALERT_CHANNEL, OPERATOR, VIEWER, base_env, eventually


@pytest.fixture
def console(request, stage_db, bot_db_url: str, fake_slack: LocalSlack) -> Iterator[tuple[Console, io.StringIO]]:
    # The console starts a local Slack of its own; the fixture's only fills in the environment.
    env = base_env(bot_db_url=bot_db_url, stages={"dev": stage_db.url}, slack=fake_slack)
    env.update(getattr(request, "param", {}))
    out = io.StringIO()
    console = Console(load_settings(env), user=OPERATOR, out=out)
    yield console, out
    console.close()


def _after(out: io.StringIO, mark: int) -> str:
    return out.getvalue()[mark:]


def test_an_alert_is_one_line_then_in_full_with_its_buttons_and_acknowledge_works(console):
    console, out = console
    mark = len(out.getvalue())
    console.handle_line("alert")
    assert "no alert has been posted yet" in _after(out, mark)

    finding = Finding(
        check="connections",
        object="max_connections",
        severity="warning",
        title="connections at 85% of max_connections (170 of 200)",
        detail="170 client connections",
        advice="Put a pooler in front.",
    )
    console.runtime.health.book.apply("dev", ["connections"], [finding])
    assert eventually(lambda: "[#alerts] [WARNING] dev: connections at 85%" in out.getvalue(), timeout=30)

    mark = len(out.getvalue())
    console.handle_line("alert")
    shown = _after(out, mark)
    assert f"[alert 1 of 1 in {ALERT_CHANNEL}]" in shown and "Put a pooler in front." in shown
    assert "[ Acknowledge ] [ Snooze: 1 h | 4 h | 24 h ]" in shown

    console.handle_line(f"as {VIEWER}")
    mark = len(out.getvalue())
    console.handle_line("press Snooze 4")  # the start of `Snooze 4 h` is enough
    assert "only operators and approvers can acknowledge or snooze alerts" in _after(out, mark)

    console.handle_line(f"as {OPERATOR}")
    console.handle_line("press Acknowledge")
    assert eventually(lambda: "(updated) [WARNING] dev: connections at 85%" in out.getvalue(), timeout=30)
    mark = len(out.getvalue())
    console.handle_line("alert 1")
    shown = _after(out, mark)
    assert f":eyes: Acknowledged by @{OPERATOR}" in shown and "[ Acknowledge ]" not in shown
    console.handle_line("alert 7")
    assert "there is 1 alert: `alert 1`" in out.getvalue()


@pytest.mark.parametrize("console", [{"HOME_PUBLISH_INTERVAL_SECONDS": "600"}], indirect=True)
def test_home_opened_twice_in_a_row_shows_the_tab_both_times(console):
    console, out = console
    for _ in range(2):  # the second publish waits for its slot; meanwhile the tab shows the last one
        mark = len(out.getvalue())
        console.handle_line("home")
        shown = _after(out, mark)
        assert f"[App Home of {OPERATOR}]" in shown and "You are an operator" in shown
    assert len(console.slack.calls_to("views.publish")) == 1
