"""Scheduled jobs run once per slot across processes sharing the bot database."""

from __future__ import annotations

import threading
import time

from sqlalchemy import text

from bot.botdb import create_bot_engine, migrate
from bot.config import parse_database_url
from bot.scheduler import PRUNE_JOB, JobScheduler


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


def test_job_runs_older_than_a_week_are_pruned_by_a_job_of_their_own(bot_db_url):
    engine = _engine(bot_db_url)
    scheduler = JobScheduler(engine)
    scheduler.add_pruning()
    assert scheduler.jobs[PRUNE_JOB].interval_s == 3600
    ages = {"health:dev:activity": [8, 30, 6, 0], "health:dev:statements": [7.5, 1]}  # days ago
    with engine.begin() as conn:
        for job, days in ages.items():
            for index, age in enumerate(days):
                conn.execute(
                    text(
                        "INSERT INTO job_runs (job, slot, owner, started_at, finished_at, outcome)"
                        " VALUES (:job, now() - make_interval(secs => :s) - make_interval(mins => :i), 'test',"
                        " now() - make_interval(secs => :s), now() - make_interval(secs => :s), 'ok')"
                    ),
                    {"job": job, "s": age * 86_400, "i": index},
                )
    assert scheduler.run_slot(PRUNE_JOB)
    with engine.connect() as conn:
        left = conn.execute(
            text("SELECT job, round(extract(epoch FROM now() - started_at) / 86400) FROM job_runs ORDER BY 1, 2")
        ).all()
    assert [(job, int(days)) for job, days in left] == [
        ("health:dev:activity", 0),
        ("health:dev:activity", 6),
        ("health:dev:statements", 1),
        (PRUNE_JOB, 0),  # its own run, kept like any other
    ]
    engine.dispose()
