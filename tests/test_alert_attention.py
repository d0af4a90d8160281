"""Alerts under people's hands: Acknowledge and Snooze change what is posted; edits only on material change.

Health runs are driven with controlled slot times (tests/test_health.py's Health); clicks are signed
requests to the real HTTP endpoint of the same runtime, and Slack is the local fake over HTTP.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from bot.console.client import SlackRequestSender
from bot.console.localslack import LocalSlack, SlackCall
from bot.console.text import buttons_in
from bot.health.checks import duration
from bot.health.messages import material
from handlers.server import build_asgi, serve_in_thread
from tests.conftest import OPERATOR, SIGNING_SECRET, eventually
from tests.health_support import SLOW, Health, health_factory, posted_texts, sleep_statements

VIEWER = "UVIEWER01"


@dataclass
class Clicker:
    health: Health
    sender: SlackRequestSender

    def press(self, post: SlackCall, label: str, user: str = OPERATOR) -> None:
        """Press `label` (a button, or `Snooze 4 h` in the menu) on the alert message `post` created."""
        [stored] = [
            m
            for m in self.health.slack.messages.values()
            if m.history[:1] == [post.payload] or (not m.history and m.payload == post.payload)
        ]
        message = stored.payload
        found = {(e.get("text") or {}).get("text"): (e, block) for e, block in buttons_in(message["blocks"])}
        element, block_id = found[label]
        before = len(self.health.audit())
        reply = self.sender.block_actions(
            element,
            user=user,
            channel=post.payload["channel"],
            message=message,
            block_id=block_id,
            message_ts=stored.ts,
        )
        assert reply.status == 200
        if user == OPERATOR:  # the click's work runs after the ack: its audit row, then its message rewrite queued
            assert eventually(lambda: len(self.health.audit()) > before and not self._unsynced())
        else:
            self.health.slack.wait_for_call("response_url", lambda c: True, 15)
        self.health.deliver()

    def _unsynced(self) -> bool:
        with self.health.runtime.bot_engine.connect() as conn:
            return bool(conn.execute(text("SELECT count(*) FROM alerts WHERE needs_update")).scalar())


@pytest.fixture
def clicky(bot_db_url: str, fake_slack: LocalSlack) -> Iterator[Callable[..., Clicker]]:
    servers = []
    factory = health_factory(bot_db_url, fake_slack)
    make_health = next(factory)

    def make(stages: dict[str, str], **env: str) -> Clicker:
        health = make_health(stages, **env)
        server = serve_in_thread(build_asgi(health.runtime))
        servers.append(server)
        return Clicker(
            health,
            SlackRequestSender(
                server.events_url, SIGNING_SECRET, response_base=fake_slack.base_url, on_reply=fake_slack.check_ack
            ),
        )

    yield make
    for server in servers:
        server.stop()
    next(factory, None)


def _labels(call: SlackCall) -> list[str]:
    return [(e.get("text") or {}).get("text", "") for e, _ in buttons_in(call.payload.get("blocks") or [])]


def _slow_query_alert(clicky: Callable[..., Clicker], stage_db: Any) -> tuple[Clicker, SlackCall]:
    """A slow-query alert posted, on a stage that reminds every hour."""
    clicker = clicky({"dev": stage_db.url}, **SLOW, ALERT_REPEAT_MINUTES_DEV="60")
    clicker.health.run("statements")
    sleep_statements(stage_db.url, 4)
    clicker.health.run("statements")
    [post] = clicker.health.posts()
    return clicker, post


def _an_hour_later_still_slow(health: Health, stage_db: Any) -> None:
    with health.runtime.bot_engine.begin() as conn:
        conn.execute(text("UPDATE alerts SET last_notified_at = now() - interval '61 minutes'"))
    sleep_statements(stage_db.url, 4)
    health.run("statements")
    health.sync()


def test_acknowledge_shows_who_stops_reminders_and_the_alert_still_resolves(clicky, stage_db):
    clicker, post = _slow_query_alert(clicky, stage_db)
    health = clicker.health
    assert _labels(post) == ["Acknowledge", "Explain", "Snooze 1 h", "Snooze 4 h", "Snooze 24 h"]

    # Not acknowledged: an hour later it reminds in its thread.
    _an_hour_later_still_slow(health, stage_db)
    assert ["Still firing after" in r.payload["text"] for r in health.replies()] == [True]

    clicker.press(post, "Acknowledge", user=VIEWER)
    [refusal] = health.slack.calls_to("response_url")
    assert "only operators and approvers" in refusal.payload["text"]
    [firing, denied] = health.audit()
    assert (firing.outcome, denied.outcome, denied.actor) == ("firing", "denied", VIEWER)
    assert denied.detail["click"] == "acknowledge" and "only operators and approvers" in denied.detail["reason"]
    assert health.updates() == []  # nothing changed on the alert

    clicker.press(post, "Acknowledge")
    [update] = health.updates()
    assert f"Acknowledged by <@{OPERATOR}>" in posted_texts([update])[0]
    assert "Acknowledge" not in _labels(update) and "Snooze 4 h" in _labels(update)
    [acked] = [a for a in health.audit() if a.outcome == "acknowledged"]
    assert acked.actor == OPERATOR and acked.stage == "dev"

    # Acknowledged: an hour later, no reminder.
    _an_hour_later_still_slow(health, stage_db)
    assert len(health.replies()) == 1

    # It still resolves, in its thread.
    health.run("statements")
    health.run("statements")
    health.sync()
    assert "Resolved after" in health.replies()[-1].payload["text"]
    assert "RESOLVED" in posted_texts(health.updates()[-1:])[0]
    assert len(health.posts()) == 1


def test_snooze_silences_reminders_and_refires_until_an_escalation_to_critical(clicky, stage_db):
    clicker, post = _slow_query_alert(clicky, stage_db)
    health = clicker.health

    clicker.press(post, "Snooze 4 h")
    [update] = health.updates()
    assert ":zzz: Snoozed until" in posted_texts([update])[0] and f"by <@{OPERATOR}>" in posted_texts([update])[0]
    [snoozed] = [a for a in health.audit() if a.outcome == "snoozed"]
    assert snoozed.actor == OPERATOR and snoozed.detail["hours"] == 4

    # Snoozed: an hour later, no reminder.
    _an_hour_later_still_slow(health, stage_db)
    assert health.replies() == []

    # It resolves, then the same query is slow again: still snoozed, so nothing new is posted.
    health.run("statements")
    health.run("statements")
    health.sync()
    assert len(health.replies()) == 1  # the resolution
    sleep_statements(stage_db.url, 4)
    health.run("statements")
    health.sync()
    assert len(health.posts()) == 1
    second = health.alert_rows()[-1]
    assert (second.state, second.held, second.snoozed_by) == ("firing", True, OPERATOR)

    # An escalation to critical breaks the snooze: the held alert is posted now.
    sleep_statements(stage_db.url, 3, 0.32)
    health.run("statements")
    health.sync()
    assert len(health.posts()) == 2
    assert "CRITICAL" in posted_texts(health.posts()[-1:])[0]
    assert "Snoozed" not in posted_texts(health.posts()[-1:])[0]
    assert [a.outcome for a in health.audit()] == ["firing", "snoozed", "resolved", "firing", "snooze broken"]

    # Broken for good: when it resolves and the query is slow again, inside the 4 hours, it is posted.
    health.run("statements")
    health.run("statements")
    health.sync()
    sleep_statements(stage_db.url, 4)
    health.run("statements")
    health.sync()
    assert len(health.posts()) == 3
    assert (health.alert_rows()[-1].held, health.alert_rows()[-1].snoozed_until) == (False, None)


def test_an_alert_is_edited_only_when_its_numbers_cross_a_step(clicky, stage_db):
    health = clicky({"dev": stage_db.url}, **SLOW).health
    health.run("statements")
    sleep_statements(stage_db.url, 4, 0.05)
    health.run("statements")
    assert len(health.posts()) == 1
    for seconds in (0.055, 0.06, 0.052, 0.065):  # mean 50-99 ms, 4 calls: the same step every run
        sleep_statements(stage_db.url, 4, seconds)
        health.run("statements")
        health.sync()
    assert health.updates() == []
    sleep_statements(stage_db.url, 4, 0.11)  # mean above 100 ms: worth telling
    health.run("statements")
    health.sync()
    [update] = health.updates()
    assert "mean 11" in posted_texts([update])[0]


def _running_s(url: str, app: str) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM now() - query_start) FROM pg_stat_activity"
            " WHERE application_name = %s AND state = 'active'",
            (app,),
        ).fetchone()
    return float(row[0]) if row else 0.0


def test_a_long_running_query_alert_is_not_edited_as_its_duration_grows(clicky, stage_db):
    """Its title says how long the query has run, a new number every run: no chat.update for that."""
    health = clicky({"dev": stage_db.url}, LONG_QUERY_SECONDS="1").health

    def report() -> None:
        with (
            psycopg.connect(stage_db.url, autocommit=True, application_name="report-job") as conn,
            contextlib.suppress(psycopg.errors.QueryCanceled),
        ):
            conn.execute("SELECT pg_sleep(60)")

    thread = threading.Thread(target=report)
    thread.start()
    try:
        assert eventually(lambda: _running_s(stage_db.url, "report-job") > 1.5, timeout=30)
        health.run("activity")
        [post] = health.posts()
        assert "query running for 1 s" in posted_texts([post])[0] and "Cancel query" in _labels(post)
        for _ in range(3):  # every run sees it a second or more older
            seen = _running_s(stage_db.url, "report-job")
            assert eventually(lambda seen=seen: _running_s(stage_db.url, "report-job") > seen + 1, timeout=30)
            health.run("activity")
            health.sync()
        [row] = health.alert_rows()
        assert row.consecutive == 4 and "query running for 1 s" not in row.title  # the row follows every run
        assert health.updates() == []  # the message is not rewritten for it
    finally:
        with psycopg.connect(stage_db.url, autocommit=True) as conn:
            conn.execute("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'report-job'")
        thread.join()
    for _ in range(2):  # gone (ALERT_CLEAR_AFTER_RUNS, 2): it resolves, and that is an edit
        health.run("activity")
        health.sync()
    [resolved] = health.updates()
    assert "RESOLVED" in posted_texts([resolved])[0]


def _alert(title: str, severity: str = "warning", detail: str = "", advice: str = "") -> Any:
    return SimpleNamespace(title=title, detail=detail, advice=advice, severity=severity)


@pytest.mark.parametrize(
    ("before", "after", "edit"),
    [
        (420, 480, False),  # 7 -> 8 min
        (540, 600, True),  # 9 -> 10 min
        (3_900, 4_800, False),  # 1 h 5 min -> 1 h 20 min
        (7_000, 7_300, True),  # 116 min -> 2 h 1 min
        (200_000, 300_000, False),  # 2 -> 3 days
    ],
)
def test_running_durations_edit_only_at_their_steps(before, after, edit):
    changed = material(_alert(f"query running for {duration(before)}: pid 42")) != material(
        _alert(f"query running for {duration(after)}: pid 42")
    )
    assert changed is edit


def test_severity_percent_steps_and_counts_are_material():
    assert material(_alert("connections at 81%")) == material(_alert("connections at 89%"))
    assert material(_alert("connections at 89%")) != material(_alert("connections at 91%"))
    assert material(_alert("x", "warning")) != material(_alert("x", "critical"))
    assert material(_alert("1,900 rows")) != material(_alert("2,100 rows"))
    # Digits of a name are the name: another table is another thing to act on.
    assert material(_alert("events_2024_03 is 25% dead")) != material(_alert("events_2024_04 is 25% dead"))
    assert material(_alert("pid 4242 (worker-7, user app)")) == material(_alert("pid 4250 (worker-7, user app)"))
