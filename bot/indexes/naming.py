"""The name the bot gives an index: `<table>_<columns>_idx`, within PostgreSQL's 63 bytes.

A longer name is cut (on a character boundary) and given a short hash of the full name, so two
long names that share a prefix stay distinct and the same table and columns always get the same
name: a retry finds its own earlier (invalid) attempt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

MAX_BYTES = 63  # NAMEDATALEN - 1
HASH_CHARS = 8


def index_name(table: str, columns: Sequence[str]) -> str:
    name = f"{table}_{'_'.join(columns)}_idx"
    if len(name.encode()) <= MAX_BYTES:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:HASH_CHARS]  # noqa: S324 - a name, not security
    head = name.encode()[: MAX_BYTES - HASH_CHARS - 1].decode(errors="ignore")
    return f"{head}_{digest}"
