"""Slack transport: thin Bolt listeners that parse, call bot/, and render Block Kit."""
