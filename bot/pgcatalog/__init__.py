"""One reader of the catalog for every feature that compares or describes a schema (drift, the impact report)."""

from bot.pgcatalog.snapshot import DATABASE, CatalogObject, Skip, Snapshot, ignore_patterns, ignorer, read_snapshot

__all__ = ["DATABASE", "CatalogObject", "Skip", "Snapshot", "ignore_patterns", "ignorer", "read_snapshot"]
