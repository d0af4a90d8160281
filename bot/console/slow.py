"""Slow HTTP clients, for the slow-client test and the load benchmark (loopback only, bounded).

Half of them send part of their headers and stop; the other half send whole, plausibly signed
headers announcing a body of which only a few bytes ever come. They connect from 127.0.0.2 and
up, so a per-address limit on the server does not count them against the checks on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

from bot.console.client import sign

SOURCES = 50  # source addresses 127.0.0.2 .. 127.0.0.51


def connect(port: int, source: str, *, timeout: float = 30) -> socket.socket:
    if not source.startswith("127."):
        raise ValueError("slow clients stay on loopback")
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    sock.settimeout(timeout)
    return sock


def stalled_headers() -> bytes:
    """A request line and part of its headers; the rest never comes."""
    return b"POST /slack/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlen"


def stalled_body(secret: str) -> bytes:
    """Whole headers, signed with `secret`, announcing a 50,000-byte body of which 18 bytes come."""
    timestamp = int(time.time())
    head = (
        "POST /slack/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: 50000\r\nX-Slack-Request-Timestamp: {timestamp}\r\n"
        f"X-Slack-Signature: {sign(secret, b'x', timestamp)}\r\n\r\n"
    )
    return head.encode() + b"token=x&team_id=T0"


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or the socket's timeout)."""
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(4096):
            data += chunk
    return data


@contextlib.contextmanager
def slow_clients(port: int, count: int, secret: str) -> Iterator[list[socket.socket]]:
    """`count` connections held open, half stalled in their headers, half in their bodies; closed after."""
    clients: list[socket.socket] = []
    try:
        for index in range(count):
            sock = connect(port, f"127.0.0.{2 + index % SOURCES}")
            clients.append(sock)
            sock.sendall(stalled_headers() if index % 2 else stalled_body(secret))
        yield clients
    finally:
        for sock in clients:
            sock.close()
