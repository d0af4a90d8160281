"""Deleting a server the way the bot does (the deletion engine), with a scoped backup as its hook."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from bot.backups.delete_hook import backup_steps
from bot.backups.export import ScopedBackup
from bot.backups.manifest import BackupRecord, BackupStep
from bot.deletion.execute import DeleteResult, execute_delete
from bot.stages import Stage
from tests.conftest import TEST_SPEC

# A table the runbook never names, with a SET NULL edge to servers: the engine finds it in the catalog.
NOTES_DDL = """
CREATE TABLE IF NOT EXISTS server_notes (
    id text PRIMARY KEY,
    mcp_server_id text REFERENCES mcp_servers (id) ON DELETE SET NULL,
    body text NOT NULL
)
"""


def delete_with_backup(
    stage: Stage,
    backup: ScopedBackup,
    slug: str = TEST_SPEC.big_slug,
    *,
    adjust: Callable[[list[BackupStep]], list[BackupStep]] | None = None,
) -> tuple[BackupRecord, list[BackupStep], DeleteResult]:
    """One engine delete whose transaction writes the backup first; `adjust` tampers with the steps."""
    taken: dict[str, Any] = {}

    def hook(conn: Connection, plan: Any, scopes: Any) -> None:
        steps = backup_steps(plan, scopes)
        taken["steps"] = adjust(steps) if adjust else steps
        taken["record"] = backup.write(conn, taken["steps"])

    result = execute_delete(stage, slug, expected=None, budget_s=300, before_delete=hook)
    return taken["record"], taken["steps"], result
