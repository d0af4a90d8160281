"""`mcp-ops serve` as a real subprocess (uvicorn and all), for tests and benchmarks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bot.console.client import SlackRequestSender
from bot.localpg import free_port

# What a process needs from the parent environment to run at all; nothing else is passed on.
PASS_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "PG_BINDIR")


class ServeProcessError(RuntimeError):
    pass


class ServeProcess:
    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        *,
        command: Sequence[str] | None = None,
        port: int | None = None,
        args: Sequence[str] = (),
        cwd: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.command = list(command or [sys.executable, "-m", "bot.cli"])
        self.args = list(args)
        self.env = {k: os.environ[k] for k in PASS_THROUGH if k in os.environ} | dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def events_url(self) -> str:
        return self.base_url + "/slack/events"

    def sender(
        self, signing_secret: str, response_base: str, on_reply: Callable[[int, str], None] | None = None
    ) -> SlackRequestSender:
        """`on_reply`: e.g. the fake Slack's `check_ack`, so the server's acks are checked as Slack would."""
        return SlackRequestSender(self.events_url, signing_secret, response_base=response_base, on_reply=on_reply)

    def start(self, timeout: float = 60) -> ServeProcess:
        argv = [*self.command, "serve", "--host", "127.0.0.1", "--port", str(self.port), *self.args]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            # Its own process group, so `kill()` takes the server and anything it started down together.
            self.process = subprocess.Popen(
                argv, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServeProcessError(f"mcp-ops serve exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if self.get("/healthz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.kill()
        raise ServeProcessError(f"mcp-ops serve did not answer /healthz in {timeout:.0f} s: {self.log_tail()}")

    def get(self, path: str, timeout: float = 10) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=timeout) as response:  # noqa: S310 - loopback
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def get_json(self, path: str) -> tuple[int, Any]:
        status, body = self.get(path)
        return status, json.loads(body)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM and wait; SIGKILL if it will not go. None if it was never started."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL to every process of the server (a crash, an OOM kill): nothing gets to clean up."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def log_lines(self) -> list[str]:
        if not self.log_path.exists():
            return []
        return self.log_path.read_text(errors="replace").splitlines()

    def log_tail(self, lines: int = 8) -> str:
        return " / ".join(self.log_lines()[-lines:])
