"""Where a person's data sits outside the foreign-key graph, from the environment (`/mcp forget-user`).

- `ERASURE_COLUMNS`: `table.column` (or `schema.table.column`) pairs holding an email with no foreign
  key to the user rows; rows whose value is the person's email (case-insensitive) are erased.
  Default `support_requests.email`.
- `ERASURE_MODE_<table>`: `delete` (default) or `anonymise` for that table's rows matched through
  ERASURE_COLUMNS. (An email the JSON scan finds in a row the erasure keeps is always replaced by
  its token: a mention of the person in somebody else's row does not delete that row.)
- `ERASURE_CLEAR_COLUMNS`: free-text `table.column`s an anonymised row also loses (NULL, or '' when NOT
  NULL). Default `support_requests.title,support_requests.description`.
- `ERASURE_JSON_COLUMNS`: jsonb `table.column`s searched for the email (inside the scope; whole tables
  with `ERASURE_SCAN_ALL=1`). Default none.

This module reads only the environment: `bot.config` turns its `SettingError` into a one-line ConfigError.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["delete", "anonymise"]
MODE_PREFIX = "ERASURE_MODE_"
DEFAULT_COLUMNS = "support_requests.email"
DEFAULT_CLEAR = "support_requests.title,support_requests.description"
_NAME = r"[A-Za-z_][A-Za-z0-9_$]{0,62}"
COLUMN_RE = re.compile(rf"^(?:({_NAME})\.)?({_NAME})\.({_NAME})$")
TABLE_RE = re.compile(rf"^{_NAME}$")
MODES: dict[str, Mode] = {"delete": "delete", "anonymise": "anonymise", "anonymize": "anonymise"}


class SettingError(ValueError):
    """One line naming the variable, never its value."""


@dataclass(frozen=True, order=True)
class ColumnRef:
    """A configured column; `schema` None means the connection's search_path decides."""

    schema: str | None
    table: str
    column: str

    @property
    def relation(self) -> str:
        return f"{self.schema}.{self.table}" if self.schema else self.table

    def __str__(self) -> str:
        return f"{self.relation}.{self.column}"


@dataclass(frozen=True)
class ErasureSettings:
    columns: tuple[ColumnRef, ...] = ()
    clear_columns: tuple[ColumnRef, ...] = ()
    json_columns: tuple[ColumnRef, ...] = ()
    scan_all: bool = False
    modes: Mapping[str, Mode] = field(default_factory=dict)  # by table name, lowercased

    def mode(self, table: str) -> Mode:
        """What happens to a table's rows matched through ERASURE_COLUMNS."""
        return self.modes.get(table.lower(), "delete")


def _columns(env: Mapping[str, str], name: str, default: str) -> tuple[ColumnRef, ...]:
    raw = env.get(name)
    raw = default if raw is None else raw
    refs: list[ColumnRef] = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        match = COLUMN_RE.match(part)
        if not match:
            raise SettingError(f"{name} is malformed: expected comma-separated table.column pairs")
        ref = ColumnRef(*match.groups())
        if ref not in refs:
            refs.append(ref)
    return tuple(refs)


def _switch(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingError(f"{name} is malformed: expected 1 or 0")


def load_erasure_settings(env: Mapping[str, str]) -> ErasureSettings:
    modes: dict[str, Mode] = {}
    for key, raw in env.items():
        if not key.upper().startswith(MODE_PREFIX) or not raw.strip():
            continue
        table = key[len(MODE_PREFIX) :]
        if not TABLE_RE.match(table):
            raise SettingError(f"{key} is malformed: the suffix must be a table name")
        mode = MODES.get(raw.strip().lower())
        if mode is None:
            raise SettingError(f"{key} is malformed: expected delete or anonymise")
        modes[table.lower()] = mode
    return ErasureSettings(
        columns=_columns(env, "ERASURE_COLUMNS", DEFAULT_COLUMNS),
        clear_columns=_columns(env, "ERASURE_CLEAR_COLUMNS", DEFAULT_CLEAR),
        json_columns=_columns(env, "ERASURE_JSON_COLUMNS", ""),
        scan_all=_switch(env, "ERASURE_SCAN_ALL"),
        modes=modes,
    )
