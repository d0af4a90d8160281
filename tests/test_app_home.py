"""The App Home tab: what each person sees, and that it refreshes when alerts and requests change."""

from __future__ import annotations

from bot.health.checks import Finding
from tests.conftest import OPERATOR, TEST_SPEC, VIEWER, eventually, message_text


def _published_for(bot, user: str, count: int = 1, timeout: float = 15) -> list[dict]:
    calls = bot.slack.wait_for_call("views.publish", lambda c: c.payload.get("user_id") == user, timeout, count)
    return [c.payload["view"] for c in calls]


def test_operators_see_alerts_and_latest_activity(bot):
    bot.command(f"find {TEST_SPEC.big_slug} --stage dev").message()
    bot.wait_audit(1)
    assert bot.sender.event({"type": "app_home_opened", "user": OPERATOR, "tab": "home"}).status == 200
    view = _published_for(bot, OPERATOR)[0]
    assert view["type"] == "home"
    text = message_text(view)
    assert "You are an operator" in text
    assert "Nothing is firing on any stage" in text
    assert f"`find {TEST_SPEC.big_slug}` on dev: ok" in text


def test_read_only_users_do_not_see_the_audit_trail(bot):
    bot.command(f"find {TEST_SPEC.big_slug} --stage dev").message()
    bot.wait_audit(1)
    bot.sender.event({"type": "app_home_opened", "user": VIEWER, "tab": "home"})
    text = message_text(_published_for(bot, VIEWER)[0])
    assert "read-only user" in text
    assert "Latest activity" not in text and "find" not in text


def test_the_tab_refreshes_when_an_alert_fires_and_resolves(bot):
    bot.sender.event({"type": "app_home_opened", "user": OPERATOR, "tab": "home"})
    bot.sender.event({"type": "app_home_opened", "user": VIEWER, "tab": "home"})
    _published_for(bot, OPERATOR)
    _published_for(bot, VIEWER)
    finding = Finding(
        check="connections",
        object="database",
        severity="critical",
        title="connections at 97% of max_connections",
        detail="97 of 100",
        advice="find who holds them",
    )
    bot.runtime.health.book.apply("dev", ["connections"], [finding])
    for user in (OPERATOR, VIEWER):
        view = _published_for(bot, user, count=2)[-1]
        assert "connections at 97% of max_connections" in message_text(view)
    bot.runtime.health.book.apply("dev", ["connections"], [])
    view = _published_for(bot, OPERATOR, count=3)[-1]
    assert "Nothing is firing on any stage" in message_text(view)


def test_other_tabs_are_ignored(bot):
    assert bot.sender.event({"type": "app_home_opened", "user": OPERATOR, "tab": "messages"}).status == 200
    bot.command("help").message()
    assert bot.slack.calls_to("views.publish") == []


def test_pending_approvals_show_on_the_approvers_home_with_buttons_that_work(bot, stage_db):
    from tests.conftest import APPROVER
    from tests.deletion_support import buttons, requests_rows, start_delete, wait_state

    for user in (APPROVER, OPERATOR, VIEWER):
        bot.sender.event({"type": "app_home_opened", "user": user, "tab": "home"})
        _published_for(bot, user)
    request_id = start_delete(bot, stage="production", extra='--reason "churned customer"')

    # The change refreshes every recent viewer's tab: the approver gets Approve/Reject, the
    # requester their Cancel, a read-only user nothing to press.
    approver_view = _published_for(bot, APPROVER, count=2)[-1]
    assert f"#{request_id} delete `{TEST_SPEC.big_slug}` on *production*" in message_text(approver_view)
    assert "churned customer" in message_text(approver_view)
    assert set(buttons(approver_view)) == {"Approve", "Reject"}
    assert set(buttons(_published_for(bot, OPERATOR, count=2)[-1])) == {"Cancel"}
    assert "Waiting for you" not in message_text(_published_for(bot, VIEWER, count=2)[-1])

    # Self-approval from the requester's tab is refused by the same rules, in the request's channel.
    approve = buttons(approver_view)["Approve"]
    assert bot.sender.view_actions(approve, user=OPERATOR).status == 200
    refused = bot.slack.wait_for_call("chat.postEphemeral", lambda c: c.payload.get("user") == OPERATOR)
    assert "you asked for this delete" in refused[0].payload["text"]
    assert wait_state(bot, request_id, {"pending"}).state == "pending"

    assert bot.sender.view_actions(approve, user=APPROVER).status == 200
    assert wait_state(bot, request_id, {"done", "failed"}).state == "done"
    assert requests_rows(bot)[0].decided_by == APPROVER
    # Once it ran, the tab is published again without it.
    assert eventually(lambda: "Waiting for you" not in message_text(_published_for(bot, APPROVER)[-1]))
