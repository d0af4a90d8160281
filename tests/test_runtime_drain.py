"""The runtime's work accounting: jobs yield to acks, drain waits for accepted work then refuses."""

from __future__ import annotations

import threading

import pytest

from bot.runtime import ACK_PRIORITY_WAIT_S


def test_a_job_waits_while_a_slack_request_is_being_acknowledged(bot):
    runtime = bot.runtime
    ran = threading.Event()
    with runtime.handling_request() as accepted:
        assert accepted
        runtime.submit(ran.set)
        assert not ran.wait(ACK_PRIORITY_WAIT_S / 4)  # held back while the ack is on its way
    assert ran.wait(5)


def test_a_job_is_not_held_back_for_ever_by_a_stream_of_requests(bot):
    ran = threading.Event()
    with bot.runtime.handling_request():
        bot.runtime.submit(ran.set)
        assert ran.wait(ACK_PRIORITY_WAIT_S + 5)


def test_drain_waits_for_accepted_work_and_then_refuses_new_work(bot):
    runtime = bot.runtime
    release, finished = threading.Event(), threading.Event()

    def slow_job() -> None:
        release.wait(30)
        finished.set()

    runtime.submit(slow_job)
    outcome: list[bool] = []
    drainer = threading.Thread(target=lambda: outcome.append(runtime.drain(timeout=30)))
    drainer.start()
    drainer.join(0.3)
    assert drainer.is_alive()  # still waiting for the job
    with runtime.handling_request() as accepted:
        assert accepted is False  # a new request during the drain is refused
    release.set()
    drainer.join(30)
    assert outcome == [True] and finished.is_set()
    with pytest.raises(RuntimeError):
        runtime.submit(lambda: None)


def test_drain_gives_up_after_its_timeout(bot):
    release = threading.Event()
    bot.runtime.submit(lambda: release.wait(30))
    try:
        assert bot.runtime.drain(timeout=0.2) is False
    finally:
        release.set()
