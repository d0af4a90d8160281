"""Reading one variable: whole numbers, numbers, switches, choices and lists, each in a range.

Kept apart so every settings module (and bot/edge_config.py, bot/health/thresholds.py) words a bad value
the same way: one line that names the variable and never echoes its value.
"""

from __future__ import annotations

from collections.abc import Mapping


class ConfigError(Exception):
    """A configuration problem, worded for a one-line startup failure."""


def split_csv(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def read_int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} is malformed: expected a whole number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} is out of range: expected {low}..{high}")
    return value


def read_float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} is malformed: expected a number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} is out of range: expected {low:g}..{high:g}")
    return value


def read_one_of(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (the first is the default)."""
    raw = env.get(name, "").strip().lower() or choices[0]
    if raw not in choices:
        raise ConfigError(f"{name} is malformed: expected {' or '.join(choices)}")
    return raw


def read_switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} is malformed: expected on or off")
