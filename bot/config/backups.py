"""Where full backups go (S3 bucket and prefix, SSE-KMS key, or a directory), how long they are kept, and pg_dump.

Kept apart because the destinations exclude one another and each has its own rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bot.config.values import ConfigError, read_int

BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
PREFIX_RE = re.compile(r"^[A-Za-z0-9!_.*'()/-]{0,200}\Z")
KMS_KEY_RE = re.compile(r"^[A-Za-z0-9:/_-]{1,2048}\Z")


@dataclass(frozen=True)
class BackupSettings:
    bucket: str | None = None
    prefix: str = ""
    kms_key_id: str | None = None
    directory: Path | None = None
    retention_days: int | None = None
    snapshot_wait_s: int = 1800
    progress_interval_s: float = 2.0
    pg_dump: Path | None = None  # PG_DUMP: this pg_dump for full backups, else the newest suitable one installed

    @property
    def destination(self) -> str:
        if self.bucket:
            return f"s3://{self.bucket}/{self.prefix}" + (" (SSE-KMS)" if self.kms_key_id else "")
        if self.directory is not None:
            return f"directory {self.directory}"
        return "none"


def read_backup(env: Mapping[str, str]) -> BackupSettings:
    bucket = env.get("BACKUP_BUCKET", "").strip() or None
    if bucket is not None and not BUCKET_RE.match(bucket):
        raise ConfigError("BACKUP_BUCKET is malformed: expected an S3 bucket name")
    prefix = env.get("BACKUP_PREFIX", "").strip().strip("/")
    if not PREFIX_RE.match(prefix) or ".." in prefix.split("/"):
        raise ConfigError("BACKUP_PREFIX is malformed: expected a key prefix such as mcp-ops/backups")
    kms = env.get("BACKUP_KMS_KEY_ID", "").strip() or None
    if kms is not None and not KMS_KEY_RE.match(kms):
        raise ConfigError("BACKUP_KMS_KEY_ID is malformed: expected a KMS key id, alias or ARN")
    if kms is not None and bucket is None:
        raise ConfigError("BACKUP_KMS_KEY_ID is set without BACKUP_BUCKET")
    raw_dir = env.get("BACKUP_DIR", "").strip()
    retention = read_int(env, "BACKUP_RETENTION_DAYS", 0, 1, 36_500) or None
    if retention is not None and bucket is not None:
        raise ConfigError("BACKUP_RETENTION_DAYS applies to BACKUP_DIR only: for S3, use a lifecycle rule")
    return BackupSettings(
        bucket=bucket,
        prefix=f"{prefix}/" if prefix else "",
        kms_key_id=kms,
        directory=Path(raw_dir).expanduser() if raw_dir and bucket is None else None,
        retention_days=retention,
        snapshot_wait_s=read_int(env, "RDS_SNAPSHOT_WAIT_SECONDS", 1800, 10, 7200),
        progress_interval_s=float(read_int(env, "BACKUP_PROGRESS_SECONDS", 2, 1, 600)),
        pg_dump=Path(env["PG_DUMP"].strip()).expanduser() if env.get("PG_DUMP", "").strip() else None,
    )
