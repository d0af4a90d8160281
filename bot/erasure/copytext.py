"""PostgreSQL COPY text format, line by line, for reading and rewriting scoped backup files."""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Iterator

_ESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|(.))", re.DOTALL)
_SIMPLE = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}
NULL = b"\\N"


def decode(raw: bytes) -> str | None:
    """One field as COPY wrote it -> its text (None for NULL)."""
    if raw == NULL:
        return None
    if b"\\" not in raw:
        return raw.decode("utf-8")

    def unescape(match: re.Match[bytes]) -> bytes:
        if match.group(1):
            return bytes([int(match.group(1), 8) & 0xFF])
        if match.group(2):
            return bytes([int(match.group(2), 16)])
        char = match.group(3)
        return _SIMPLE.get(char, char)

    return _ESCAPE.sub(unescape, raw).decode("utf-8")


def encode(value: str | None) -> bytes:
    if value is None:
        return NULL
    data = value.encode("utf-8").replace(b"\\", b"\\\\")
    return data.replace(b"\t", b"\\t").replace(b"\n", b"\\n").replace(b"\r", b"\\r")


def gunzip_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines (without their newline) of a gzip stream of COPY text."""
    decompressor = zlib.decompressobj(31)
    pending = b""
    for chunk in chunks:
        pending += decompressor.decompress(chunk)
        *lines, pending = pending.split(b"\n")
        yield from lines
    *lines, pending = (pending + decompressor.flush()).split(b"\n")
    yield from lines
    if pending:  # COPY ends every row with a newline; a tail without one is still a row
        yield pending
