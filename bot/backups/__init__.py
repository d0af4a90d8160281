"""Backups: scoped (exactly what a delete removes, restorable on demand) and full (pg_dump)."""
