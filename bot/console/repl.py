"""`mcp-ops console`: drive the real bot from a terminal, as Slack would.

The bot runs unchanged over HTTP; this console signs requests the way Slack does and a
local stand-in for the Slack Web API receives what the bot posts, which is shown as text.
"""

from __future__ import annotations

import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TextIO

from bot.config import Settings
from bot.console.client import SlackRequestSender
from bot.console.localslack import LocalSlack, SlackCall
from bot.console.text import buttons_in, render_blocks
from bot.runtime import Runtime

HELP = """Type a slash command, e.g. `/mcp find acme-analytics-mcp --stage dev`.
  as <USER_ID>        act as another Slack user (e.g. `as U0APPROVER`)
  in <CHANNEL_ID>     type commands in another channel
  press <label>       press a button shown in the latest reply (`press Delete`)
  home                open the bot's App Home tab as the acting user
  alert [N]           show the latest (or Nth latest) alert in full, with its buttons (`press Acknowledge`)
  whoami              show the acting user and channel
  help                this text
  quit                leave"""


def try_these(stage: str, slug: str | None = None) -> str:
    """The three lines a newcomer sees first."""
    example = f"/mcp stats {slug} --stage {stage}" if slug else "/mcp help"
    return (
        f"Try these:  /mcp list --limit 5 --stage {stage}   (servers on a stage; then `press More` for the next)\n"
        f"            {example}   ({'usage of one server, with a chart' if slug else 'every command'})\n"
        "            home   (your App Home)    as <USER_ID>   (act as someone else)    help   (the rest)"
    )


@dataclass
class Clickable:
    element: dict[str, Any]
    block_id: str
    channel: str
    message: dict[str, Any]
    message_ts: str | None
    response_url: str | None


class Console:
    def __init__(
        self,
        settings: Settings,
        *,
        user: str,
        channel: str = "CCONSOLE",
        out: TextIO | None = None,
        server_factory: Callable[[Runtime], Any] | None = None,
    ) -> None:
        self.out = out or sys.stdout
        self.user = user
        self.channel = channel
        self.slack = LocalSlack().start()
        self.settings = replace(
            settings,
            slack_api_url=self.slack.api_url,
            bot_token=settings.bot_token or "xoxb-local-console",
            signing_secret=settings.signing_secret or secrets.token_hex(16),
        )
        self.runtime = Runtime(self.settings)
        self.runtime.start()
        if server_factory is None:
            from handlers.server import build_asgi, serve_in_thread

            def server_factory(runtime: Runtime) -> Any:
                return serve_in_thread(build_asgi(runtime))

        self.server = server_factory(self.runtime)
        self.sender = SlackRequestSender(
            self.server.events_url,
            self.settings.signing_secret,
            response_base=self.slack.base_url,
            on_reply=self.slack.check_ack,  # acks are checked as Slack would check them, like every other payload
        )
        self.clickables: list[Clickable] = []
        self._alert_channels = {self.settings.alert_channel_for(stage) for stage in self.settings.stage_names()} - {""}
        self._print_lock = threading.Lock()
        self._response_channels: dict[str, str] = {}
        self._pending_modal: dict[str, Any] | None = None
        self._stream: TextIO = sys.stdin
        self._home_requested = False
        self._home_views: dict[str, dict[str, Any]] = {}  # each person's latest published App Home
        self._replies: dict[str, list[dict[str, Any]]] = {}  # the blocks last sent to each response_url
        self.slack.listeners.append(self._on_slack_call)

    # -- output --------------------------------------------------------------------------

    def _print(self, text: str) -> None:
        with self._print_lock:
            print(text, file=self.out, flush=True)

    def _on_slack_call(self, call: SlackCall) -> None:
        payload = call.payload
        if call.method in ("response_url", "chat.postMessage", "chat.update", "chat.postEphemeral"):
            channel = payload.get("channel") or self._response_channels.get(call.path, self.channel)
            if call.method == "chat.postMessage" and channel in {self.settings.audit_channel}:
                self._print(f"  [#audit] {render_blocks([], payload.get('text', ''))}")
                return
            if call.method in ("chat.postMessage", "chat.update") and channel in self._alert_channels:
                # Alerts arrive on their own schedule: one line each, so they neither flood the screen nor
                # take the buttons of the reply being read (`alert` shows the latest in full).
                edited = " (updated)" if call.method == "chat.update" else ""
                self._print(f"  [#alerts]{edited} {render_blocks([], payload.get('text', ''))}")
                return
            label = {
                "response_url": "reply",
                "chat.postMessage": "posted",
                "chat.update": "updated",
                "chat.postEphemeral": "only you",
            }[call.method]
            if payload.get("response_type") == "ephemeral" and call.method == "response_url":
                label = "only you"
            if call.method == "response_url":
                blocks = payload.get("blocks") or []
                earlier = self._replies.get(call.path)
                self._replies[call.path] = blocks
                if payload.get("replace_original") is True:
                    label = "updated"
                    if earlier and blocks[: len(earlier)] == earlier:  # the same answer, more added (a chart)
                        label, payload = "added to the reply", {**payload, "blocks": blocks[len(earlier) :]}
            self._show(label, channel, payload, response_url=None)
        elif call.method == "views.publish":
            self._home_views[str(payload.get("user_id"))] = payload.get("view") or {}
            if payload.get("user_id") == self.user and self._home_requested:
                self._show_home()
        elif call.method == "views.open":
            self._pending_modal = payload.get("view") or {}
            title = (self._pending_modal.get("title") or {}).get("text", "form")
            blocks = self._pending_modal.get("blocks", [])
            self._print(f"\n--- modal: {title} ---\n{render_blocks(blocks)}\n(type your answer; `cancel` closes)")

    def _show(self, label: str, channel: str, payload: dict[str, Any], *, response_url: str | None) -> None:
        blocks = payload.get("blocks") or []
        text = render_blocks(blocks, payload.get("text", ""))
        self._print(f"\n[{label} in {channel}]\n{text}")
        found = buttons_in(blocks)
        if found:
            ts = payload.get("ts")
            self.clickables = [
                Clickable(element, block_id, channel, payload, ts, response_url) for element, block_id in found
            ]

    # -- input ---------------------------------------------------------------------------

    def slash(self, text: str) -> None:
        response_url = self.sender.new_response_url()
        self._response_channels[response_url.split(self.slack.base_url, 1)[1]] = self.channel
        command = text.strip().removeprefix("/mcp").strip()
        before = len(self.slack.calls)
        reply = self.sender.slash(command, user=self.user, channel=self.channel, response_url=response_url)
        if reply.status != 200:
            self._print(f"[HTTP {reply.status}] {reply.body}")
            return
        body = reply.json() if reply.body.strip().startswith("{") else None
        if body:
            self._show(
                "only you" if body.get("response_type") == "ephemeral" else "reply",
                self.channel,
                body,
                response_url=response_url,
            )
        self._settle(before, expect_reply=not body)

    def press(self, label: str) -> None:
        wanted = label.strip().strip("[]").strip().lower()
        labelled = [(c, (c.element.get("text") or {}).get("text", "").lower()) for c in self.clickables]
        exact = [c for c, text in labelled if text == wanted]
        # `press More` finds `More (15 left)`: the start of a label is enough when only one label starts so.
        starting = [c for c, text in labelled if wanted and text.startswith(wanted)]
        match = exact[0] if exact else (starting[0] if len(starting) == 1 else None)
        if match is None:
            labels = ", ".join((c.element.get("text") or {}).get("text", "") for c in self.clickables) or "none"
            self._print(f"no button `{label}` in the latest reply (buttons: {labels})")
            return
        confirm = match.element.get("confirm")
        if confirm:
            question = (confirm.get("text") or {}).get("text", "Are you sure?")
            self._print(f"{question} [y/N]")
            answer = self._stream.readline().strip().lower()
            if answer not in ("y", "yes"):
                self._print("not pressed")
                return
        before = len(self.slack.calls)
        reply = self.sender.block_actions(
            match.element,
            user=self.user,
            channel=match.channel,
            message=match.message,
            block_id=match.block_id,
            message_ts=match.message_ts,
        )
        if reply.status != 200:
            self._print(f"[HTTP {reply.status}] {reply.body}")
        self._settle(before, expect_reply=True)

    def answer_modal(self, text: str) -> None:
        view = self._pending_modal or {}
        self._pending_modal = None
        if text.strip().lower() == "cancel":
            self._print("closed")
            return
        values: dict[str, dict[str, Any]] = {}
        for block in view.get("blocks", []):
            if block.get("type") == "input":
                element = block.get("element", {})
                values[block.get("block_id", "input")] = {
                    element.get("action_id", "value"): {"type": element.get("type", "plain_text_input"), "value": text}
                }
        before = len(self.slack.calls)
        reply = self.sender.view_submission(view, values, user=self.user)
        if reply.status != 200:
            self._print(f"[HTTP {reply.status}] {reply.body}")
        elif reply.body.strip():
            self._print(reply.body)
        self._settle(before, expect_reply=True)

    def open_home(self, wait: float = 5.0) -> None:
        """Open the App Home tab. The bot publishes it now, or (opened again moments after its last publish)
        in the person's next slot: meanwhile Slack shows the last one published, and so does this."""
        self._home_requested = True
        self.sender.event({"type": "app_home_opened", "user": self.user, "tab": "home"})
        deadline = time.monotonic() + wait
        while self._home_requested and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._home_requested and self.user in self._home_views:
            self._show_home()

    def _show_home(self) -> None:
        self._home_requested = False
        view = self._home_views.get(self.user) or {}
        self._print(f"\n[App Home of {self.user}]\n{render_blocks(view.get('blocks', []))}")

    def show_alert(self, which: str) -> None:
        """An alert message in full, as it stands in its channel now; its buttons become the ones to press."""
        posted = sorted(
            (
                m
                for m in list(self.slack.messages.values())
                if m.channel in self._alert_channels and not m.payload.get("thread_ts")
            ),
            key=lambda m: float(m.ts),
            reverse=True,
        )
        number = int(which) if which.strip().isdigit() else 1
        if not posted:
            self._print("no alert has been posted yet")
        elif not 1 <= number <= len(posted):
            self._print(
                "there is 1 alert: `alert 1`"
                if len(posted) == 1
                else f"there are {len(posted)} alerts: `alert 1` is the latest, `alert {len(posted)}` the oldest"
            )
        else:
            shown = posted[number - 1]
            self._show(
                f"alert {number} of {len(posted)}", shown.channel, {**shown.payload, "ts": shown.ts}, response_url=None
            )

    def _settle(self, before: int, *, expect_reply: bool, quiet: float = 0.4, limit: float = 30.0) -> None:
        """Wait until the bot has said what it has to say about this input: its work done (a chart is
        drawn after the answer) and Slack quiet for `quiet` seconds."""
        deadline = time.monotonic() + limit
        if expect_reply:
            while len(self.slack.calls) <= before and time.monotonic() < deadline:
                time.sleep(0.05)
        seen = len(self.slack.calls)
        last_change = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if len(self.slack.calls) != seen:
                seen = len(self.slack.calls)
                last_change = time.monotonic()
            elif time.monotonic() - last_change >= quiet and self.runtime.in_flight == 0:
                return

    def handle_line(self, line: str) -> bool:
        """Handle one line of input; False means quit."""
        line = line.strip()
        if not line:
            return True
        if self._pending_modal is not None:
            self.answer_modal(line)
            return True
        word, _, rest = line.partition(" ")
        word = word.lower()
        if word in ("quit", "exit", r"\q"):
            return False
        if word == "help":
            self._print(HELP)
        elif word == "as" and rest.strip():
            self.user = rest.strip().upper()
            self._print(f"acting as {self.user}")
        elif word == "in" and rest.strip():
            self.channel = rest.strip().upper()
            self._print(f"now in channel {self.channel}")
        elif word == "home":
            self.open_home()
        elif word == "alert":
            self.show_alert(rest)
        elif word == "whoami":
            self._print(f"acting as {self.user} in {self.channel}")
        elif word == "press":
            self.press(rest)
        elif line.startswith("/mcp"):
            self.slash(line)
        else:
            self._print("not understood; type `help`")
        return True

    def loop(self, stream: TextIO | None = None, *, intro: str = "") -> None:
        """Read commands until `quit` or the end of input; `intro` (the hint) is printed first, under the
        lock that keeps it whole while alerts arrive."""
        stream = stream or sys.stdin
        self._stream = stream
        interactive = stream.isatty()
        if intro:
            self._print(intro)
        self._print(f"mcp-ops console: acting as {self.user} in {self.channel}. Type `help` for help.")
        while True:
            if interactive:
                self._print_prompt()
            line = stream.readline()
            if not line:
                break
            if not interactive:
                self._print(f"> {line.rstrip()}")
            if not self.handle_line(line):
                break

    def _print_prompt(self) -> None:
        with self._print_lock:
            self.out.write(f"{self.user}> ")
            self.out.flush()

    def close(self) -> None:
        self.server.stop()
        self.runtime.close()
        self.slack.stop()
