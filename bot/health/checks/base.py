"""What every health check shares: findings, reports, the context a check runs in, and the registry.

A check is a function `(conn, ctx) -> CheckReport` on one read-only stage connection. It is
registered with `@check(name, label, group=...)` in a module of this package; the group says how
often it runs (bot/health/monitor.py has one scheduled job per group and stage), so a new check
is one small module and one line in `bot/health/checks/__init__.py`.

Checks never write and never look at the bot's own sessions (application_name `mcp-ops...`),
so the monitor cannot alert on itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, text

from bot.config import HealthSettings
from bot.health.history import History, Sample
from bot.health.thresholds import glob_regex
from bot.pii import scrub
from bot.sqltext import HIDDEN, blank_literals
from bot.stages import APPLICATION_NAME

Severity = Literal["info", "warning", "critical"]
Status = Literal["ok", "findings", "unavailable", "error"]

OUR_SESSIONS = f"{APPLICATION_NAME}%"
# The bot's own sessions: its application_name *and* the stage's role. Any client may call itself
# `mcp-ops...`; one of another role that does is still checked (it cannot hide from the alerts that way).
NOT_OURS = "NOT (coalesce(application_name, '') LIKE :ours AND usename IS NOT DISTINCT FROM current_user)"
UNAVAILABLE_PREFIX = "unavailable:"  # the alert check under which a check that cannot see enough says so
MAX_FINDINGS = 10  # per check and run: the oldest first, the summary counts the rest
QUERY_CHARS = 300
MB = 1024 * 1024


@dataclass(frozen=True)
class Finding:
    """Something worth an alert; (stage, check, object) is its fingerprint."""

    check: str
    object: str
    severity: Severity
    title: str
    detail: str
    advice: str
    remind: bool = True  # info-like findings (missing indexes, a missing extension) are said once
    # Seen continuously this long before it fires (a slot inactive for an hour, where PostgreSQL does not
    # say since when): the alert stays pending meanwhile, and a run without it starts the wait again.
    pending_s: int = 0
    # Operations its alert offers as buttons: {"kind", "label", "target", "confirm"} (handlers/render_operations.py).
    actions: tuple[dict[str, Any], ...] = ()


@dataclass
class CheckReport:
    check: str
    label: str
    status: Status
    summary: str
    findings: list[Finding] = field(default_factory=list)
    # The alert checks this report speaks for: their open alerts absent from `findings` resolve.
    # Empty when the check could not run, so its alerts are left as they are.
    covers: tuple[str, ...] | None = None
    # (check, object) of open alerts this run has no verdict on (a slow query that ran too few times
    # to be measured): they neither count as seen nor as absent.
    holds: tuple[tuple[str, str], ...] = ()
    # Numbers to keep in the bot database for later runs (bot/health/history.py).
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.covers is None:
            self.covers = () if self.status == "error" else (self.check, unavailable_check(self.check))


@dataclass
class CheckContext:
    stage: str
    settings: HealthSettings
    history: History | None = None
    _server_version: int | None = field(default=None, repr=False)
    _roles: dict[str, bool] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.history is None:
            self.history = History(None, self.stage)  # no bot database: no past to compare with

    @property
    def past(self) -> History:
        assert self.history is not None
        return self.history

    def server_version(self, conn: Connection) -> int:
        """`server_version_num` of the stage (150004 for 15.4), read once per round."""
        if self._server_version is None:
            self._server_version = int(conn.execute(text("SHOW server_version_num")).scalar_one())
        return self._server_version

    def has_role(self, conn: Connection, role: str) -> bool:
        """Whether the stage's role has the privileges of `role` (pg_read_all_stats, ...), read once per round."""
        if role not in self._roles:
            self._roles[role] = bool(
                conn.execute(text("SELECT pg_has_role(current_user, :role, 'USAGE')"), {"role": role}).scalar_one()
            )
        return self._roles[role]

    @property
    def ignore(self) -> dict[str, list[str]]:
        """The bound parameter of `ignored(...)`: HEALTH_IGNORE as regular expressions."""
        return {"ignore": [glob_regex(p) for p in self.settings.checks.ignore]}


def ignored(schema: str, name: str) -> str:
    """SQL condition true for objects HEALTH_IGNORE does not cover; bind `ctx.ignore` with it."""
    return f"NOT ({schema} || '.' || {name} ~ ANY (CAST(:ignore AS text[])))"


def unavailable_check(check: str) -> str:
    return f"{UNAVAILABLE_PREFIX}{check}"


def unavailable_finding(check: str, label: str, needs: str, detail: str, advice: str) -> Finding:
    """Said once: the stage's role cannot see what `check` reads; resolves when it can."""
    return Finding(
        check=unavailable_check(check),
        object="access",
        severity="info",
        title=f"{label}: unavailable, needs {needs}",
        detail=detail,
        advice=advice,
        remind=False,
    )


# A predefined role some checks need to see everything, and what each of them misses without it:
# {role: {label: what it cannot see}}, filled by `@check(..., needs=...)`. One cause, one alert: a
# missing role is said once under `unavailable:<role>`, naming every check it limits, with the one GRANT.
ROLE_NEEDS: dict[str, dict[str, str]] = {}


@dataclass(frozen=True)
class Needs:
    """`@check(..., needs=Needs(role, label, misses))`: without `role` the check sees only part (`misses`)."""

    role: str
    label: str  # how the alert names what is limited ("Vacuum horizon")
    misses: str  # one sentence: what it cannot see without the role


def missing_role_finding(role: str) -> Finding:
    """The one alert for a missing role: every check that needs it, what each misses, the GRANT to run once."""
    limited = ROLE_NEEDS[role]
    labels = list(limited)
    named = labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]
    return Finding(
        check=unavailable_check(role),
        object="access",
        severity="info",
        title=f"{named}: unavailable, needs {role}",
        detail=" ".join(f"{label}: {misses}" for label, misses in limited.items()),
        advice=f"`GRANT {role} TO <the role of this stage's DATABASE_URL>;` (or `pg_monitor`); one grant for "
        f"{'both checks' if len(labels) == 2 else 'every check named'}. This alert resolves at the next run after it.",
        remind=False,
    )


def distinct(findings: Iterable[Finding]) -> list[Finding]:
    """A round's findings, each fingerprint once (a missing role is said by every check that needs it)."""
    first: dict[tuple[str, str], Finding] = {}
    for finding in findings:
        first.setdefault((finding.check, finding.object), finding)
    return list(first.values())


def _with_needs(run: Check, needs: Needs) -> Check:
    """Run the check, then speak for its role: said (in the same words by every check needing it, so one alert)
    while the stage's role lacks it, resolved once it has it. A check that could not run speaks for nothing."""

    def checked(conn: Connection, ctx: CheckContext) -> CheckReport:
        report = run(conn, ctx)
        if report.status in ("ok", "findings"):
            report.covers = (*(report.covers or ()), unavailable_check(needs.role))
            if not ctx.has_role(conn, needs.role):
                report.findings = [missing_role_finding(needs.role), *report.findings]
                report.status = "findings"
        return report

    return checked


_DENIED_FOR = re.compile(
    r"permission denied for (function|table|view|relation|sequence|schema|materialized view) (\S+)"
)
_ROLE_NEEDED = re.compile(r"privileges of (?:the )?\"?(\w+)\"? role|have privileges of (\w+)")


def denied_report(check: str, label: str, message: str, *, sqlstate: str = "42501") -> CheckReport:
    """A check PostgreSQL refused to this role (42501), or that this server does not support (0A000, as some
    managed services answer for functions they withhold): said once, with what it needs."""
    if sqlstate == "0A000":
        first = message.strip().splitlines()[0][:300]
        return unavailable_report(
            check,
            label,
            "a feature this server does not offer",
            f"The server does not support what this check reads: {first}.",
            "Nothing to grant: this check cannot run on this server (managed services withhold some functions).",
        )
    denied = _DENIED_FOR.search(message)
    role = _ROLE_NEEDED.search(message)
    if denied:
        kind, name = denied.groups()
        needs = f"{'EXECUTE' if kind == 'function' else 'USAGE' if kind == 'schema' else 'SELECT'} on {kind} {name}"
        grant = f"`GRANT {needs.replace(' on ', ' ON ', 1).replace(kind, kind.upper(), 1)} TO <role>;`"
    elif role:
        needs = role.group(1) or role.group(2)
        grant = f"`GRANT {needs} TO <role>;`"
    else:
        needs, grant = "pg_monitor", "`GRANT pg_monitor TO <role>;`"
    return unavailable_report(
        check,
        label,
        needs,
        f"PostgreSQL refused this check to the stage's role: {message.strip().splitlines()[0][:300]}.",
        f"{grant} (`<role>` is the role of this stage's DATABASE_URL; on RDS, grant as the master user).",
    )


def unavailable_report(check: str, label: str, needs: str, detail: str, advice: str) -> CheckReport:
    """The whole check cannot run with this role: its own alerts are left as they are."""
    finding = unavailable_finding(check, label, needs, detail, advice)
    return CheckReport(
        check, label, "unavailable", f"unavailable: needs {needs}", [finding], covers=(unavailable_check(check),)
    )


Check = Callable[[Connection, CheckContext], CheckReport]


@dataclass(frozen=True)
class CheckSpec:
    """A check and the names it reports under, so a failed run can still be reported."""

    name: str
    label: str
    run: Check
    group: str = "maintenance"
    # Its findings' absence is proof (an index dropped, a constraint validated): their alerts resolve at
    # the first run without them, not after ALERT_CLEAR_AFTER_RUNS.
    clear_at_once: bool = False


REGISTRY: list[CheckSpec] = []


def check(
    name: str, label: str, *, group: str, clear_at_once: bool = False, needs: Needs | None = None
) -> Callable[[Check], Check]:
    """Register the decorated function as the health check `name`, run with its `group`; `needs`: a role
    without which it sees only part (said once per role, for all the checks needing it: `missing_role_finding`)."""

    def register(run: Check) -> Check:
        if any(spec.name == name for spec in REGISTRY):
            raise ValueError(f"health check {name!r} is registered twice")
        if needs is not None:
            ROLE_NEEDS.setdefault(needs.role, {})[needs.label] = needs.misses
            run = _with_needs(run, needs)
        REGISTRY.append(CheckSpec(name, label, run, group, clear_at_once))
        return run

    return register


def checks_in(group: str) -> tuple[CheckSpec, ...]:
    return tuple(spec for spec in REGISTRY if spec.group == group)


# -- text helpers --------------------------------------------------------------------------------


def safe_query_text(raw: str | None, limit: int = QUERY_CHARS) -> str:
    """Query text fit for Slack: literals blanked by PostgreSQL's lexer (bot/sqltext.py; text it cannot
    lex is not shown), secrets and emails scrubbed, one line, truncated."""
    if not raw:
        return "(no query text)"
    blanked = blank_literals(raw)
    if blanked is None:
        return HIDDEN
    flat = scrub(blanked).replace("`", "'")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172_800:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86_400} days"


def size(n: float) -> str:
    """Bytes for people: 1.2 GB, 340.0 MB, 12.0 kB."""
    for unit, factor in (("TB", 1024**4), ("GB", 1024**3), ("MB", MB), ("kB", 1024)):
        if abs(n) >= factor:
            return f"{n / factor:,.1f} {unit}"
    return f"{int(n)} bytes"


def session_label(row: Any) -> str:
    app = scrub(row.application_name or "no application_name")[:60].replace("`", "'")  # shown in prose
    return f"pid {row.pid} ({app}, user {scrub(row.usename or '?')[:40]})"


def stamp(value: datetime) -> int:
    return int(value.timestamp())
