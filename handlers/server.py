"""Ways to serve the WSGI app: gunicorn for production, a thread for the console and tests."""

from __future__ import annotations

import logging
import os
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

SHM = "/dev/shm"  # noqa: S108 - gunicorn's per-worker heartbeat file, the documented place for it


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
    """Serve with gunicorn: one worker process (the runtime's job pool and outbox live in it), many threads.

    On SIGTERM the worker drains before it stops listening: /readyz and new Slack requests get
    503 (a load balancer probing /readyz stops routing here; Slack retries only Events API
    deliveries, so a slash command or click that still arrives fails and its person runs it
    again), accepted work finishes within 80% of `graceful_timeout` (or is cut off when gunicorn
    kills the worker at the timeout, and its transactions roll back), the outbox is flushed,
    and only then does gunicorn close the worker.
    """
    from gunicorn.app.base import BaseApplication
    from gunicorn.glogging import Logger
    from gunicorn.workers.gthread import ThreadWorker

    from bot.logs import JsonFormatter

    class JsonLogger(Logger):
        """gunicorn's own lines as JSON too, like every other line the process writes."""

        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            for logger in (self.error_log, self.access_log):
                for handler in logger.handlers:
                    handler.setFormatter(JsonFormatter())

    class DrainingWorker(ThreadWorker):
        def handle_exit(self, sig: int, frame: Any) -> None:
            runtime = getattr(self.app, "runtime", None)
            if runtime is None or getattr(self, "draining", False):
                super().handle_exit(sig, frame)
                return
            self.draining = True
            threading.Thread(target=self._drain_then_exit, args=(runtime, sig), name="drain", daemon=True).start()

        def _drain_then_exit(self, runtime: Runtime, sig: int) -> None:
            log.info("SIGTERM: draining")
            try:
                runtime.close(timeout=max(graceful_timeout * 0.8, 1.0))
            finally:
                ThreadWorker.handle_exit(self, sig, None)

    def worker_exit(server: Any, worker: Any) -> None:
        runtime = getattr(worker.app, "runtime", None)
        if runtime is not None:
            runtime.close(timeout=max(graceful_timeout * 0.5, 1.0))

    class Gunicorn(BaseApplication):
        runtime: Runtime | None = None

        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", 1)
            self.cfg.set("worker_class", DrainingWorker)
            self.cfg.set("threads", threads)
            self.cfg.set("graceful_timeout", graceful_timeout)
            self.cfg.set("timeout", 60)
            self.cfg.set("keepalive", 5)
            self.cfg.set("accesslog", None)
            self.cfg.set("logger_class", JsonLogger)
            self.cfg.set("worker_exit", worker_exit)
            self.cfg.set("control_socket_disable", True)  # nothing manages it; replicas on one host would clash
            self.cfg.set("limit_request_line", 8190)
            self.cfg.set("limit_request_fields", 100)
            self.cfg.set("limit_request_field_size", 8190)
            if os.path.isdir(SHM):  # the heartbeat file off overlay filesystems (containers)
                self.cfg.set("worker_tmp_dir", SHM)

        def load(self) -> Flask:
            runtime = make_runtime()
            runtime.start()
            self.runtime = runtime
            return build_wsgi(runtime)

    Gunicorn().run()
