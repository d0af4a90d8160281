"""Where a person's data sits outside the foreign-key graph, from the environment (`/mcp forget-user`).

- `ERASURE_COLUMNS`: `table.column` (or `schema.table.column`) pairs holding an email with no foreign
  key to the user rows; rows whose value is the person's email (case-insensitive) are erased.
  Default `support_requests.email`. Names are read as PostgreSQL reads them: unquoted ones in lower
  case, double-quoted ones exactly (`crm."Contacts"."E-Mail"`, `""` for a quote inside).
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
TABLE_RE = re.compile(_NAME)  # whole string (fullmatch)
# One part of a dotted name: "quoted" (a doubled quote inside) or unquoted (folded to lower case, as
# PostgreSQL does); then the separator after a whole name: a comma or the end.
_PART = re.compile(r'\s*(?:"((?:[^"]|"")+)"|([A-Za-z_\u0080-\U0010FFFF][A-Za-z0-9_$\u0080-\U0010FFFF]*))\s*')
_AFTER = re.compile(r"(\.)|,|\Z")
_GAP = re.compile(r"[\s,]*")
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
    def relation(self) -> tuple[str, ...]:
        """The table's name parts (schema first when given), unquoted."""
        return (self.schema, self.table) if self.schema else (self.table,)

    def __str__(self) -> str:
        return ".".join((*self.relation, self.column))


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


def _fold(name: str) -> str:
    """An unquoted name as PostgreSQL folds it in a UTF-8 database: ASCII letters only."""
    return "".join(c.lower() if c.isascii() else c for c in name)


def parse_column_list(raw: str) -> list[tuple[str, ...]] | None:
    """Comma-separated dotted names (2 or 3 parts), quoted or not, as PostgreSQL reads them; None if malformed."""
    names: list[tuple[str, ...]] = []
    at = 0
    while True:
        gap = _GAP.match(raw, at)  # commas and spaces between names (an empty match at worst)
        at = gap.end() if gap else at
        if at >= len(raw):
            break
        parts: list[str] = []
        while True:
            part = _PART.match(raw, at)
            if part is None:
                return None
            quoted, bare = part.groups()
            parts.append(quoted.replace('""', '"') if quoted is not None else _fold(bare))
            after = _AFTER.match(raw, part.end())
            if after is None:
                return None
            at = after.end()
            if not after.group(1):
                break
        if len(parts) not in (2, 3):
            return None
        names.append(tuple(parts))
    return names


def _columns(env: Mapping[str, str], name: str, default: str) -> tuple[ColumnRef, ...]:
    raw = env.get(name)
    raw = default if raw is None else raw
    parsed = parse_column_list(raw)
    if parsed is None:
        raise SettingError(f"{name} is malformed: expected comma-separated table.column (or schema.table.column) names")
    refs: list[ColumnRef] = []
    for parts in parsed:
        ref = ColumnRef(*parts) if len(parts) == 3 else ColumnRef(None, *parts)
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
        if not TABLE_RE.fullmatch(table):
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
