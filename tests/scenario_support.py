"""Sessions that a health scenario holds open on a stage: running, idle in a transaction, waiting on a lock.

Each statement is sent without waiting for its answer (libpq's send_query), so a test can hold
dozens at once without a thread each; `close` cancels and closes them all.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import psycopg

from bot.console.localslack import LocalSlack
from tests.conftest import eventually


class Sessions:
    def __init__(self, url: str) -> None:
        self.url = url
        self.conns: list[psycopg.Connection[Any]] = []

    def running(self, sql: str, app: str) -> int:
        """Start `sql` on a connection of its own and return at once; its backend pid."""
        conn = psycopg.connect(self.url, autocommit=True, application_name=app)
        self.conns.append(conn)
        conn.pgconn.send_query(sql.encode())
        return conn.info.backend_pid

    def idle_in_transaction(self, sql: str, app: str) -> tuple[int, psycopg.Connection[Any]]:
        conn = psycopg.connect(self.url, application_name=app)
        self.conns.append(conn)
        conn.execute(sql)
        return conn.info.backend_pid, conn

    def wait_until(self, sql: str, expected: Any = True, timeout: float = 30) -> None:
        """Poll the stage until `sql` (one value) answers `expected`."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            assert eventually(lambda: conn.execute(sql).fetchone()[0] == expected, timeout=timeout), sql  # type: ignore[index]

    def end(self, pid: int) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            assert eventually(
                lambda: (
                    conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0]  # type: ignore[index]
                    == 0
                )
            )

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(psycopg.Error):
                conn.cancel()
            conn.close()
        self.conns.clear()


def old_enough(app_like: str, count: int, seconds: float = 1.2) -> str:
    """SQL answering true once `count` sessions named like `app_like` have run their statement `seconds`."""
    return (
        "SELECT count(*) = "
        + str(int(count))
        + " FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE '"
        + app_like.replace("'", "''")
        + "' AND state = 'active' AND query_start < now() - interval '"
        + str(seconds)
        + " s'"
    )


def everything_sent(slack: LocalSlack) -> str:
    """Every payload the bot sent Slack (messages, edits, replies, views, response_url bodies) and every
    file's bytes, as one string to search for what must never be there."""
    parts = [json.dumps(call.payload) for call in slack.calls]
    parts += [(f.content or b"").decode("utf-8", "replace") for f in slack.files.values()]
    return "\n".join(parts)
