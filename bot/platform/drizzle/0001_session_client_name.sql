ALTER TABLE "mcp_server_session" ADD COLUMN "client_name" text;
