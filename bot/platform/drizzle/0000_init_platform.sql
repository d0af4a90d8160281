CREATE TYPE support_request_status AS ENUM ('open', 'in_progress', 'resolved', 'closed');
--> statement-breakpoint
CREATE TYPE support_request_priority AS ENUM ('low', 'medium', 'high', 'urgent');
--> statement-breakpoint
CREATE TABLE organization (
	id TEXT NOT NULL,
	name TEXT NOT NULL,
	slug TEXT NOT NULL,
	created_at TIMESTAMP WITHOUT TIME ZONE DEFAULT now(),
	PRIMARY KEY (id),
	UNIQUE (slug)
);
--> statement-breakpoint
CREATE TABLE "user" (
	id TEXT NOT NULL,
	name TEXT,
	email TEXT NOT NULL,
	created_at TIMESTAMP WITHOUT TIME ZONE DEFAULT now(),
	PRIMARY KEY (id),
	UNIQUE (email)
);
--> statement-breakpoint
CREATE TABLE mcp_server_user (
	id TEXT NOT NULL,
	distinct_id TEXT,
	email TEXT,
	upstream_sub TEXT,
	profile_data JSONB,
	first_seen_at BIGINT,
	PRIMARY KEY (id),
	UNIQUE (distinct_id)
);
--> statement-breakpoint
CREATE TABLE mcp_servers (
	id TEXT NOT NULL,
	organization_id TEXT NOT NULL,
	name TEXT NOT NULL,
	product_platform_or_tool TEXT NOT NULL,
	slug TEXT NOT NULL,
	created_at BIGINT,
	PRIMARY KEY (id),
	FOREIGN KEY(organization_id) REFERENCES organization (id) ON DELETE CASCADE
);
--> statement-breakpoint
CREATE UNIQUE INDEX mcp_server_slug_idx ON mcp_servers (slug);
--> statement-breakpoint
CREATE TABLE walkthroughs (
	id TEXT NOT NULL,
	organization_id TEXT NOT NULL,
	title TEXT NOT NULL,
	created_at BIGINT,
	PRIMARY KEY (id),
	FOREIGN KEY(organization_id) REFERENCES organization (id) ON DELETE CASCADE
);
--> statement-breakpoint
CREATE TABLE mcp_server_session (
	mcp_server_session_id TEXT NOT NULL,
	mcp_server_slug TEXT NOT NULL,
	connection_date DATE NOT NULL,
	connection_timestamp BIGINT,
	mcp_server_user_id TEXT,
	title TEXT,
	PRIMARY KEY (mcp_server_session_id),
	FOREIGN KEY(mcp_server_slug) REFERENCES mcp_servers (slug) ON DELETE CASCADE,
	FOREIGN KEY(mcp_server_user_id) REFERENCES mcp_server_user (id) ON DELETE CASCADE
);
--> statement-breakpoint
CREATE INDEX mcp_server_session_slug_idx ON mcp_server_session (mcp_server_slug);
--> statement-breakpoint
CREATE INDEX mcp_server_session_user_idx ON mcp_server_session (mcp_server_user_id);
--> statement-breakpoint
CREATE TABLE walkthrough_steps (
	id TEXT NOT NULL,
	walkthrough_id TEXT NOT NULL,
	title TEXT NOT NULL,
	display_order INTEGER DEFAULT '0' NOT NULL,
	next_step_id TEXT,
	PRIMARY KEY (id),
	FOREIGN KEY(walkthrough_id) REFERENCES walkthroughs (id) ON DELETE CASCADE,
	FOREIGN KEY(next_step_id) REFERENCES walkthrough_steps (id) ON DELETE SET NULL
);
--> statement-breakpoint
CREATE TABLE mcp_server_walkthroughs (
	id TEXT NOT NULL,
	mcp_server_id TEXT NOT NULL,
	walkthrough_id TEXT NOT NULL,
	display_order INTEGER DEFAULT '0' NOT NULL,
	is_enabled TEXT DEFAULT 'true' NOT NULL,
	PRIMARY KEY (id),
	CONSTRAINT mcp_server_walkthroughs_server_walkthrough_uq UNIQUE (mcp_server_id, walkthrough_id),
	FOREIGN KEY(mcp_server_id) REFERENCES mcp_servers (id) ON DELETE CASCADE,
	FOREIGN KEY(walkthrough_id) REFERENCES walkthroughs (id) ON DELETE CASCADE
);
--> statement-breakpoint
CREATE TABLE mcp_oauth_clients (
	id TEXT NOT NULL,
	mcp_server_id TEXT NOT NULL,
	client_name TEXT,
	created_at BIGINT,
	PRIMARY KEY (id),
	FOREIGN KEY(mcp_server_id) REFERENCES mcp_servers (id) ON DELETE CASCADE
);
--> statement-breakpoint
CREATE INDEX mcp_oauth_clients_server_idx ON mcp_oauth_clients (mcp_server_id);
--> statement-breakpoint
CREATE TABLE mcp_tool_calls (
	id TEXT NOT NULL,
	created_at BIGINT,
	mcp_server_id TEXT NOT NULL,
	tool_name TEXT NOT NULL,
	mcp_server_user_id TEXT,
	mcp_server_session_id TEXT NOT NULL,
	input JSONB,
	output JSONB,
	PRIMARY KEY (id),
	FOREIGN KEY(mcp_server_id) REFERENCES mcp_servers (id) ON DELETE NO ACTION,
	FOREIGN KEY(mcp_server_user_id) REFERENCES mcp_server_user (id) ON DELETE CASCADE,
	FOREIGN KEY(mcp_server_session_id) REFERENCES mcp_server_session (mcp_server_session_id) ON DELETE CASCADE
);
--> statement-breakpoint
CREATE INDEX mcp_tool_calls_session_idx ON mcp_tool_calls (mcp_server_session_id);
--> statement-breakpoint
CREATE TABLE support_requests (
	id TEXT NOT NULL,
	email TEXT NOT NULL,
	organization_id TEXT NOT NULL,
	mcp_server_id TEXT,
	mcp_server_session_id TEXT,
	assignee_id TEXT,
	status support_request_status DEFAULT 'open' NOT NULL,
	priority support_request_priority DEFAULT 'medium' NOT NULL,
	title TEXT,
	description TEXT,
	created_at BIGINT,
	PRIMARY KEY (id),
	FOREIGN KEY(organization_id) REFERENCES organization (id) ON DELETE CASCADE,
	FOREIGN KEY(mcp_server_id) REFERENCES mcp_servers (id) ON DELETE CASCADE,
	FOREIGN KEY(mcp_server_session_id) REFERENCES mcp_server_session (mcp_server_session_id) ON DELETE CASCADE,
	FOREIGN KEY(assignee_id) REFERENCES "user" (id) ON DELETE SET NULL
);
--> statement-breakpoint
CREATE TABLE walkthrough_step_completions (
	id TEXT NOT NULL,
	mcp_server_user_id TEXT NOT NULL,
	walkthrough_id TEXT NOT NULL,
	step_id TEXT NOT NULL,
	mcp_server_id TEXT NOT NULL,
	mcp_server_session_id TEXT NOT NULL,
	completed_at BIGINT,
	metadata JSONB,
	PRIMARY KEY (id),
	CONSTRAINT walkthrough_step_completions_uq UNIQUE (mcp_server_user_id, walkthrough_id, step_id),
	FOREIGN KEY(mcp_server_user_id) REFERENCES mcp_server_user (id) ON DELETE CASCADE,
	FOREIGN KEY(walkthrough_id) REFERENCES walkthroughs (id) ON DELETE CASCADE,
	FOREIGN KEY(step_id) REFERENCES walkthrough_steps (id) ON DELETE CASCADE,
	FOREIGN KEY(mcp_server_id) REFERENCES mcp_servers (id) ON DELETE CASCADE,
	FOREIGN KEY(mcp_server_session_id) REFERENCES mcp_server_session (mcp_server_session_id) ON DELETE CASCADE
);
--> statement-breakpoint
CREATE INDEX wsc_user_walkthrough_idx ON walkthrough_step_completions (mcp_server_user_id, walkthrough_id);
--> statement-breakpoint
CREATE INDEX wsc_step_idx ON walkthrough_step_completions (step_id);
--> statement-breakpoint
CREATE INDEX wsc_server_completed_idx ON walkthrough_step_completions (mcp_server_id, completed_at);
--> statement-breakpoint
CREATE INDEX wsc_session_idx ON walkthrough_step_completions (mcp_server_session_id);
--> statement-breakpoint
CREATE TABLE mcp_oauth_tokens (
	id TEXT NOT NULL,
	client_id TEXT NOT NULL,
	mcp_server_user_id TEXT,
	expires_at BIGINT,
	PRIMARY KEY (id),
	FOREIGN KEY(client_id) REFERENCES mcp_oauth_clients (id) ON DELETE CASCADE,
	FOREIGN KEY(mcp_server_user_id) REFERENCES mcp_server_user (id) ON DELETE CASCADE
);
--> statement-breakpoint
CREATE INDEX mcp_oauth_tokens_user_idx ON mcp_oauth_tokens (mcp_server_user_id);
--> statement-breakpoint
CREATE INDEX mcp_oauth_tokens_client_idx ON mcp_oauth_tokens (client_id);
