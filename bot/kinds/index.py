"""Kinds `create-index` and `drop-index` (bot/indexes/).

create-index
- plan: from **Create index** on an unindexed-foreign-key finding (the daily check, the impact report,
  `/mcp indexes`): the table and columns, refused if an equivalent valid index exists already; the
  predictable name (`<table>_<columns>_idx`) and the exact statement.
- check: still no equivalent index, the table and columns still there.
- run: `CREATE INDEX CONCURRENTLY` outside any transaction with `lock_timeout`, progress from
  `pg_stat_progress_create_index`; a failed or cancelled build's INVALID index is dropped, and said.
- verify: the index is valid.

drop-index
- plan: from **Drop index** on an invalid or duplicate index (the health checks, `/mcp indexes`): the
  index by name *and* definition; refused for an index that backs a constraint.
- check: the same index, still invalid (or still a duplicate of the one that stays).
- run: `DROP INDEX CONCURRENTLY` outside any transaction with `lock_timeout`.
"""

from __future__ import annotations

from typing import Any

from bot.errors import CommandError, UserFacingError
from bot.indexes.build import BuildFailed, build, create_statement, drop, drop_leftover
from bot.indexes.catalog import TableNow, equivalent_index, index_now, index_qualified, table_now
from bot.indexes.naming import index_name
from bot.requests.kinds import Kind, ProgressCallback, Proposal, Stale, kind
from bot.requests.store import Request
from bot.stages import Stage


class Refused(UserFacingError):
    outcome = "denied"


def _text(target: dict[str, Any], key: str) -> str:
    value = target.get(key)
    if not isinstance(value, str) or not value or len(value) > 63:
        raise CommandError("that button's data is not readable; look at the finding again")
    return value


def _columns(target: dict[str, Any]) -> list[str]:
    columns = target.get("columns")
    if not isinstance(columns, list) or not 0 < len(columns) <= 32:
        raise CommandError("that button's data is not readable; look at the finding again")
    return [_text({"column": c}, "column") for c in columns]


def _same_as_shown(target: dict[str, Any], now: TableNow, shown: str) -> None:
    """A stored target (a request's) names the table and columns by identity too: are they still those?"""
    if "table_oid" not in target:
        return  # a button's ask: the plan takes the identity now
    if now.oid != target["table_oid"]:
        raise Refused(f"{shown} is not the one shown any more: the table was dropped and made again")
    if now.attnums != target.get("attnums") or now.types != target.get("types"):
        raise Refused(f"{shown} is not the one shown any more: a column was dropped and added again, or changed type")


class _IndexKind(Kind):
    """A plan is the catalog looked at now (`_look`: the impact, or Refused); the check looks again."""

    def _look(self, stage: Stage, target: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _named(self, target: dict[str, Any], impact: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """(subject, target as stored) of a plan."""
        raise NotImplementedError

    def plan(self, stage: Stage, target: dict[str, Any], options: dict[str, Any]) -> Proposal:
        impact = self._look(stage, target)
        subject, stored = self._named(target, impact)
        return Proposal(
            kind=self.name, stage=stage.name, subject=subject, target=stored, impact=impact, options=options
        )

    def check(self, request: Request) -> None:
        try:
            self._look(self.runtime.stages.get(request.stage), request.target)
        except Refused as exc:
            raise Stale(exc.message, target_changed=True) from None


@kind
class CreateIndexKind(_IndexKind):
    name = "create-index"
    title = "Create index"
    done = "built"

    def _look(self, stage: Stage, target: dict[str, Any]) -> dict[str, Any]:
        """The plan as the catalog is now; Refused (a UserFacingError) when there is nothing to build."""
        schema, table, columns = _text(target, "schema"), _text(target, "table"), _columns(target)
        shown = f"{schema}.{table} ({', '.join(columns)})"
        with stage.read() as conn:
            now = table_now(conn, schema, table, columns)
            if now is None:
                raise Refused(f"table {schema}.{table} no longer exists")
            if now.missing:
                raise Refused(f"table {schema}.{table} has no column {', '.join(now.missing)}")
            _same_as_shown(target, now, shown)
            equivalent = equivalent_index(conn, now)
            if equivalent is not None:
                raise Refused(f"an equivalent index exists already on {shown}: `{equivalent[1]}`")
            name = index_name(table, columns)
            named = index_now(conn, schema, name)
            if named is not None and named.valid:
                raise Refused(f"an index named `{name}` exists already, on other columns: `{named.definition}`")
        return {
            "name": name,
            "statement": create_statement(schema, table, columns, name),
            "table": f"{schema}.{table}",
            "columns": columns,
            "rows": now.rows,
            "bytes": now.bytes,
            "leftover": named is not None,  # an INVALID index of that name, from an earlier failed build
            "identity": {"table_oid": now.oid, "attnums": now.attnums, "types": now.types},
        }

    def _named(self, target: dict[str, Any], impact: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """By name for people, and by identity for the check: the table's oid, the columns' numbers and types
        (a table dropped and made again, or a column dropped and added again, has the same names)."""
        subject = f"{impact['table']} ({', '.join(impact['columns'])})"
        stored = {"schema": target["schema"], "table": target["table"], "columns": impact["columns"]}
        return subject, {**stored, **impact.pop("identity")}

    def run(self, request: Request, progress: ProgressCallback) -> dict[str, Any]:
        stage = self.runtime.stages.get(request.stage)
        target = request.target
        name = str(request.impact["name"])
        settings = self.runtime.settings
        cleaned = None
        with stage.read() as conn:
            leftover = index_now(conn, target["schema"], name)
        if leftover is not None and not leftover.valid:
            cleaned = drop_leftover(stage, target["schema"], name, settings.lock_timeout_ms)
        built = build(
            stage,
            target["schema"],
            target["table"],
            target["columns"],
            name,
            lock_timeout_ms=settings.lock_timeout_ms,
            statement_timeout_ms=settings.index_build_timeout_s * 1000,
            work_name=stage.work_name(f"request-{request.id}"),
            progress=progress,
        )
        return {
            "index": built.name,
            "definition": built.definition,
            "bytes": built.bytes,
            "seconds": round(built.seconds, 3),
            "cleaned": cleaned,
        }

    def verify(self, request: Request, result: dict[str, Any]) -> list[str]:
        stage = self.runtime.stages.get(request.stage)
        with stage.read() as conn:
            made = index_now(conn, request.target["schema"], str(result["index"]))
        if made is None or not made.valid or not made.ready:
            return [f"the index `{result['index']}` is not valid"]
        target = request.target
        if "table_oid" in target and (made.table_oid, made.keys) != (target["table_oid"], target["attnums"]):
            return [f"the index `{result['index']}` is not on the table and columns approved: `{made.definition}`"]
        return []

    def recover(self, request: Request) -> tuple[str, str | None] | None:
        """The bot stopped during the build: a valid index means it finished; an INVALID one is dropped."""
        stage = self.runtime.stages.get(request.stage)
        name = str(request.impact.get("name", ""))
        with stage.read() as conn:
            made = index_now(conn, request.target["schema"], name)
        if made is not None and made.valid:
            return "done", None
        cleaned = drop_leftover(stage, request.target["schema"], name, self.runtime.settings.lock_timeout_ms)
        return "failed", f"the bot stopped while the index was being built; {cleaned}"


@kind
class DropIndexKind(_IndexKind):
    name = "drop-index"
    title = "Drop index"
    done = "dropped"

    def _look(self, stage: Stage, target: dict[str, Any]) -> dict[str, Any]:
        schema, index = _text(target, "schema"), _text(target, "index")
        reason = target.get("reason")
        shown = f"{schema}.{index}"
        with stage.read() as conn:
            now = index_now(conn, schema, index)
            if now is None:
                raise Refused(f"index {shown} no longer exists")
            if now.definition != target.get("definition"):
                raise Refused(f"index {shown} is not the one shown any more: it is now `{now.definition}`")
            if now.constraint_backed:
                raise Refused(f"index {shown} backs a constraint: drop or change the constraint instead")
            if now.building:
                raise Refused(f"index {shown} is being built right now")
            if reason == "invalid" and now.valid:
                raise Refused(f"index {shown} is valid now")
            if reason == "duplicate":
                keeper = str(target.get("keeper") or "")
                twin = index_qualified(conn, keeper) if keeper else None
                if twin is None or not twin.valid or twin.table_oid != now.table_oid:
                    raise Refused(f"index {shown} is no longer a duplicate: {keeper or 'its twin'} is gone or invalid")
                if twin.definition != target.get("keeper_definition", twin.definition):
                    raise Refused(f"index {shown} is no longer a duplicate: {keeper} is now `{twin.definition}`")
            elif reason != "invalid":
                raise CommandError("that button's data is not readable; look at the finding again")
        return {
            "index": shown,
            "definition": now.definition,
            "bytes": now.bytes,
            "reason": reason,
            "keeper": target.get("keeper"),
        }

    def _named(self, target: dict[str, Any], impact: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return impact["index"], dict(target)

    def run(self, request: Request, progress: ProgressCallback) -> dict[str, Any]:
        stage = self.runtime.stages.get(request.stage)
        lock_ms = self.runtime.settings.lock_timeout_ms
        schema, index = request.target["schema"], request.target["index"]
        try:
            left = drop(stage, schema, index, lock_timeout_ms=lock_ms, statement_timeout_ms=max(lock_ms * 10, 60_000))
        except BuildFailed as exc:
            # DROP INDEX CONCURRENTLY first marks the index invalid (committed), then waits for the
            # transactions that use the table: a failure after that leaves it invalid, unused but written to.
            with stage.read() as conn:
                now = index_now(conn, schema, index)
            if now is None or now.valid:
                raise
            raise BuildFailed(
                f"{exc.message}; the index is left INVALID (no longer used, still written to): "
                "`/mcp indexes` lists it with Drop index, to press once the table is free"
            ) from None
        if left is not None:
            raise BuildFailed(f"index {request.subject} is still there after DROP INDEX CONCURRENTLY")
        return {"index": request.subject, "bytes": int(request.impact.get("bytes", 0))}
