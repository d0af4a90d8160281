"""What forgetting a person would touch on one stage: the same catalog-driven scope as a server delete,
rooted at the person's user rows (and at rows of ERASURE_COLUMNS tables in `delete` mode), plus the
rows anonymised in place and the JSON values the email is found in.

The request stores an `ErasureTarget` (digests only) and the counts; the run re-resolves the person
from the digests inside its transaction and goes stale if the user rows or emails changed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Text,
    and_,
    case,
    cast,
    column,
    false,
    func,
    literal,
    null,
    or_,
    select,
    tuple_,
    union,
)
from sqlalchemy.types import NullType

from bot.deletion.catalog import Catalog, TableInfo, TableRef, load_catalog, resolve_table
from bot.deletion.impact import ImpactReport, measure_impact, snapshot_hash
from bot.deletion.plan import DeletePlan, PlanProblem, build_rooted_plan, set_local
from bot.deletion.scope import ROOT_SLUG, ROOT_TABLE
from bot.deletion.scopesql import ScopeSql, equal, sa_table
from bot.deletion.sqlext import ExplainAnalyze, as_type
from bot.erasure.identity import (
    Digests,
    Person,
    digest,
    digest_in,
    email_matches,
    json_mentions,
    key_text,
    person_matches,
    sql_digest,
    sql_fold,
    sql_key_text,
)
from bot.erasure.settings import ErasureSettings
from bot.erasure.targets import IdentityTable, Targets, resolve_targets
from bot.errors import NotFound

LABEL = "forget-user"
SCAN_SAMPLE_PAGES = 1000  # an ERASURE_SCAN_ALL table's scan is timed on its first blocks, then scaled


@dataclass(frozen=True)
class ErasureTarget:
    """What a request keeps to find the person again: digests (with lengths), never the identifier."""

    person: Person
    user_keys: dict[str, int]  # the matched user rows' keys
    emails: dict[str, int]  # the emails the listed columns are matched on

    def to_json(self) -> dict[str, Any]:
        return {"person": self.person.to_json(), "user_keys": dict(self.user_keys), "emails": dict(self.emails)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ErasureTarget:
        return cls(Person.from_json(data["person"]), dict(data["user_keys"]), dict(data["emails"]))


@dataclass
class Found:
    """The person as this transaction sees them; key values stay in memory, never in the bot database."""

    user_keys: list[tuple[Any, ...]]
    emails: dict[str, int]
    root_row: dict[str, Any] | None

    @property
    def user_key_digests(self) -> dict[str, int]:
        return {digest(key_text(k)): len(key_text(k)) for k in self.user_keys}

    def target(self, person: Person) -> ErasureTarget:
        return ErasureTarget(person, self.user_key_digests, dict(self.emails))


def keys_in(alias: Any, info: TableInfo, values: Sequence[tuple[Any, ...]]) -> ColumnElement[bool]:
    """`alias.key IN (values)` for a table's key: values as text (PostgreSQL's own, `key_texts`), each cast
    to its column's type, so an integer[] or composite key compares as itself, never as Python made it."""
    key = info.key
    if not values:
        return false()
    if len(key) == 1:
        return alias.c[key[0]].in_([as_type(v[0], info.type_of(key[0])) for v in values])
    rows = [tuple_(*(as_type(x, info.type_of(k)) for k, x in zip(key, v, strict=True))) for v in values]
    return tuple_(*(alias.c[k] for k in key)).in_(rows)


def key_texts(alias: Any, columns: Sequence[str]) -> list[Any]:
    """Columns as text: key values held in memory (and digested) as PostgreSQL prints them."""
    return [cast(alias.c[c], Text).label(c) for c in columns]


def identity_match(alias: Any, table: IdentityTable, emails: Digests, fold: str | None) -> ColumnElement[bool]:
    return or_(*(email_matches(alias.c[c], emails, fold) for c in table.columns))


def find_person(
    conn: Connection, catalog: Catalog, targets: Targets, person: Person, *, known: Digests | None = None
) -> Found:
    """User rows the identifier names (or whose key digest is `known`), and the emails to match elsewhere."""
    users = sa_table(catalog, targets.users).alias()
    info = catalog.table(targets.users)
    referenced = list(info.key)
    for fk in catalog.referencing(targets.users):
        referenced += [c for c in fk.parent_columns if c not in referenced]
    where = person_matches(users, person, email=targets.user_email, exact=targets.user_exact, fold=targets.fold)
    if known:
        where = or_(where, digest_in(sql_key_text(users, info.key), known))
    email_digest_col: Any = null()
    email_length: Any = null()
    if targets.user_email is not None:
        value = sql_fold(users.c[targets.user_email], targets.fold)
        blank = func.nullif(value, literal("")).is_(None)
        email_digest_col = case((blank, null()), else_=sql_digest(value))
        email_length = func.char_length(value)
    found = select(*key_texts(users, referenced), email_digest_col.label("d"), email_length.label("n"))
    rows = conn.execute(found.where(where)).all()
    emails = {person.normalised: person.length} if person.is_email else {}
    emails |= {str(r.d): int(r.n) for r in rows if r.d}
    keys = [tuple(r[: len(info.key)]) for r in rows]
    root_row = dict(zip(referenced, rows[0][: len(referenced)], strict=True)) if len(rows) == 1 else None
    return Found(user_keys=keys, emails=emails, root_row=root_row)


def delete_plan(conn: Connection, catalog: Catalog, targets: Targets, found: Found) -> DeletePlan:
    """The engine's plan rooted at the person's user rows and the `delete`-mode rows of ERASURE_COLUMNS."""
    info = catalog.table(targets.users)
    user_keys = list(found.user_keys)
    emails = dict(found.emails)
    roots: dict[TableRef, Any] = {targets.users: lambda t: keys_in(t, info, user_keys)}
    for table in targets.delete_roots:
        if table.table == targets.users:
            roots[targets.users] = lambda t, it=table: or_(
                keys_in(t, info, user_keys), identity_match(t, it, emails, targets.fold)
            )
        else:
            roots[table.table] = lambda t, it=table: identity_match(t, it, emails, targets.fold)
    return build_rooted_plan(conn, roots, label=LABEL, catalog=catalog, root_row=found.root_row)


# -- the impact report ----------------------------------------------------------------------------


@dataclass
class Anonymised:
    table: str
    columns: list[str]
    cleared: list[str]
    rows: int


@dataclass
class JsonFound:
    column: str
    in_deleted: int  # rows the erasure deletes anyway that mention the email
    replaced: int | None  # rows kept whose mention is replaced; None: found by the run (ERASURE_SCAN_ALL)
    scan_rows: int = 0  # ERASURE_SCAN_ALL: the whole table is read: its size and the estimated time
    scan_bytes: int = 0
    scan_estimated_s: float = 0.0


@dataclass
class ErasureImpact:
    label: str
    users: int
    emails: int
    delete: ImpactReport
    anonymised: list[Anonymised]
    json: list[JsonFound]
    memberships: list[str]
    servers_untouched: bool
    skipped: list[str]
    snapshot: dict[str, int]
    snapshot_hash: str
    took_ms: int
    scan_all: bool = False
    target: dict[str, Any] = field(default_factory=dict)

    @property
    def deletable(self) -> bool:
        return self.delete.deletable

    @property
    def total_rows(self) -> int:
        return sum(self.snapshot.values())

    @property
    def matched_anything(self) -> bool:
        return self.total_rows > 0 or any(j.in_deleted or j.replaced for j in self.json)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "total_rows": self.total_rows}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ErasureImpact:
        values = dict(data)
        values.pop("total_rows", None)
        values["delete"] = ImpactReport.from_json(data["delete"])
        values["anonymised"] = [Anonymised(**a) for a in data.get("anonymised", [])]
        values["json"] = [JsonFound(**j) for j in data.get("json", [])]
        return cls(**values)


def extras_key(kind: str, table: TableRef, column: str | None = None) -> str:
    """Snapshot keys of what the engine does not count: `anonymise <table>`, `json <table>.<column>`."""
    return f"{kind} {table.qualified}" + (f".{column}" if column else "")


def is_extra(key: str) -> bool:
    return key.startswith(("anonymise ", "json "))


def prepare(conn: Connection, settings: ErasureSettings, person: Person) -> tuple[Targets, Found, DeletePlan]:
    catalog = load_catalog(conn)
    targets = resolve_targets(conn, catalog, settings)
    if targets.problems:
        raise PlanProblem("the erasure can't be planned: " + "; ".join(targets.problems))
    found = find_person(conn, catalog, targets, person)
    return targets, found, delete_plan(conn, catalog, targets, found)


def measure_erasure(conn: Connection, settings: ErasureSettings, person: Person) -> ErasureImpact:
    """Counts, blockers and costs in the caller's (read-only) transaction; NotFound when nothing matches."""
    started = time.perf_counter()
    targets, found, plan = prepare(conn, settings, person)
    report = measure_impact(conn, plan, probe=True)
    # The report is kept with the request: no value of the person's rows goes in it (the engine would
    # keep the root row's key, the user id, and sample rows holding it), only counts and names, and the
    # keys of rows that block the erasure when those keys do not hold the person.
    report.server_key = {}
    for blocker in report.blockers:
        blocker.sample = _blocking_keys(plan, blocker.table, blocker.sample)
    sql = plan.scope_sql(prefix="erase")
    catalog = plan.catalog
    snapshot = dict(report.snapshot)
    anonymised: list[Anonymised] = []
    for table in targets.anonymised:
        t = sa_table(catalog, table.table).alias()
        rows = conn.execute(
            select(func.count()).where(
                identity_match(t, table, found.emails, targets.fold), sql.outside_predicate(table.table, t)
            )
        ).scalar_one()
        snapshot[extras_key("anonymise", table.table)] = int(rows)
        cleared = [c.column for c in table.clear]
        anonymised.append(Anonymised(str(table.table), list(table.columns), cleared, int(rows)))
    json_found = [_json_counts(conn, plan, sql, targets, found, jc, snapshot) for jc in targets.json]
    impact = ErasureImpact(
        label=person.label,
        users=len(found.user_keys),
        emails=len(found.emails),
        delete=report,
        anonymised=anonymised,
        json=json_found,
        memberships=_memberships(conn, plan, sql),
        servers_untouched=not any(t.name == ROOT_TABLE for t in plan.graph.tables),
        skipped=targets.skipped,
        snapshot=snapshot,
        snapshot_hash=snapshot_hash(snapshot),
        took_ms=0,
        scan_all=targets.scan_all,
        target=found.target(person).to_json(),
    )
    if not impact.matched_anything and targets.scan_all:
        # Nothing else matched: whether the whole-table scan would find the person is the only question left.
        for jc, entry in zip(targets.json, impact.json, strict=True):
            t = sa_table(catalog, jc.table).alias()
            entry.replaced = int(
                conn.execute(
                    select(func.count()).where(json_mentions(t.c[jc.column], found.emails, targets.fold))
                ).scalar_one()
            )
    if not impact.matched_anything:
        raise NotFound(f"nothing on this stage matches {person.label}: no user row, no listed column, no JSON value")
    impact.took_ms = int((time.perf_counter() - started) * 1000)
    return impact


def _blocking_keys(plan: DeletePlan, table: str, sample: list[dict[str, str]]) -> list[dict[str, str]]:
    """A blocker's sample rows by their key only; none when the key is (part of) the reference to the person
    or any value looks like an email."""
    fks = [fk for fk in plan.blocking if str(fk.child) == table]
    if not fks or not sample:
        return []
    key = plan.catalog.table(fks[0].child).key
    if not key or any(c in fk.child_columns for fk in fks for c in key):
        return []
    rows = [{k: row[k] for k in key if k in row} for row in sample]
    return [] if any("@" in v for row in rows for v in row.values()) else rows


def _json_counts(
    conn: Connection, plan: DeletePlan, sql: ScopeSql, targets: Targets, found: Found, jc: Any, snapshot: dict[str, int]
) -> JsonFound:
    catalog = plan.catalog
    t = sa_table(catalog, jc.table).alias()
    mentions = json_mentions(t.c[jc.column], found.emails, targets.fold)
    in_deleted = 0
    if jc.table in plan.graph.tables:
        in_deleted = int(conn.execute(select(func.count()).where(sql.predicate(jc.table, t), mentions)).scalar_one())
    entry = JsonFound(column=f"{jc.table}.{jc.column}", in_deleted=in_deleted, replaced=None)
    if targets.scan_all:
        info = catalog.table(jc.table)
        entry.scan_rows = int(info.estimated_rows)
        entry.scan_bytes = info.pages * 8192
        entry.scan_estimated_s = round(_scan_estimate(conn, catalog, jc, found.emails, targets.fold), 3)
        return entry
    anonymised = targets.identity_table(jc.table)
    replaced = 0
    if anonymised is not None and anonymised.mode == "anonymise":
        outside = sql.outside_predicate(jc.table, t)
        kept = and_(identity_match(t, anonymised, found.emails, targets.fold), outside, mentions)
        replaced = int(conn.execute(select(func.count()).where(kept)).scalar_one())
    entry.replaced = replaced
    snapshot[extras_key("json", jc.table, jc.column)] = replaced
    return entry


def _scan_estimate(conn: Connection, catalog: Catalog, jc: Any, emails: Digests, fold: str | None) -> float:
    """Seconds to read the whole table looking for the emails: its first blocks timed, scaled by its size."""
    pages = max(catalog.table(jc.table).pages, 1)
    sample = min(pages, SCAN_SAMPLE_PAGES)
    t = sa_table(catalog, jc.table)
    first = literal(f"({sample},0)", type_=NullType())
    mentions = json_mentions(t.c[jc.column], emails, fold)
    query = select(func.count()).where(column("ctid", _selectable=t) < first, mentions)
    set_local(conn, "max_parallel_workers_per_gather", "0")
    plan = conn.execute(ExplainAnalyze(query)).scalar_one()
    if isinstance(plan, str):
        plan = json.loads(plan)
    return float(plan[0]["Execution Time"]) / 1000 * pages / sample


def _memberships(conn: Connection, plan: DeletePlan, sql: ScopeSql) -> list[str]:
    """Slugs of the servers the rows in scope belong to (the user's sessions, tool calls, ...)."""
    catalog = plan.catalog
    servers = resolve_table(conn, ROOT_TABLE)
    if servers is None or servers not in catalog.tables or ROOT_SLUG not in catalog.table(servers).columns:
        return []
    parts = []
    for fk in catalog.referencing(servers):
        if fk.child not in plan.graph.tables:
            continue
        s = sa_table(catalog, servers).alias()
        c = sa_table(catalog, fk.child).alias()
        parts.append(
            select(s.c[ROOT_SLUG].label("slug"))
            .select_from(s.join(c, equal(c, s, fk.child_columns, fk.parent_columns)))
            .where(sql.predicate(fk.child, c))
        )
    if not parts:
        return []
    query = parts[0] if len(parts) == 1 else union(*parts)
    return sorted({str(r[0]) for r in conn.execute(query)})
