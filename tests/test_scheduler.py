"""Scheduled jobs run once per slot across processes sharing the bot database."""

from __future__ import annotations

import threading
import time

from sqlalchemy import text

from bot.botdb import create_bot_engine, migrate
from bot.config import parse_database_url
from bot.scheduler import JobScheduler


def _engine(url):
    engine = create_bot_engine(parse_database_url("BOT_DATABASE_URL", url))
    migrate(engine)
    return engine


def test_two_schedulers_run_a_slot_once(bot_db_url):
    runs: list[str] = []
    first, second = _engine(bot_db_url), _engine(bot_db_url)
    barrier = threading.Barrier(2)

    def job(owner: str):
        def run() -> None:
            runs.append(owner)
            time.sleep(0.3)  # hold the advisory lock while the other replica tries

        return run

    schedulers = [JobScheduler(first), JobScheduler(second)]
    for index, scheduler in enumerate(schedulers):
        scheduler.add("health:dev", job(f"replica{index}"), 60)
    results: list[bool] = []

    def tick(scheduler: JobScheduler) -> None:
        barrier.wait()
        results.append(scheduler.run_slot("health:dev", now=1_000_000.0))

    threads = [threading.Thread(target=tick, args=(s,)) for s in schedulers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, True]
    assert len(runs) == 1

    # The same slot later on: already recorded, so nobody runs it again; the next slot runs.
    assert schedulers[1].run_slot("health:dev", now=1_000_010.0) is False
    assert schedulers[1].run_slot("health:dev", now=1_000_060.0) is True
    with first.connect() as conn:
        recorded = conn.execute(text("SELECT count(*), bool_and(outcome = 'ok') FROM job_runs")).one()
    assert tuple(recorded) == (2, True)
    first.dispose()
    second.dispose()


def test_a_failing_job_is_recorded_and_does_not_raise(bot_db_url):
    engine = _engine(bot_db_url)
    scheduler = JobScheduler(engine)

    def broken() -> None:
        raise RuntimeError("boom")

    scheduler.add("broken", broken, 30)
    assert scheduler.run_slot("broken", now=90.0) is True
    with engine.connect() as conn:
        assert conn.execute(text("SELECT outcome FROM job_runs WHERE job = 'broken'")).scalar_one() == "error"
    engine.dispose()
