"""App Home refreshes: only for people who opened it recently, at most one publish per person per interval."""

from __future__ import annotations

from sqlalchemy import text

from bot.health.checks import Finding
from tests.conftest import APPROVER, OPERATOR, VIEWER, eventually, message_text


def _finding(number: int) -> Finding:
    return Finding(
        check="connections",
        object=f"database {number}",
        severity="warning",
        title=f"finding number {number}",
        detail="-",
        advice="-",
    )


def test_a_burst_of_changes_is_one_publish_per_recent_viewer_and_none_for_others(make_bot, stage_db):
    bot = make_bot({"dev": stage_db.url}, HOME_PUBLISH_INTERVAL_SECONDS="30", HOME_RECENT_MINUTES="60")
    for user in (OPERATOR, VIEWER, APPROVER):
        bot.sender.event({"type": "app_home_opened", "user": user, "tab": "home"})
    eventually(lambda: len(bot.slack.calls_to("views.publish")) == 3)
    with bot.runtime.bot_engine.begin() as conn:  # the approver last looked two hours ago
        conn.execute(
            text("UPDATE home_viewers SET opened_at = now() - interval '2 hours' WHERE user_id = :u"), {"u": APPROVER}
        )

    # Ten changes, each refreshing the tab at once (no debounce): without spacing, 20 publishes.
    book = bot.runtime.health.book
    for number in range(10):
        book.apply("dev", ["connections"], [_finding(n) for n in range(number + 1)])
        bot.runtime.changes.flush()

    # Each recent viewer's publishes wait for one slot, 30 s after their open; nothing went out meanwhile.
    with bot.runtime.bot_engine.connect() as conn:
        slots = conn.execute(
            text(
                "SELECT payload->>'user_id' AS u, count(*) AS n, count(DISTINCT next_attempt_at) AS slots,"
                " bool_and(next_attempt_at > now()) AS later FROM outbox"
                " WHERE method = 'views.publish' AND delivered_at IS NULL GROUP BY 1 ORDER BY 1"
            )
        ).all()
    # (the debounced change feed may add its own refresh to the same slot)
    assert [(r.u, r.n >= 10, r.slots, r.later) for r in slots] == [(OPERATOR, True, 1, True), (VIEWER, True, 1, True)]
    assert len(bot.slack.calls_to("views.publish")) == 3
    with bot.runtime.bot_engine.begin() as conn:  # the slot comes
        conn.execute(text("UPDATE outbox SET next_attempt_at = now() WHERE delivered_at IS NULL"))
    bot.runtime.outbox_worker.notify()

    def published(user: str) -> list[dict]:
        return [c.payload["view"] for c in bot.slack.calls_to("views.publish") if c.payload["user_id"] == user]

    def settled() -> bool:
        with bot.runtime.bot_engine.connect() as conn:
            queued = conn.execute(
                text("SELECT count(*) FROM outbox WHERE method = 'views.publish' AND delivered_at IS NULL")
            ).scalar()
        return queued == 0 and all(len(published(u)) >= 2 for u in (OPERATOR, VIEWER))

    assert eventually(settled, timeout=30)
    for user in (OPERATOR, VIEWER):
        views = published(user)
        assert len(views) == 2, f"{user}: the open, then one publish for the whole burst"
        assert "and 9 more" in message_text(views[-1])  # the last state arrived: ten open findings
    assert len(published(APPROVER)) == 1  # only the publish of their own open


def test_opening_the_tab_again_within_the_interval_waits_for_the_next_slot(make_bot, stage_db):
    bot = make_bot({"dev": stage_db.url}, HOME_PUBLISH_INTERVAL_SECONDS="30", HOME_RECENT_MINUTES="60")
    bot.sender.event({"type": "app_home_opened", "user": OPERATOR, "tab": "home"})
    eventually(lambda: len(bot.slack.calls_to("views.publish")) == 1)
    for _ in range(3):  # clicking the tab again and again: Slack still shows the publish of a moment ago
        bot.sender.event({"type": "app_home_opened", "user": OPERATOR, "tab": "home"})

    def queued() -> tuple[int, int, bool]:
        with bot.runtime.bot_engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT count(*) AS n, count(DISTINCT next_attempt_at) AS slots,"
                    " bool_and(next_attempt_at > now()) AS later"
                    " FROM outbox WHERE method = 'views.publish' AND delivered_at IS NULL"
                )
            ).one()
        return row.n, row.slots, row.later

    assert eventually(lambda: queued()[0] == 3)
    assert queued() == (3, 1, True)  # one slot, 30 s after the first publish
    assert len(bot.slack.calls_to("views.publish")) == 1
    with bot.runtime.bot_engine.begin() as conn:  # the slot comes: the newest of the three is sent
        conn.execute(text("UPDATE outbox SET next_attempt_at = now() WHERE delivered_at IS NULL"))
    bot.runtime.outbox_worker.notify()
    assert eventually(lambda: len(bot.slack.calls_to("views.publish")) == 2, timeout=30)
    with bot.runtime.bot_engine.connect() as conn:
        superseded = conn.execute(
            text("SELECT count(*) FROM outbox WHERE method = 'views.publish' AND result->>'superseded' = 'true'")
        ).scalar()
    assert superseded == 2 and len(bot.slack.calls_to("views.publish")) == 2
