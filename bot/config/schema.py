"""Schema settings (issue 14): the platform's Drizzle migrations, the reference stage and what drift ignores.

Kept apart because these name PostgreSQL identifiers and a folder, each checked on its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bot.config.stages import StageConfig
from bot.config.values import ConfigError, read_int, split_csv

IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}\Z")
IGNORE_PATTERN_RE = re.compile(r"^[A-Za-z0-9_$*?.\[\]-]{1,200}\Z")


@dataclass(frozen=True)
class SchemaSettings:
    """Drizzle bookkeeping and schema drift (issue 14): where migrations live, what to compare against."""

    migrations_dir: Path | None = None  # the platform's migrations folder as deployed
    migrations_schema: str = "drizzle"
    migrations_table: str = "__drizzle_migrations"
    reference_stage: str | None = "staging"  # None: not configured here, so no lag check or impact comparison
    lag_alert_hours: int = 72
    drift_ignore: tuple[str, ...] = ()  # schema/table globs that are not the app's (Inngest shares the database)


def read_schema(env: Mapping[str, str], stages: Mapping[str, StageConfig]) -> SchemaSettings:
    raw_dir = env.get("MIGRATIONS_DIR", "").strip()
    directory = Path(raw_dir).expanduser() if raw_dir else None
    if directory is not None and not directory.is_dir():
        raise ConfigError("MIGRATIONS_DIR is not a directory: expected the platform's migrations folder")
    names = {}
    for var, default in (("MIGRATIONS_SCHEMA", "drizzle"), ("MIGRATIONS_TABLE", "__drizzle_migrations")):
        names[var] = env.get(var, "").strip() or default
        if not IDENTIFIER_RE.match(names[var]):
            raise ConfigError(f"{var} is malformed: expected a PostgreSQL identifier such as {default}")
    reference: str | None = env.get("MIGRATION_REFERENCE_STAGE", "").strip().lower()
    if reference and reference not in stages:
        raise ConfigError(f"MIGRATION_REFERENCE_STAGE names stage {reference!r}, which is not configured")
    if not reference:
        reference = "staging" if "staging" in stages else None
    patterns = split_csv(env.get("DRIFT_IGNORE", ""))
    for pattern in patterns:
        if not IGNORE_PATTERN_RE.match(pattern):
            raise ConfigError("DRIFT_IGNORE is malformed: expected comma-separated schema.table patterns")
    return SchemaSettings(
        migrations_dir=directory,
        migrations_schema=names["MIGRATIONS_SCHEMA"],
        migrations_table=names["MIGRATIONS_TABLE"],
        reference_stage=reference,
        lag_alert_hours=read_int(env, "MIGRATION_LAG_ALERT_HOURS", 72, 1, 87_600),
        drift_ignore=tuple(patterns),
    )
