"""Reads cannot starve approved work: separate lanes, bounded queues, heavy reads capped."""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg
import pytest

from bot.lanes import Busy
from tests.conftest import APPROVER, OPERATOR, TEST_SPEC, BotHarness, StageDb, eventually
from tests.deletion_support import checksums, ephemeral_on, press, start_delete, wait_state
from tests.test_metrics_readyz import scrape, value

BIG = TEST_SPEC.big_slug
# Reads of the platform tables wait on the test's lock instead of failing at the usual 3 s.
PATIENT = {"STAGE_LOCK_TIMEOUT_MS": "120000", "STAGE_STATEMENT_TIMEOUT_MS": "120000"}
WAITING = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mcp-ops/dev' AND wait_event_type = 'Lock'"


def readers(count: int) -> list[str]:
    return [f"UREADER{index:03d}" for index in range(count)]


def test_a_flood_of_reads_does_not_delay_an_approved_delete(
    make_bot: Callable[..., BotHarness], make_stage_db: Callable[[], StageDb]
):
    dev, production = make_stage_db(), make_stage_db()
    bot = make_bot({"dev": dev.url, "production": production.url}, **PATIENT)
    request_id = start_delete(bot, stage="production", extra='--reason "flood test"')

    blocker = psycopg.connect(dev.url)
    try:
        blocker.execute("LOCK TABLE mcp_servers IN ACCESS EXCLUSIVE MODE")
        # 40 people read dev at once (finds and heavy stats): every read waits on the lock.
        replies = []
        for index, user in enumerate(readers(40)):
            verb = f"stats {BIG}" if index % 2 else f"find {BIG}"
            replies.append(bot.command(f"{verb} --stage dev", user=user))
        assert all(reply.http.status == 200 for reply in replies)
        assert eventually(lambda: dev.scalar(WAITING) >= 12, timeout=30)

        # The approval arrives in the middle of the flood and the delete runs while it lasts.
        before = checksums(production)
        press(bot, request_id, "Approve", APPROVER)
        done = wait_state(bot, request_id, {"done", "failed", "stale"}, timeout=90)
        assert done.state == "done", done.error
        assert production.scalar("SELECT count(*) FROM mcp_servers WHERE slug = :s", s=BIG) == 0
        assert checksums(production) != before
        assert dev.scalar(WAITING) >= 1  # the reads are still waiting
        # Heavy reads past the stage's cap were told to come back later, at once.
        busy = [r for r in replies if r.ack and "try again in" in r.text()]
        assert busy and all("heavy commands are running on dev" in r.text() for r in busy)
    finally:
        blocker.rollback()
        blocker.close()
    assert all(reply.text(timeout=60) for reply in replies)  # every read got its answer afterwards


def test_heavy_reads_are_capped_per_person_with_a_busy_answer(make_bot, stage_db: StageDb):
    bot = make_bot({"dev": stage_db.url}, HEAVY_READS_PER_USER="2", **PATIENT)
    blocker = psycopg.connect(stage_db.url)
    try:
        blocker.execute("LOCK TABLE mcp_servers IN ACCESS EXCLUSIVE MODE")
        first = [bot.command(f"impact {BIG} --stage dev", user="UREADER001") for _ in range(2)]
        third = bot.command(f"stats {BIG} --stage dev", user="UREADER001")
        assert third.ack is not None
        text = third.text()
        assert "busy: you already have 2 heavy commands running (at most 2); try again in" in text
        assert text.rstrip().endswith(" s")
        # Someone else is not affected, nor are light reads of the same person.
        other = bot.command(f"stats {BIG} --stage dev", user="UREADER002")
        light = bot.command("help", user="UREADER001")
        assert other.ack is None and "/mcp find" in light.text()
        assert eventually(lambda: stage_db.scalar(WAITING) == 3, timeout=30)
    finally:
        blocker.rollback()
        blocker.close()
    for reply in [*first, other]:
        assert BIG in reply.text(timeout=60)
    busy = [r for r in bot.wait_audit(5) if r.outcome == "busy"]
    assert [(r.actor, r.command) for r in busy] == [("UREADER001", "stats")]


def test_a_full_read_lane_answers_busy(make_bot, stage_db: StageDb):
    bot = make_bot({"dev": stage_db.url}, READ_WORKERS="1", READ_QUEUE="1", **PATIENT)
    blocker = psycopg.connect(stage_db.url)
    try:
        blocker.execute("LOCK TABLE mcp_servers IN ACCESS EXCLUSIVE MODE")
        running, waiting = (bot.command(f"find {BIG} --stage dev", user=user) for user in readers(2))
        assert eventually(lambda: stage_db.scalar(WAITING) == 1, timeout=30)
        refused = bot.command(f"find {BIG} --stage dev", user="UREADER009")
        assert refused.ack is not None and "the bot is busy right now; try again in" in refused.text()
        assert value(scrape(bot), "mcp_ops_lane_jobs", lane="read") == 2
    finally:
        blocker.rollback()
        blocker.close()
    assert BIG in running.text(timeout=60) and BIG in waiting.text(timeout=60)


def test_a_full_work_lane_delays_neither_an_approval_nor_its_run(make_bot, make_stage_db: Callable[[], StageDb]):
    production = make_stage_db()
    bot = make_bot({"production": production.url}, WORK_WORKERS="1", WORK_QUEUE="0")
    request_id = start_delete(bot, stage="production", extra='--reason "lanes"')
    release = threading.Event()
    assert eventually(lambda: bot.runtime.lanes["work"].held == 0)  # the delete command's own job is over
    bot.runtime.submit(release.wait, 120)  # other clicks and commands hold the work lane's only place
    try:
        with pytest.raises(Busy):
            bot.runtime.submit(release.wait, 1)  # the work lane is full...
        press(bot, request_id, "Approve", APPROVER)  # ...yet the approval is taken and the delete runs
        done = wait_state(bot, request_id, {"done", "failed", "stale"}, timeout=90)
        assert done.state == "done", done.error
        assert production.scalar("SELECT count(*) FROM mcp_servers WHERE slug = :s", s=BIG) == 0
        assert bot.runtime.lanes["work"].held == 1
    finally:
        release.set()


def test_a_click_that_finds_the_approvals_lane_full_is_told_busy(make_bot, stage_db: StageDb):
    bot = make_bot({"dev": stage_db.url}, APPROVAL_WORKERS="1", APPROVAL_QUEUE="0")
    request_id = start_delete(bot)
    release = threading.Event()
    assert eventually(lambda: bot.runtime.lanes["approvals"].held == 0)
    bot.runtime.submit(release.wait, 60, lane="approvals")  # something long holds the lane's only place
    try:
        url = press(bot, request_id, "Cancel", OPERATOR)
        text = ephemeral_on(bot, url)["text"]
        assert "busy" in text and "try again in" in text
        assert wait_state(bot, request_id, {"pending"}).state == "pending"
    finally:
        release.set()
    press(bot, request_id, "Cancel", OPERATOR)
    assert wait_state(bot, request_id, {"cancelled"}).state == "cancelled"
