"""Ways to serve the WSGI app: gunicorn for production, a thread for the console and tests."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from bot.runtime import Runtime
from handlers.app import build_app
from handlers.http import EVENTS_PATH, create_wsgi_app

log = logging.getLogger(__name__)


def build_wsgi(runtime: Runtime) -> Flask:
    return create_wsgi_app(runtime, build_app(runtime))


@dataclass
class ThreadedServer:
    server: BaseWSGIServer
    thread: threading.Thread

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    @property
    def events_url(self) -> str:
        return self.base_url + EVENTS_PATH

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_in_thread(wsgi: Flask, port: int = 0) -> ThreadedServer:
    """A threaded WSGI server on 127.0.0.1 for the console and the test suite."""
    server = make_server("127.0.0.1", port, wsgi, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="wsgi", daemon=True)
    thread.start()
    return ThreadedServer(server, thread)


def run_gunicorn(
    make_runtime: Callable[[], Runtime], *, host: str, port: int, threads: int, graceful_timeout: int
) -> None:
    """Serve with gunicorn (one worker process, many threads).

    The runtime is built inside the worker, after the fork, so its threads live there. On
    SIGTERM gunicorn stops accepting, waits for in-flight requests, and the worker then
    drains background jobs (a running delete finishes or rolls back) and flushes the outbox.
    """
    from gunicorn.app.base import BaseApplication

    holder: dict[str, Runtime] = {}

    def worker_exit(server: Any, worker: Any) -> None:
        runtime = holder.get("runtime")
        if runtime is not None:
            log.info("draining before exit")
            runtime.close()

    class Gunicorn(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", 1)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", threads)
            self.cfg.set("graceful_timeout", graceful_timeout)
            self.cfg.set("timeout", 60)
            self.cfg.set("accesslog", None)
            self.cfg.set("worker_exit", worker_exit)
            self.cfg.set("limit_request_line", 8190)

        def load(self) -> Flask:
            runtime = make_runtime()
            runtime.start()
            holder["runtime"] = runtime
            return build_wsgi(runtime)

    Gunicorn().run()
