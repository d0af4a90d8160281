"""What each read-only verb does, given a prepared request; the results are plain data.

Every stage query runs in a read-only transaction (Stage.read).
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.audit import AuditRow
from bot.commands import VERBS, Verb
from bot.platform import servers
from bot.runtime import Runtime
from bot.service import CommandRequest, operation
from bot.stages import Stage


@dataclass(frozen=True)
class HelpResult:
    verbs: list[Verb]
    topic: Verb | None


@dataclass(frozen=True)
class AuditResult:
    rows: list[AuditRow]
    stage: str | None


def _stage(request: CommandRequest) -> Stage:
    assert request.stage is not None, "verbs with stage='required' always have one"
    return request.stage


@operation("help")
def run_help(runtime: Runtime, request: CommandRequest) -> HelpResult:
    topic = request.parsed.args.get("command")
    return HelpResult(verbs=list(VERBS.values()), topic=VERBS[topic] if topic else None)


@operation("find")
def run_find(runtime: Runtime, request: CommandRequest) -> servers.ServerSummary:
    with _stage(request).read() as conn:
        return servers.find_server(conn, request.parsed.args["slug"])


@operation("list")
def run_list(runtime: Runtime, request: CommandRequest) -> servers.Page[servers.ServerSummary]:
    with _stage(request).read() as conn:
        return servers.list_servers(
            conn, org=request.parsed.flags.get("org"), limit=request.parsed.flags["limit"], cursor=request.cursor
        )


@operation("stats")
def run_stats(runtime: Runtime, request: CommandRequest) -> servers.ServerStats:
    with _stage(request).read() as conn:
        return servers.server_stats(conn, request.parsed.args["slug"], days=request.parsed.flags["days"])


@operation("users")
def run_users(runtime: Runtime, request: CommandRequest) -> servers.Page[servers.ServerUser]:
    with _stage(request).read() as conn:
        return servers.server_users(
            conn, request.parsed.args["slug"], limit=request.parsed.flags["limit"], cursor=request.cursor
        )


@operation("audit")
def run_audit(runtime: Runtime, request: CommandRequest) -> AuditResult:
    stage = request.stage.name if request.stage else None
    return AuditResult(rows=runtime.audit.latest(stage=stage, limit=request.parsed.flags["limit"]), stage=stage)
