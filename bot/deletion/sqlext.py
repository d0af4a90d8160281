"""PostgreSQL statements SQLAlchemy Core has no construct for, with identifiers quoted by it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Text, bindparam, cast
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.selectable import Select, TableClause
from sqlalchemy.types import UserDefinedType


class OnlyTable(TableClause):
    """A table read and written with `ONLY`: rows of tables that inherit from it are not its rows.

    (Inheritance children are tables of their own, with their own keys and foreign keys; a plain
    table without children reads the same either way. Partitioned tables are never named with ONLY.)
    """

    inherit_cache = True


@compiles(OnlyTable)
def _only(element: OnlyTable, compiler: Any, **kw: Any) -> str:
    name = compiler.visit_table(element, **kw)
    return f"ONLY {name}" if kw.get("asfrom") else name


class CatalogType(UserDefinedType[Any]):
    """A column type as `format_type()` spells it (already quoted), for casts back from text."""

    cache_ok = True

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def get_col_spec(self, **kw: Any) -> str:
        return self.spec


def as_type(value: str | None, spec: str, name: str | None = None) -> ColumnElement[Any]:
    """A value PostgreSQL printed as text (`CAST(col AS text)`), bound as text and cast back to `spec`
    (a column's type as `format_type()` spells it).

    Key values never make the round trip through Python types: psycopg would bind a list of small ints
    as smallint[] (and `integer[] = smallint[]` does not exist), a composite as a record, a JSON number
    as a float. Cast to the referenced column's own type, a comparison with a referencing column of
    another comparable type (smallint to integer, integer to numeric) resolves as the foreign key's does.
    """
    return cast(bindparam(name, value, type_=Text, unique=name is None), CatalogType(spec))


class CreateTempTableAs(Executable, ClauseElement):
    """`CREATE TEMPORARY TABLE name ON COMMIT DROP AS <select>`: gone with the transaction.

    `preserve=True` keeps it past a commit (`ON COMMIT PRESERVE ROWS`) for a check after the
    commit on the same session; a rollback still removes it, since its creation is undone.
    """

    inherit_cache = False

    def __init__(self, name: str, query: Select[Any], *, preserve: bool = False) -> None:
        self.name = name
        self.query = query
        self.preserve = preserve


@compiles(CreateTempTableAs)
def _create_temp(element: CreateTempTableAs, compiler: Any, **kw: Any) -> str:
    name = compiler.preparer.quote(element.name)
    on_commit = "PRESERVE ROWS" if element.preserve else "DROP"
    return f"CREATE TEMPORARY TABLE {name} ON COMMIT {on_commit} AS {compiler.process(element.query, **kw)}"


class DropTable(Executable, ClauseElement):
    """`DROP TABLE IF EXISTS name`."""

    inherit_cache = False

    def __init__(self, name: str) -> None:
        self.name = name


@compiles(DropTable)
def _drop(element: DropTable, compiler: Any, **kw: Any) -> str:
    return f"DROP TABLE IF EXISTS {compiler.preparer.quote(element.name)}"


class Analyze(Executable, ClauseElement):
    """`ANALYZE name`: the planner then knows how big a freshly filled temp table is."""

    inherit_cache = False

    def __init__(self, name: str) -> None:
        self.name = name


@compiles(Analyze)
def _analyze(element: Analyze, compiler: Any, **kw: Any) -> str:
    return f"ANALYZE {compiler.preparer.quote(element.name)}"


class ExplainAnalyze(Executable, ClauseElement):
    """`EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) <select>`: the server-side execution time of one run."""

    inherit_cache = False

    def __init__(self, query: Select[Any]) -> None:
        self.query = query


@compiles(ExplainAnalyze)
def _explain(element: ExplainAnalyze, compiler: Any, **kw: Any) -> str:
    return f"EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) {compiler.process(element.query, **kw)}"
