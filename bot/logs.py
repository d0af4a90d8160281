"""Structured JSON log lines with a request id; every line is scrubbed of secrets and emails."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote_plus

from bot.pii import scrub

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


NO_REQUEST = "-"


def assign_request_id() -> str:
    """Give the request being received a fresh id (the HTTP layer calls this first)."""
    rid = uuid.uuid4().hex[:12]
    request_id_var.set(rid)
    return rid


def clear_request_id() -> None:
    """Forget the id when the request is done, so a reused thread does not carry it on."""
    request_id_var.set(NO_REQUEST)


def new_request_id() -> str:
    """The id of the unit of work a listener starts: the HTTP request's, or a fresh one
    (Socket Mode, the console). Listener threads inherit the HTTP thread's context."""
    rid = request_id_var.get()
    return rid if rid != NO_REQUEST else assign_request_id()


class ContextThreadPoolExecutor(ThreadPoolExecutor):
    """Runs each task in a copy of the submitter's context, so the request id follows the work."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)


PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")


def clean(text: str) -> str:
    """Scrub a log message; form-encoded text (request bodies quoted by libraries) is decoded
    first, so `jane%40example.com` or an encoded token cannot slip past the patterns."""
    if PERCENT_ESCAPE.search(text):
        text = unquote_plus(text)
    return scrub(text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": request_id_var.get(),
            "msg": clean(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = clean(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exc"] = clean(self.formatException(record.exc_info))
        return json.dumps(entry, default=lambda v: clean(str(v)))


class StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a line is logged, not when logging was configured
    (a test runner or a daemoniser may swap and close the stream it found at start-up)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _stream_handler(stream: Any) -> logging.StreamHandler:
    return logging.StreamHandler(stream) if stream is not None else StderrHandler()


def configure_logging(level: str = "INFO", stream: Any = None) -> None:
    handler = _stream_handler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("urllib3", "botocore", "boto3", "s3transfer", "apscheduler.executors.default", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class ScreenFormatter(logging.Formatter):
    """One short, scrubbed line per warning for a terminal a person is reading."""

    def format(self, record: logging.LogRecord) -> str:
        return f"mcp-ops: {record.levelname.lower()}: {clean(record.getMessage())}"


def configure_file_logging(path: Any, level: str = "INFO", screen: Any = None) -> None:
    """JSON log lines to the file `path`; only warnings and errors reach the screen (the console, the demo)."""
    configure_logging(level)
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(JsonFormatter())
    screen_handler = _stream_handler(screen)
    screen_handler.setFormatter(ScreenFormatter())
    screen_handler.setLevel(logging.WARNING)
    # A loaded machine makes APScheduler warn that a start-up run was late: the file keeps it, the screen doesn't.
    screen_handler.addFilter(lambda r: not (r.name.startswith("apscheduler") and r.levelno < logging.ERROR))
    logging.getLogger().handlers[:] = [file_handler, screen_handler]
