"""A request that is no longer pending says so first: every button of a request (Delete or Forget, Approve,
Reject, Cancel), pressed by anyone, on a protected or an unprotected stage, on every final state, answers
"already <state>" rather than a rule ("this stage needs no approval", "only <@U> can cancel it") that could
not have changed anything anyway. Signed HTTP, fake Slack, real bot database.
"""

from __future__ import annotations

import json

from sqlalchemy import text

from bot.requests.store import FINAL_STATES
from handlers import render_requests
from tests.approval_support import production_bots, request_prod
from tests.conftest import APPROVER, OPERATOR, VIEWER, BotHarness, message_text
from tests.deletion_support import ephemeral_on, requests_rows, start_delete, wait_state

# The request's buttons by action_id; Delete (a delete's) and Forget (a forget-user's) are both the confirm.
ACTIONS = (
    render_requests.CONFIRM_ACTION,
    render_requests.APPROVE_ACTION,
    render_requests.REJECT_ACTION,
    render_requests.CANCEL_ACTION,
)


def clicks(bot: BotHarness, request_id: int, presses: list[tuple[str, str]]) -> list[str]:
    """Press each (action_id, user) on the request, all at once (the ack comes first, the answer after), and
    return what each clicker was told."""
    row = next(r for r in requests_rows(bot) if r.id == request_id)
    urls = []
    for action_id, user in presses:
        url = bot.sender.new_response_url()
        element = {"type": "button", "action_id": action_id, "value": json.dumps({"r": request_id})}
        reply = bot.sender.block_actions(
            element, user=user, channel=row.channel, message_ts=row.message_ts, response_url=url
        )
        assert reply.status == 200
        urls.append(url)
    answers = [ephemeral_on(bot, url) for url in urls]
    assert all(a["response_type"] == "ephemeral" for a in answers), answers
    return [message_text(a) for a in answers]


def set_state(bot: BotHarness, request_id: int, state: str, *, overdue: bool = False) -> None:
    sql = "UPDATE delete_requests SET state = :s" + (", expires_at = now() - interval '1 minute'" if overdue else "")
    with bot.runtime.bot_engine.begin() as conn:
        conn.execute(text(sql + " WHERE id = :r"), {"s": state, "r": request_id})


def test_every_button_on_a_closed_request_says_its_state_first_whatever_the_stage(make_bot, db, fake_slack):
    bot = production_bots(make_bot, db, fake_slack)()
    unprotected, protected = start_delete(bot, stage="dev"), request_prod(bot)
    audited_before = len(bot.audit_rows())
    everyone = [(a, u) for a in ACTIONS for u in (OPERATOR, APPROVER, VIEWER)]  # requester, approver, stranger
    for request_id in (unprotected, protected):
        # Pending but past its expiry: a click by anyone says it expired (and closes it).
        set_state(bot, request_id, "pending", overdue=True)
        for answer, pressed in zip(clicks(bot, request_id, everyone), everyone, strict=True):
            assert "This delete request is already expired; nothing more to do." in answer, (pressed, answer)
        assert wait_state(bot, request_id, {"expired"}).state == "expired"
        for state in FINAL_STATES:
            set_state(bot, request_id, state)
            expected = f"This delete request is already {state}; nothing more to do."
            for answer, pressed in zip(clicks(bot, request_id, everyone), everyone, strict=True):
                assert expected in answer, (request_id, state, pressed, answer)
            assert wait_state(bot, request_id, {state}).state == state
    with bot.runtime.bot_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM delete_request_votes")).scalar_one() == 0
    # Nothing was refused on rights, voted, or moved by a click: the only new audit lines are the expiries.
    new = [r.outcome for r in bot.audit_rows()[audited_before:]]
    assert set(new) <= {"expired"}, new
