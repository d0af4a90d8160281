"""Read-only questions about servers: find, list, stats, users.

Everything is counted, ranked and paged by PostgreSQL; nothing here fetches a table.
"""

from __future__ import annotations

import base64
import difflib
import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Generic, TypeVar

from sqlalchemy import ColumnElement, Connection, Date, and_, cast, func, literal, or_, select, tuple_

from bot.errors import CommandError, NotFound
from bot.pii import mask_email
from bot.platform.schema import (
    mcp_server_session,
    mcp_server_user,
    mcp_servers,
    mcp_tool_calls,
    organization,
)

DAY_MS = 86_400_000
T = TypeVar("T")
SUGGESTIONS = 5
TOP_TOOLS = 5


@dataclass(frozen=True)
class ServerSummary:
    id: str
    name: str
    slug: str
    organization_id: str
    organization_name: str | None
    product: str
    created_at: datetime | None


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    total: int
    next_cursor: str | None


@dataclass(frozen=True)
class ToolCount:
    tool_name: str
    calls: int


@dataclass(frozen=True)
class ServerStats:
    server: ServerSummary
    days: int
    since: datetime
    tool_calls: int
    sessions: int
    users: int
    last_activity: datetime | None
    top_tools: list[ToolCount]


@dataclass(frozen=True)
class ServerUser:
    id: str
    masked_email: str
    distinct_id: str | None
    first_seen_at: datetime | None


def ms_to_datetime(value: int | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value / 1000, tz=UTC)


def _encode_cursor(*values: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, str]:
    """A (number, id) keyset position; anything else is refused before it reaches SQL."""
    stale = CommandError("that page link is no longer valid; run the command again")
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, UnicodeDecodeError):
        raise stale from None
    if (
        not isinstance(values, list)
        or len(values) != 2
        or not isinstance(values[0], int)
        or isinstance(values[0], bool)
        or not isinstance(values[1], str)
        or abs(values[0]) > 2**62
    ):
        raise stale
    return values[0], values[1]


_SUMMARY_COLUMNS = (
    mcp_servers.c.id,
    mcp_servers.c.name,
    mcp_servers.c.slug,
    mcp_servers.c.organization_id,
    organization.c.name.label("organization_name"),
    mcp_servers.c.product_platform_or_tool,
    mcp_servers.c.created_at,
)


def _summary(row: object) -> ServerSummary:
    return ServerSummary(
        id=row.id,
        name=row.name,
        slug=row.slug,
        organization_id=row.organization_id,
        organization_name=row.organization_name,
        product=row.product_platform_or_tool,
        created_at=ms_to_datetime(row.created_at),
    )


def _server_query():  # noqa: ANN202 - a Select of the summary columns
    return select(*_SUMMARY_COLUMNS).select_from(
        mcp_servers.outerjoin(organization, organization.c.id == mcp_servers.c.organization_id)
    )


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def close_slugs(conn: Connection, slug: str, limit: int = SUGGESTIONS) -> list[str]:
    """Slugs that look like `slug`: candidates by shared fragments in SQL, ranked here."""
    fragments = {part for part in re.split(r"[-_.]+", slug.lower()) if len(part) >= 3}
    if len(slug) >= 3:
        fragments.add(slug.lower()[:3])
    if not fragments:
        return []
    patterns = [f"%{_like_escape(fragment)}%" for fragment in sorted(fragments)]
    candidates = (
        conn.execute(
            select(mcp_servers.c.slug)
            .where(or_(*(mcp_servers.c.slug.ilike(pattern, escape="\\") for pattern in patterns)))
            .limit(200)
        )
        .scalars()
        .all()
    )
    ranked = sorted(
        candidates, key=lambda c: difflib.SequenceMatcher(None, slug.lower(), c.lower()).ratio(), reverse=True
    )
    return ranked[:limit]


def find_server(conn: Connection, slug: str) -> ServerSummary:
    row = conn.execute(_server_query().where(mcp_servers.c.slug == slug)).first()
    if row is None:
        suggestions = close_slugs(conn, slug)
        hint = f" Close matches: {', '.join(f'`{s}`' for s in suggestions)}" if suggestions else ""
        raise NotFound(f"no server with slug `{slug}`.{hint}")
    return _summary(row)


def list_servers(conn: Connection, *, org: str | None, limit: int, cursor: str | None = None) -> Page[ServerSummary]:
    """Newest first; servers without created_at come last; keyset-paged on (created_at, id)."""
    created = func.coalesce(mcp_servers.c.created_at, literal(-1))
    where = [mcp_servers.c.organization_id == org] if org else []
    total = conn.execute(select(func.count()).select_from(mcp_servers).where(*where)).scalar_one()
    query = _server_query().where(*where).order_by(created.desc(), mcp_servers.c.id.desc()).limit(limit + 1)
    if cursor:
        after_created, after_id = _decode_cursor(cursor)
        query = query.where(tuple_(created, mcp_servers.c.id) < tuple_(literal(after_created), literal(after_id)))
    rows = conn.execute(query).all()
    items = [_summary(row) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = _encode_cursor(last.created_at if last.created_at is not None else -1, last.id)
    return Page(items=items, total=int(total), next_cursor=next_cursor)


def _calls_in_window(server: ServerSummary, since_ms: int) -> ColumnElement[bool]:
    return and_(mcp_tool_calls.c.mcp_server_id == server.id, mcp_tool_calls.c.created_at >= since_ms)


def _sessions_in_window(slug: str, since_ms: int, since_date: date) -> ColumnElement[bool]:
    """Sessions by their connection time, or by their date when an old row has no time."""
    return and_(
        mcp_server_session.c.mcp_server_slug == slug,
        or_(
            mcp_server_session.c.connection_timestamp >= since_ms,
            and_(
                mcp_server_session.c.connection_timestamp.is_(None), mcp_server_session.c.connection_date >= since_date
            ),
        ),
    )


def _utc_day(epoch_ms: ColumnElement[int]) -> ColumnElement[date]:
    return cast(func.timezone("UTC", func.to_timestamp(epoch_ms / 1000.0)), Date)


@dataclass(frozen=True)
class DailyUsage:
    """Tool calls and sessions of one server per UTC day of a window, days without any included."""

    slug: str
    days: list[date]
    tool_calls: list[int]
    sessions: list[int]


def daily_usage(conn: Connection, slug: str, *, days: int, now_ms: int | None = None) -> DailyUsage:
    """The same window and counting rules as `server_stats`, per day: two grouped queries."""
    server = find_server(conn, slug)
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    since_ms = now_ms - days * DAY_MS
    since_date = datetime.fromtimestamp(since_ms / 1000, tz=UTC).date()
    call_day = _utc_day(mcp_tool_calls.c.created_at).label("day")
    calls = {
        day: count
        for day, count in conn.execute(
            select(call_day, func.count()).where(_calls_in_window(server, since_ms)).group_by(call_day)
        )
    }
    session_day = func.coalesce(
        _utc_day(mcp_server_session.c.connection_timestamp), mcp_server_session.c.connection_date
    ).label("day")
    sessions = {
        day: count
        for day, count in conn.execute(
            select(session_day, func.count())
            .where(_sessions_in_window(slug, since_ms, since_date))
            .group_by(session_day)
        )
    }
    today = datetime.fromtimestamp(now_ms / 1000, tz=UTC).date()
    span = [since_date + timedelta(days=i) for i in range((today - since_date).days + 1)]
    return DailyUsage(slug, span, [int(calls.get(d, 0)) for d in span], [int(sessions.get(d, 0)) for d in span])


def server_stats(conn: Connection, slug: str, *, days: int, now_ms: int | None = None) -> ServerStats:
    """Counts in the window, each from its own table so no join multiplies them.

    The runbook counts sessions over a tool-call join and reports one per tool call.
    """
    server = find_server(conn, slug)
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    since_ms = now_ms - days * DAY_MS
    since_date = datetime.fromtimestamp(since_ms / 1000, tz=UTC).date()

    calls_in_window = _calls_in_window(server, since_ms)
    per_tool = (
        select(
            mcp_tool_calls.c.tool_name,
            func.count().label("calls"),
            func.max(mcp_tool_calls.c.created_at).label("last_at"),
        )
        .where(calls_in_window)
        .group_by(mcp_tool_calls.c.tool_name)
        .cte("per_tool")
    )
    tool_rows = conn.execute(select(per_tool).order_by(per_tool.c.calls.desc(), per_tool.c.tool_name)).all()

    session_in_window = _sessions_in_window(slug, since_ms, since_date)
    session_row = conn.execute(
        select(
            func.count().label("sessions"),
            func.count(func.distinct(mcp_server_session.c.mcp_server_user_id)).label("users"),
            func.max(mcp_server_session.c.connection_timestamp).label("last_at"),
        ).where(session_in_window)
    ).one()

    last_values = [row.last_at for row in tool_rows if row.last_at is not None]
    if session_row.last_at is not None:
        last_values.append(session_row.last_at)
    last_ms = max(last_values) if last_values else None
    if last_ms is None:
        # Nothing in the window: say when the server was last used at all.
        last_ms = conn.execute(
            select(func.max(mcp_server_session.c.connection_timestamp)).where(
                mcp_server_session.c.mcp_server_slug == slug
            )
        ).scalar_one()

    return ServerStats(
        server=server,
        days=days,
        since=datetime.fromtimestamp(since_ms / 1000, tz=UTC),
        tool_calls=sum(row.calls for row in tool_rows),
        sessions=int(session_row.sessions),
        users=int(session_row.users),
        last_activity=ms_to_datetime(last_ms),
        top_tools=[ToolCount(row.tool_name, int(row.calls)) for row in tool_rows[:TOP_TOOLS]],
    )


def server_users(conn: Connection, slug: str, *, limit: int, cursor: str | None = None) -> Page[ServerUser]:
    """Users with at least one session on the server, most recently first seen first."""
    find_server(conn, slug)
    server_user_ids = select(mcp_server_session.c.mcp_server_user_id).where(
        mcp_server_session.c.mcp_server_slug == slug, mcp_server_session.c.mcp_server_user_id.is_not(None)
    )
    total = conn.execute(
        select(func.count(func.distinct(mcp_server_session.c.mcp_server_user_id))).where(
            mcp_server_session.c.mcp_server_slug == slug
        )
    ).scalar_one()
    first_seen = func.coalesce(mcp_server_user.c.first_seen_at, literal(-1))
    query = (
        select(
            mcp_server_user.c.id,
            mcp_server_user.c.email,
            mcp_server_user.c.distinct_id,
            mcp_server_user.c.first_seen_at,
        )
        .where(mcp_server_user.c.id.in_(server_user_ids))
        .order_by(first_seen.desc(), mcp_server_user.c.id.desc())
        .limit(limit + 1)
    )
    if cursor:
        after_seen, after_id = _decode_cursor(cursor)
        query = query.where(tuple_(first_seen, mcp_server_user.c.id) < tuple_(literal(after_seen), literal(after_id)))
    rows = conn.execute(query).all()
    items = [
        ServerUser(
            id=row.id,
            masked_email=mask_email(row.email),
            distinct_id=row.distinct_id,
            first_seen_at=ms_to_datetime(row.first_seen_at),
        )
        for row in rows[:limit]
    ]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = _encode_cursor(last.first_seen_at if last.first_seen_at is not None else -1, last.id)
    return Page(items=items, total=int(total), next_cursor=next_cursor)
