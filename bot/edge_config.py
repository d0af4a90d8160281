"""Settings of the edge: the HTTP server's limits, workspace binding, metrics access, work lanes.

Read by `bot.config.load_settings` (as `Settings.edge`); documented in docs/edge.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

TEAM_ID_RE = re.compile(r"[TE][A-Z0-9]{2,31}")  # whole string (fullmatch)
METRICS_TOKEN_RE = re.compile(r"[\x21-\x7e]{16,512}")  # printable ASCII, no spaces; whole string (fullmatch)


@dataclass(frozen=True)
class EdgeSettings:
    # Workspaces (team ids `T...`) and Enterprise Grid organisations (`E...`) allowed to talk to the bot;
    # empty: any workspace whose requests carry a valid signature (check-config warns).
    team_ids: frozenset[str] = frozenset()
    header_timeout_s: float = 5.0  # from the connection (or the request's first byte) to its last header
    body_timeout_s: float = 10.0  # from the last header to the last byte of the body
    max_connections_per_client: int = 256  # open connections per client address; more are closed at once
    dispatch_threads: int = 32  # verified requests handed to Bolt at once (their listeners run on these threads)
    metrics_token: str = ""  # when set, /metrics wants `Authorization: Bearer <token>`
    metrics_port: int | None = None  # when set, /metrics is served on this port only
    metrics_refresh_s: float = 15.0  # how often the metrics read from the bot database are refreshed
    read_workers: int = 12  # read-only commands run on their own lane...
    read_queue: int = 256  # ...which holds at most this many waiting; more answer "busy"
    work_workers: int = 8  # clicks, approved executions and changing commands: a lane reads cannot fill
    work_queue: int = 512
    approval_workers: int = 4  # clicks on request messages (approve, confirm, cancel, reject)...
    approval_queue: int = 256
    exec_workers: int = 4  # ...and approved executions: two lanes of their own, so neither a flood of other
    exec_queue: int = 64  # clicks and commands nor a flood of strangers' Approve clicks delays an approved run
    heavy_reads_per_user: int = 2  # impact, health, stats, slow-queries running at once for one person
    heavy_reads_per_stage: int = 4  # ...and on one stage
    audit_coalesce_s: int = 60  # repeated refusals of one person within this window: one audit post


def load_edge_settings(env: Mapping[str, str]) -> EdgeSettings:
    from bot.config.values import ConfigError  # bot.config imports this module
    from bot.config.values import read_float as _float
    from bot.config.values import read_int as _int
    from bot.config.values import split_csv as _csv

    team_ids = frozenset(_csv(env.get("SLACK_TEAM_ID", "")))
    for value in team_ids:
        if not TEAM_ID_RE.fullmatch(value):
            raise ConfigError("SLACK_TEAM_ID is malformed: expected comma-separated team or enterprise IDs (T…, E…)")
    token = env.get("METRICS_TOKEN", "").strip()
    if token and not METRICS_TOKEN_RE.fullmatch(token):
        raise ConfigError("METRICS_TOKEN is malformed: expected 16 to 512 printable characters without spaces")
    metrics_port = _int(env, "METRICS_PORT", 0, 0, 65_535) or None
    return EdgeSettings(
        team_ids=team_ids,
        header_timeout_s=_float(env, "HTTP_HEADER_TIMEOUT_SECONDS", 5.0, 0.5, 300.0),
        body_timeout_s=_float(env, "HTTP_BODY_TIMEOUT_SECONDS", 10.0, 0.5, 300.0),
        max_connections_per_client=_int(env, "HTTP_MAX_CONNECTIONS_PER_CLIENT", 256, 1, 100_000),
        dispatch_threads=_int(env, "HTTP_DISPATCH_THREADS", 32, 1, 1024),
        metrics_token=token,
        metrics_port=metrics_port,
        metrics_refresh_s=_float(env, "METRICS_REFRESH_SECONDS", 15.0, 0.5, 3600.0),
        read_workers=_int(env, "READ_WORKERS", 12, 1, 256),
        read_queue=_int(env, "READ_QUEUE", 256, 0, 100_000),
        work_workers=_int(env, "WORK_WORKERS", 8, 1, 256),
        work_queue=_int(env, "WORK_QUEUE", 512, 0, 100_000),
        approval_workers=_int(env, "APPROVAL_WORKERS", 4, 1, 256),
        approval_queue=_int(env, "APPROVAL_QUEUE", 256, 0, 100_000),
        exec_workers=_int(env, "EXEC_WORKERS", 4, 1, 256),
        exec_queue=_int(env, "EXEC_QUEUE", 64, 0, 100_000),
        heavy_reads_per_user=_int(env, "HEAVY_READS_PER_USER", 2, 1, 1000),
        heavy_reads_per_stage=_int(env, "HEAVY_READS_PER_STAGE", 4, 1, 1000),
        audit_coalesce_s=_int(env, "AUDIT_COALESCE_SECONDS", 60, 0, 86_400),
    )
