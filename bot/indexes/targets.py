"""Indexes named by identity, and the buttons a finding about one carries.

A missing index is its table and its columns (in order): `{"schema", "table", "columns"}`. An
existing index is its name *and* its definition (`pg_get_indexdef`), and why it should go
(`invalid`, or a `duplicate` of another index that stays): a dropped and re-created index of the
same name, or one whose twin went away, is not the one people were shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

CREATE_LABEL = "Create index"
DROP_LABEL = "Drop index"


def create_index_action(
    schema: str, table: str, columns: Sequence[str], *, label: str = CREATE_LABEL
) -> dict[str, Any]:
    cols = ", ".join(columns)
    return {
        "kind": "create-index",
        "label": label,
        "target": {"schema": schema, "table": table, "columns": list(columns)},
        "confirm": f"Build an index on {schema}.{table} ({cols}) with CREATE INDEX CONCURRENTLY? Writes go on "
        "meanwhile; a build that fails is cleaned up (its INVALID index dropped).",
    }


def drop_index_action(
    schema: str,
    index: str,
    definition: str,
    reason: str,
    keeper: str | None = None,
    keeper_definition: str | None = None,
) -> dict[str, Any]:
    """`keeper`: the index that stays (qualified and quoted, as `format('%I.%I')` prints it), by name and
    definition: a twin dropped and made again with other columns no longer makes this one a duplicate."""
    target: dict[str, Any] = {"schema": schema, "index": index, "definition": definition, "reason": reason}
    if keeper:
        target["keeper"] = keeper
    if keeper_definition:
        target["keeper_definition"] = keeper_definition
    return {
        "kind": "drop-index",
        "label": DROP_LABEL,
        "target": target,
        "confirm": f"Drop index {schema}.{index} with DROP INDEX CONCURRENTLY? Only if it is still "
        + ("invalid." if reason == "invalid" else f"a duplicate of {keeper}."),
    }
