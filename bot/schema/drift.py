"""`/mcp drift <stage-a> <stage-b>`: how two stages' schemas differ, grouped by table.

Both catalogs are read at once (one read-only transaction each, a fixed number of catalog
queries whatever the number of tables: bot/pgcatalog), then compared object by object and
attribute by attribute. The migrations table and DRIFT_IGNORE patterns are left out, and so
is everything an extension owns (the extension and its version are compared instead).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pglast import ast, parse_sql
from pglast.parser import ParseError
from pglast.stream import RawStream
from pglast.visitors import Visitor

from bot.config import SchemaSettings
from bot.errors import CommandError
from bot.pgcatalog import DATABASE, CatalogObject, Skip, Snapshot, ignorer, read_snapshot
from bot.stages import Stage

TABLE_KINDS = frozenset({"table", "view"})


@dataclass(frozen=True)
class Difference:
    group: str  # "schema.table", or DATABASE
    kind: str
    name: str
    only_on: str | None = None  # the stage that has the object, when only one has it
    attr: str | None = None
    a: str | None = None
    b: str | None = None

    def subject(self) -> str:
        table = self.group.removeprefix("public.")
        if self.kind == "column":
            return f"`{table}.{self.name}`"
        if self.kind in TABLE_KINDS:
            return f"{self.kind} `{table}`"
        return f"{self.kind} `{self.name.removeprefix('public.')}`"

    def describe(self, stage_a: str, stage_b: str) -> str:
        """One line of plain text (identifiers in backticks), e.g. "`t.c`: default `1` on dev, `2` on staging"."""
        if self.only_on is not None:
            return f"only on {self.only_on}: {self.subject()}"
        if self.kind == "enum" and self.a is not None and self.b is not None:
            return f"{self.subject()}: {_enum_change(self.a, self.b, stage_a, stage_b)}"
        attr = "" if self.attr in ("nullability", "state", "validity", "version", "values") else f"{self.attr} "
        return f"{self.subject()}: {attr}`{self.a}` on {stage_a}, `{self.b}` on {stage_b}"


def _enum_change(a: str, b: str, stage_a: str, stage_b: str) -> str:
    left, right = a.split(", "), b.split(", ")
    parts = []
    if extra := [v for v in left if v not in right]:
        parts.append(f"{', '.join(extra)} only on {stage_a}")
    if extra := [v for v in right if v not in left]:
        parts.append(f"{', '.join(extra)} only on {stage_b}")
    if not parts:
        parts.append(f"values in another order (`{a}` on {stage_a}, `{b}` on {stage_b})")
    return "; ".join(parts)


@dataclass
class DriftReport:
    stage_a: str
    stage_b: str
    differences: list[Difference]
    tables_compared: int
    queries: dict[str, int]  # catalog statements per stage
    server_versions: dict[str, int]
    took_ms: int = 0
    ignored: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    views: frozenset[str] = frozenset()  # groups that are views (on either stage)

    @property
    def identical(self) -> bool:
        return not self.differences

    def by_group(self) -> dict[str, list[Difference]]:
        """Differences per table (database-wide ones first), in a stable order."""
        grouped: dict[str, list[Difference]] = {}
        for diff in sorted(self.differences, key=lambda d: (d.group != DATABASE, d.group, d.kind, d.name)):
            grouped.setdefault(diff.group, []).append(diff)
        return grouped

    def lines(self, group: str) -> list[str]:
        return [d.describe(self.stage_a, self.stage_b) for d in self.by_group().get(group, [])]

    def as_text(self) -> str:
        """The whole diff as plain text: what the file attached to a long answer holds."""
        out = [f"Schema drift: {self.stage_a} vs {self.stage_b}"]
        if self.identical:
            out.append("identical")
        for group, diffs in self.by_group().items():
            out.append("")
            out.append(group_title(group, self.views))
            out += [f"  {d.describe(self.stage_a, self.stage_b)}" for d in diffs]
        return "\n".join(out) + "\n"


def group_title(group: str, views: frozenset[str] = frozenset()) -> str:
    if group == DATABASE:
        return "database (types, extensions, sequences)"
    return f"{'view' if group in views else 'table'} {group.removeprefix('public.')}"


def compare(a: Snapshot, b: Snapshot, stage_a: str, stage_b: str) -> list[Difference]:
    """Every difference between two snapshots; a table on one side only is one line, not one per column."""
    diffs: list[Difference] = []
    keys = set(a.objects) | set(b.objects)
    lone_groups = {key[0] for key in keys if key[1] in TABLE_KINDS and (key not in a.objects or key not in b.objects)}
    for key in sorted(keys):
        left, right = a.objects.get(key), b.objects.get(key)
        group, kind, name = key
        if group in lone_groups and kind not in TABLE_KINDS:
            continue
        if left is None or right is None:
            diffs.append(Difference(group, kind, name, only_on=stage_a if right is None else stage_b))
            continue
        diffs += _attribute_differences(left, right, same_major=a.server_version // 10000 == b.server_version // 10000)
    return diffs


def view_shape(definition: str) -> str:
    """A view's query as any PostgreSQL major prints it: parsed (libpg_query, through pglast), column references
    without their table, deparsed. PostgreSQL 16+ leaves out the table qualifiers 15 printed; the rest is the same."""
    try:
        tree = parse_sql(definition)
        _Unqualified()(tree)
        return str(RawStream()(tree))
    except (ParseError, NotImplementedError, ValueError, TypeError):  # not parsed or not printed: the text as is
        return definition


class _Unqualified(Visitor):
    def visit_ColumnRef(self, _ancestors: object, node: ast.ColumnRef) -> ast.ColumnRef | None:
        return ast.ColumnRef(fields=(node.fields[-1],)) if len(node.fields) > 1 else None


def _attribute_differences(left: CatalogObject, right: CatalogObject, *, same_major: bool = True) -> list[Difference]:
    theirs = dict(right.attrs)
    found = []
    for attr, value in left.attrs:
        other = theirs.get(attr)
        if other != value and not (
            # Two majors print one view differently: compare what the query is, not how it was printed.
            not same_major
            and left.kind == "view"
            and attr == "definition"
            and other is not None
            and view_shape(value) == view_shape(other)
        ):
            found.append(Difference(left.group, left.kind, left.name, attr=attr, a=value, b=other or "none"))
    found += [
        Difference(left.group, left.kind, left.name, attr=attr, a="none", b=value)
        for attr, value in right.attrs
        if attr not in dict(left.attrs)
    ]
    return found


def skip_for(settings: SchemaSettings) -> Skip:
    """DRIFT_IGNORE plus the migrations table, whose rows (not shape) are /mcp migrations' business."""
    return ignorer(settings.drift_ignore, [(settings.migrations_schema, settings.migrations_table)])


def read_both(stages: Iterable[Stage], skip: Skip) -> list[Snapshot]:
    """Each stage's snapshot, read at the same time, each in a read-only transaction of its own."""

    def read(stage: Stage) -> Snapshot:
        with stage.read() as conn:
            return read_snapshot(conn, skip)

    listed = list(stages)
    with ThreadPoolExecutor(max_workers=len(listed), thread_name_prefix="drift") as pool:
        return list(pool.map(read, listed))


def drift(stage_a: Stage, stage_b: Stage, settings: SchemaSettings) -> DriftReport:
    if stage_a.name == stage_b.name:
        raise CommandError(
            f"name two different stages (both are `{stage_a.name}`)", usage="/mcp drift <stage-a> <stage-b>"
        )
    started = time.perf_counter()
    a, b = read_both([stage_a, stage_b], skip_for(settings))
    return DriftReport(
        stage_a=stage_a.name,
        stage_b=stage_b.name,
        differences=compare(a, b, stage_a.name, stage_b.name),
        tables_compared=len((a.groups() | b.groups()) - {DATABASE}),
        queries={stage_a.name: a.queries, stage_b.name: b.queries},
        server_versions={stage_a.name: a.server_version, stage_b.name: b.server_version},
        took_ms=int((time.perf_counter() - started) * 1000),
        ignored=settings.drift_ignore,
        excluded=(f"{settings.migrations_schema}.{settings.migrations_table}",),
        views=frozenset(key[0] for snap in (a, b) for key in snap.objects if key[1] == "view"),
    )
