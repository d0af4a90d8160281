"""Serving the ASGI app with uvicorn: `mcp-ops serve`, and a thread for the console and tests.

Slow or idle clients cost no thread: connections live on one event loop, and uvicorn's
protocol is extended (its documented `http=` protocol-class hook) with what it lacks:
- a header deadline from the connection (or a kept-alive request's first byte) to its last
  header, and a body deadline from there to the body's last byte; past either, the client
  gets 408 (when nothing was answered yet) and the connection is closed;
- a cap on open connections per client address: one over it gets 429 and is closed at once;
- a cap on a request's header bytes (32 KiB): past it, 431 and the connection is closed.
Only a request read whole within both deadlines reaches the app, which verifies its signature
before anything else (handlers/http.py).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bot import metrics
from bot.edge_config import EdgeSettings
from bot.runtime import Runtime
from handlers.app import build_app
from handlers.http import EVENTS_PATH, create_asgi_app, metrics_app

log = logging.getLogger(__name__)

TOO_MANY = b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
TOO_SLOW = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
TOO_BIG = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
MAX_HEADER_BYTES = 32 * 1024
KEEP_ALIVE_S = 5  # an idle kept-alive connection is closed after this
# The event loop shares the interpreter with Bolt's dispatch threads and the work lanes; a shorter
# GIL switch interval (default 5 ms) lets it take its turn sooner, so acks in a burst are not late.
SWITCH_INTERVAL_S = 0.001


def build_asgi(runtime: Runtime) -> Starlette:
    return create_asgi_app(runtime, build_app(runtime))


def guarded_protocol(edge: EdgeSettings) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with read deadlines and a per-address connection cap."""
    open_per_client: Counter[str] = Counter()  # one event loop touches it: no lock needed

    class GuardedProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _counted: str | None = None
        _in_headers = True  # no end of headers yet for the request being read
        _header_bytes = 0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            address = self.client[0] if self.client else ""
            if open_per_client[address] >= edge.max_connections_per_client:
                metrics.http_refused_total.labels(status="429").inc()
                transport.write(TOO_MANY)
                transport.close()
                return
            open_per_client[address] += 1
            self._counted = address
            self._arm(edge.header_timeout_s)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._counted is not None:
                open_per_client[self._counted] -= 1
                if open_per_client[self._counted] <= 0:
                    del open_per_client[self._counted]
                self._counted = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._in_headers and not self.transport.is_closing():  # all of it was headers
                self._header_bytes += len(data)
                if self._header_bytes > MAX_HEADER_BYTES:
                    metrics.http_refused_total.labels(status="431").inc()
                    self.transport.write(TOO_BIG)
                    self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_headers = True
            if self._deadline is None:  # a kept-alive connection's next request: its headers' deadline
                self._arm(edge.header_timeout_s)

        def on_headers_complete(self) -> None:
            self._in_headers, self._header_bytes = False, 0
            self._arm(edge.body_timeout_s)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            metrics.http_refused_total.labels(status="408").inc()
            cycle = self.cycle  # the request being read, or the previous one on a kept-alive connection
            if cycle is None or cycle.response_complete or not cycle.response_started:
                self.transport.write(TOO_SLOW)
            self.transport.close()

    return GuardedProtocol


def server_config(app: Starlette, edge: EdgeSettings, *, graceful_s: float, **where: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        http=guarded_protocol(edge),
        lifespan="off",  # the runtime is started and closed around the server
        log_config=None,  # uvicorn's lines go through the root logger: JSON like the rest
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=max(int(graceful_s), 1),
        **where,
    )


@dataclass
class ThreadedServer:
    server: uvicorn.Server
    thread: threading.Thread
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def events_url(self) -> str:
        return self.base_url + EVENTS_PATH

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve_in_thread(app: Starlette, port: int = 0, host: str = "127.0.0.1") -> ThreadedServer:
    """The same server on a thread of its own (no signal handling): the console, the tests, METRICS_PORT."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(server_config(app, app.state.edge, graceful_s=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the HTTP server did not start")
        time.sleep(0.01)
    return ThreadedServer(server, thread, sock.getsockname()[1])


class DrainingServer(uvicorn.Server):
    """On SIGTERM (or SIGINT), drain before the server stops listening.

    /readyz and new Slack requests get 503 meanwhile (a load balancer probing /readyz stops
    routing here; Slack retries only Events API deliveries, so a slash command or click that
    still arrives fails and its person runs it again); accepted work finishes within 80% of
    `graceful_s` (else it is cut off at exit, and its transactions roll back), the outbox is
    flushed, and only then does the server close. A second signal stops it at once.
    """

    def __init__(self, config: uvicorn.Config, runtime: Runtime, graceful_s: float) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.graceful_s = graceful_s
        self.drained = False
        self._draining = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self._draining:
            self.should_exit = self.force_exit = True
            return
        self._draining = True
        threading.Thread(target=self._drain_then_exit, name="drain", daemon=True).start()

    def _drain_then_exit(self) -> None:
        log.info("SIGTERM: draining")
        try:
            self.drained = self.runtime.close(timeout=max(self.graceful_s * 0.8, 1.0))
        finally:
            self.should_exit = True


def serve(runtime: Runtime, *, host: str, port: int, graceful_timeout: int) -> bool:
    """Serve until SIGTERM; True if all accepted work finished (False: the caller exits hard)."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    runtime.start()
    edge = runtime.settings.edge
    metrics_server = None
    try:
        if edge.metrics_port is not None:
            app = metrics_app(runtime)
            app.state.edge = edge
            metrics_server = serve_in_thread(app, edge.metrics_port, host)
        config = server_config(build_asgi(runtime), edge, graceful_s=graceful_timeout * 0.2, host=host, port=port)
        server = DrainingServer(config, runtime, graceful_timeout)
        server.run()
        return server.drained or runtime.close(timeout=max(graceful_timeout * 0.5, 1.0))
    finally:
        if metrics_server is not None:
            metrics_server.stop()
        runtime.close(timeout=1.0)
