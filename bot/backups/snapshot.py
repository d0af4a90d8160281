"""An RDS or Aurora snapshot of a stage, taken with boto3 and waited for (bounded)."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, WaiterError

from bot.config import RdsTarget
from bot.errors import UserFacingError


class SnapshotFailed(UserFacingError):
    outcome = "error"


def snapshot_identifier(stage: str, now: datetime | None = None) -> str:
    """`mcp-ops-<stage>-<utc time>-<random>`: letters, digits and single hyphens, as RDS requires."""
    moment = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    clean = re.sub(r"-+", "-", re.sub(r"[^A-Za-z0-9]", "-", stage)).strip("-").lower() or "stage"
    return f"mcp-ops-{clean[:20]}-{moment}-{secrets.token_hex(2)}"


def _rds_client() -> Any:
    return boto3.session.Session().client(
        "rds", config=BotoConfig(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10)
    )


def take_snapshot(
    target: RdsTarget, *, stage: str, wait_s: int, client: Any = None, poll_s: int = 15
) -> dict[str, Any]:
    """Create the snapshot and wait until it is available (at most `wait_s`); raise SnapshotFailed otherwise."""
    client = client or _rds_client()
    identifier = snapshot_identifier(stage)
    tags = [{"Key": "created-by", "Value": "mcp-ops"}, {"Key": "stage", "Value": stage}]
    delay = max(1, min(poll_s, wait_s))
    waiter_config = {"Delay": delay, "MaxAttempts": max(1, wait_s // delay)}
    what = f"{target.kind} {target.identifier}"
    try:
        if target.kind == "cluster":
            created = client.create_db_cluster_snapshot(
                DBClusterSnapshotIdentifier=identifier, DBClusterIdentifier=target.identifier, Tags=tags
            )["DBClusterSnapshot"]
            arn = created.get("DBClusterSnapshotArn")
            client.get_waiter("db_cluster_snapshot_available").wait(
                DBClusterSnapshotIdentifier=identifier, WaiterConfig=waiter_config
            )
        else:
            created = client.create_db_snapshot(
                DBSnapshotIdentifier=identifier, DBInstanceIdentifier=target.identifier, Tags=tags
            )["DBSnapshot"]
            arn = created.get("DBSnapshotArn")
            client.get_waiter("db_snapshot_available").wait(DBSnapshotIdentifier=identifier, WaiterConfig=waiter_config)
    except WaiterError:
        raise SnapshotFailed(f"the RDS snapshot {identifier} of {what} was not available within {wait_s} s") from None
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise SnapshotFailed(f"the RDS snapshot of {what} failed ({code})") from None
    except BotoCoreError as exc:
        raise SnapshotFailed(f"the RDS snapshot of {what} failed ({type(exc).__name__})") from None
    return {
        "kind": target.kind,
        "source": target.identifier,
        "snapshot_id": identifier,
        "arn": arn,
        "status": "available",
        "taken_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
