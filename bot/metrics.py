"""Prometheus metrics, defined once and shared by every module that counts something."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

registry = CollectorRegistry(auto_describe=True)

commands_total = Counter(
    "mcp_ops_commands_total", "Slash commands handled, by verb and outcome", ["verb", "outcome"], registry=registry
)
ack_latency_seconds = Histogram(
    "mcp_ops_ack_latency_seconds",
    "Time from receiving a Slack request to acknowledging it",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0),
    registry=registry,
)
command_duration_seconds = Histogram(
    "mcp_ops_command_duration_seconds", "Time to complete a command after its ack", ["verb"], registry=registry
)
outbox_backlog = Gauge("mcp_ops_outbox_backlog", "Slack posts waiting in the outbox", registry=registry)
