"""The platform database as platform-schema.md describes it (Drizzle-managed in production).

The bot's read commands query these tables. The deletion engine does not use this module:
it discovers every dependent table from the live catalog, including tables not listed here.
`create_platform_schema` builds the schema for the tests and the benchmarks, with the real foreign
keys, ON DELETE rules and (missing) indexes; the demo's first Drizzle migration (bot/platform/drizzle,
bot/platform/migrate.py) was generated from this metadata and is checked to build the same schema.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Date,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

organization = Table(
    "organization",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("slug", Text, nullable=False, unique=True),
    Column("created_at", DateTime, server_default=func.now()),
)

dashboard_user = Table(
    "user",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text),
    Column("email", Text, nullable=False, unique=True),
    Column("created_at", DateTime, server_default=func.now()),
)

mcp_servers = Table(
    "mcp_servers",
    metadata,
    Column("id", Text, primary_key=True),
    Column("organization_id", Text, ForeignKey("organization.id", ondelete="CASCADE"), nullable=False),
    Column("name", Text, nullable=False),
    Column("product_platform_or_tool", Text, nullable=False),
    Column("slug", Text, nullable=False),
    Column("created_at", BigInteger),
    Index("mcp_server_slug_idx", "slug", unique=True),
)

mcp_server_user = Table(
    "mcp_server_user",
    metadata,
    Column("id", Text, primary_key=True),
    Column("distinct_id", Text, unique=True),
    Column("email", Text),
    Column("upstream_sub", Text),
    Column("profile_data", JSONB),
    Column("first_seen_at", BigInteger),
)

mcp_server_session = Table(
    "mcp_server_session",
    metadata,
    Column("mcp_server_session_id", Text, primary_key=True),
    Column("mcp_server_slug", Text, ForeignKey("mcp_servers.slug", ondelete="CASCADE"), nullable=False),
    Column("connection_date", Date, nullable=False),
    Column("connection_timestamp", BigInteger),
    Column("mcp_server_user_id", Text, ForeignKey("mcp_server_user.id", ondelete="CASCADE")),
    Column("title", Text),
    Index("mcp_server_session_slug_idx", "mcp_server_slug"),
    Index("mcp_server_session_user_idx", "mcp_server_user_id"),
)

mcp_tool_calls = Table(
    "mcp_tool_calls",
    metadata,
    Column("id", Text, primary_key=True),
    Column("created_at", BigInteger),
    # NO ACTION: the database refuses to delete a server that still has tool calls.
    Column("mcp_server_id", Text, ForeignKey("mcp_servers.id", ondelete="NO ACTION"), nullable=False),
    Column("tool_name", Text, nullable=False),
    # CASCADE on a column with no index: every deleted user scans this table.
    Column("mcp_server_user_id", Text, ForeignKey("mcp_server_user.id", ondelete="CASCADE")),
    Column(
        "mcp_server_session_id",
        Text,
        ForeignKey("mcp_server_session.mcp_server_session_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("input", JSONB),
    Column("output", JSONB),
    Index("mcp_tool_calls_session_idx", "mcp_server_session_id"),
)

walkthroughs = Table(
    "walkthroughs",
    metadata,
    Column("id", Text, primary_key=True),
    Column("organization_id", Text, ForeignKey("organization.id", ondelete="CASCADE"), nullable=False),
    Column("title", Text, nullable=False),
    Column("created_at", BigInteger),
)

walkthrough_steps = Table(
    "walkthrough_steps",
    metadata,
    Column("id", Text, primary_key=True),
    Column("walkthrough_id", Text, ForeignKey("walkthroughs.id", ondelete="CASCADE"), nullable=False),
    Column("title", Text, nullable=False),
    Column("display_order", Integer, nullable=False, server_default="0"),
    Column("next_step_id", Text, ForeignKey("walkthrough_steps.id", ondelete="SET NULL")),
)

mcp_server_walkthroughs = Table(
    "mcp_server_walkthroughs",
    metadata,
    Column("id", Text, primary_key=True),
    Column("mcp_server_id", Text, ForeignKey("mcp_servers.id", ondelete="CASCADE"), nullable=False),
    Column("walkthrough_id", Text, ForeignKey("walkthroughs.id", ondelete="CASCADE"), nullable=False),
    Column("display_order", Integer, nullable=False, server_default="0"),
    Column("is_enabled", Text, nullable=False, server_default="true"),
    UniqueConstraint("mcp_server_id", "walkthrough_id", name="mcp_server_walkthroughs_server_walkthrough_uq"),
)

support_status = Enum("open", "in_progress", "resolved", "closed", name="support_request_status")
support_priority = Enum("low", "medium", "high", "urgent", name="support_request_priority")

support_requests = Table(
    "support_requests",
    metadata,
    Column("id", Text, primary_key=True),
    Column("email", Text, nullable=False),
    Column("organization_id", Text, ForeignKey("organization.id", ondelete="CASCADE"), nullable=False),
    Column("mcp_server_id", Text, ForeignKey("mcp_servers.id", ondelete="CASCADE")),
    # CASCADE on a column with no index: every deleted session scans this table.
    Column(
        "mcp_server_session_id",
        Text,
        ForeignKey("mcp_server_session.mcp_server_session_id", ondelete="CASCADE"),
    ),
    Column("assignee_id", Text, ForeignKey("user.id", ondelete="SET NULL")),
    Column("status", support_status, nullable=False, server_default="open"),
    Column("priority", support_priority, nullable=False, server_default="medium"),
    Column("title", Text),
    Column("description", Text),
    Column("created_at", BigInteger),
)

walkthrough_step_completions = Table(
    "walkthrough_step_completions",
    metadata,
    Column("id", Text, primary_key=True),
    Column("mcp_server_user_id", Text, ForeignKey("mcp_server_user.id", ondelete="CASCADE"), nullable=False),
    Column("walkthrough_id", Text, ForeignKey("walkthroughs.id", ondelete="CASCADE"), nullable=False),
    Column("step_id", Text, ForeignKey("walkthrough_steps.id", ondelete="CASCADE"), nullable=False),
    Column("mcp_server_id", Text, ForeignKey("mcp_servers.id", ondelete="CASCADE"), nullable=False),
    Column(
        "mcp_server_session_id",
        Text,
        ForeignKey("mcp_server_session.mcp_server_session_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("completed_at", BigInteger),
    Column("metadata", JSONB),
    UniqueConstraint("mcp_server_user_id", "walkthrough_id", "step_id", name="walkthrough_step_completions_uq"),
    Index("wsc_server_completed_idx", "mcp_server_id", "completed_at"),
    Index("wsc_session_idx", "mcp_server_session_id"),
    Index("wsc_user_walkthrough_idx", "mcp_server_user_id", "walkthrough_id"),
    Index("wsc_step_idx", "step_id"),
)

# Tables the runbook never mentions; the real database has such tables (OAuth, tokens).
mcp_oauth_clients = Table(
    "mcp_oauth_clients",
    metadata,
    Column("id", Text, primary_key=True),
    Column("mcp_server_id", Text, ForeignKey("mcp_servers.id", ondelete="CASCADE"), nullable=False),
    Column("client_name", Text),
    Column("created_at", BigInteger),
    Index("mcp_oauth_clients_server_idx", "mcp_server_id"),
)

mcp_oauth_tokens = Table(
    "mcp_oauth_tokens",
    metadata,
    Column("id", Text, primary_key=True),
    Column("client_id", Text, ForeignKey("mcp_oauth_clients.id", ondelete="CASCADE"), nullable=False),
    Column("mcp_server_user_id", Text, ForeignKey("mcp_server_user.id", ondelete="CASCADE")),
    Column("expires_at", BigInteger),
    Index("mcp_oauth_tokens_client_idx", "client_id"),
    Index("mcp_oauth_tokens_user_idx", "mcp_server_user_id"),
)

# The two indexes platform-schema.md says are missing; benchmarks add them for the fast variant.
MISSING_FK_INDEXES = (
    ("mcp_tool_calls_user_idx", "mcp_tool_calls", "mcp_server_user_id"),
    ("support_requests_session_idx", "support_requests", "mcp_server_session_id"),
)


def create_platform_schema(conn: Connection) -> None:
    metadata.create_all(conn)
