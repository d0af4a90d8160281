"""`/mcp indexes`: what the index checks see on a stage, each with the button that fixes it.

The same queries as the health checks (bot/health/checks/foreign_keys.py, indexes.py), so the list
and the alerts never disagree: foreign keys whose columns lead no valid index (Create index), and
invalid or duplicate indexes (Drop index).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from bot.config import HealthSettings
from bot.health.checks.base import CheckContext
from bot.health.checks.foreign_keys import DELETE_RULES, unindexed_foreign_keys
from bot.health.checks.indexes import check_duplicate_indexes, check_invalid_indexes
from bot.indexes.targets import create_index_action
from bot.slacktext.long import in_turn
from bot.slacktext.words import plural

MAX_LISTED = 30


@dataclass(frozen=True)
class IndexItem:
    category: str  # unindexed | invalid | duplicate
    title: str
    detail: str
    actions: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class IndexList:
    stage: str
    items: list[IndexItem]
    counts: dict[str, int] = field(default_factory=dict)


def list_indexes(conn: Connection, stage: str, settings: HealthSettings) -> IndexList:
    ctx = CheckContext(stage=stage, settings=settings)
    items: list[IndexItem] = []
    fks = unindexed_foreign_keys(conn, ctx)
    for r in fks:
        rule = DELETE_RULES.get(r.on_delete, r.on_delete)
        items.append(
            IndexItem(
                category="unindexed",
                title=f"{r.child} ({r.columns}) has no index",
                detail=f"foreign key {r.conname} → {r.parent} (ON DELETE {rule}), "
                f"~{plural(r.child_rows, 'row')}: every row deleted from {r.parent} scans it",
                actions=(
                    create_index_action(
                        r.child_schema, r.child_table, r.column_names, label=f"Create index: {r.child} ({r.columns})"
                    ),
                ),
            )
        )
    counts = {"unindexed": len(fks)}
    for category, report in (
        ("invalid", check_invalid_indexes(conn, ctx)),
        ("duplicate", check_duplicate_indexes(conn, ctx)),
    ):
        counts[category] = len(report.findings)
        items += [IndexItem(category, f.title, f.detail, f.actions) for f in report.findings]
    # The first of each category in turn, shown in category order: many keys without an index leave room
    # for the invalid and duplicate indexes.
    listed = sorted(in_turn([i.category for i in items])[:MAX_LISTED])
    return IndexList(stage, [items[i] for i in listed], counts)
