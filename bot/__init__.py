"""mcp-ops domain and infrastructure: no Slack listener code lives here."""
