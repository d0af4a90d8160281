"""The deletion engine's `before_delete` hook that takes the scoped backup: one scope, four uses.

The engine has materialised every scope as a temporary table of primary keys and re-counted
it; the backup exports exactly those rows (and, for SET NULL/SET DEFAULT edges, the key and
the columns about to change), in the engine's plan order, with the engine's counts as the
expected ones, and records which user triggers fire during the delete (their effects are not in
the backup). Whatever goes wrong raises out of the hook, and the delete rolls back.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection

from bot.backups.export import ScopedBackup
from bot.backups.manifest import Action, BackupRecord, BackupStep
from bot.deletion.execute import MaterializedScope
from bot.deletion.impact import trigger_notes
from bot.deletion.plan import DeletePlan

ACTIONS: dict[str, Action] = {"delete": "delete", "set null": "set_null", "set default": "set_default"}


def backup_steps(plan: DeletePlan, scopes: Sequence[MaterializedScope]) -> list[BackupStep]:
    return [
        BackupStep(
            schema=scope.table.schema,
            table=scope.table.name,
            primary_key=scope.key,
            scope_table=scope.temp_table,
            action=ACTIONS[scope.action],
            set_null_columns=scope.columns,
            expected_rows=scope.rows,
            only=plan.catalog.table(scope.table).only,
        )
        for scope in scopes
    ]


def fired_triggers(plan: DeletePlan) -> list[str]:
    """The user triggers that fire during the delete, in words, for the manifest."""
    return [f"{n.trigger} on {n.table} ({n.definition})" for n in trigger_notes(plan) if n.on_delete]


class DeleteBackup:
    """Pass as `before_delete`; after the delete's transaction, `record` says what was stored (or None)."""

    def __init__(self, backup: ScopedBackup) -> None:
        self.backup = backup
        self.record: BackupRecord | None = None

    def __call__(self, conn: Connection, plan: DeletePlan, scopes: list[MaterializedScope]) -> None:
        self.record = self.backup.write(conn, backup_steps(plan, scopes), triggers=fired_triggers(plan))

    def settle(self, *, committed: bool) -> None:
        """Tell the index whether the delete that asked for this backup committed (best effort)."""
        if self.record is not None:
            self.backup.index.mark_delete(self.record.backup_id, committed=committed)
