"""Numbers and times in words, the same way on every surface."""

from __future__ import annotations

from datetime import datetime

IRREGULAR = {"query": "queries", "entry": "entries", "index": "indexes", "is": "are", "was": "were", "has": "have"}


def noun(count: int, singular: str, plural: str | None = None) -> str:
    """`row` or `rows` for `count` (`query` -> `queries`; pass `plural` for anything else irregular)."""
    if count == 1:
        return singular
    return plural or IRREGULAR.get(singular) or singular + "s"


def plural(count: int, singular: str, plural: str | None = None) -> str:
    """`1 row`, `0 rows`, `1,234 rows`."""
    return f"{count:,} {noun(count, singular, plural)}"


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "never"


def human_bytes(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
