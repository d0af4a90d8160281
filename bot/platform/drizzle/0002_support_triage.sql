ALTER TABLE "support_requests" ALTER COLUMN "priority" SET DEFAULT 'low';--> statement-breakpoint
CREATE INDEX "mcp_tool_calls_created_idx" ON "mcp_tool_calls" USING btree ("created_at");
