"""manifest.yml agrees with the code: every verb in the usage hint, the served path, the scopes it calls."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from urllib.parse import urlparse

import yaml

from bot.commands import VERBS, usage_hint
from bot.slack_client import FEATURE_SCOPES, SLACK_METHOD_SCOPES
from handlers.http import EVENTS_PATH

ROOT = Path(__file__).resolve().parent.parent
# Code that runs in production; bot/console is the local Slack stand-in and request sender.
PRODUCTION_CODE = [p for d in ("bot", "handlers") for p in (ROOT / d).rglob("*.py") if "console" not in p.parts]
API_FAMILIES = ("chat", "views", "users", "usergroups", "conversations", "reactions", "files", "team", "auth", "pins")
METHOD_STRING = re.compile(rf"^(?:{'|'.join(API_FAMILIES)})\.[a-zA-Z]+(?:\.[a-zA-Z]+)*$")
SDK_ATTRIBUTE = re.compile(rf"^(?:{'|'.join(API_FAMILIES)})_[a-zA-Z0-9_]+$")  # files_upload_v2 too


def manifest() -> dict:
    return yaml.safe_load((ROOT / "manifest.yml").read_text())


def methods_in(tree: ast.AST) -> list[tuple[str, int]]:
    """Slack method names a module uses: literal names ("chat.postMessage", as the outbox queues
    them), SDK calls (client.chat_postMessage(...)) and Bolt's say(...), with their line numbers."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and METHOD_STRING.match(node.value):
            found.append((node.value, node.lineno))
        elif (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and SDK_ATTRIBUTE.match(node.func.attr)
        ):
            found.append((node.func.attr.replace("_", "."), node.lineno))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "say":
            found.append(("chat.postMessage", node.lineno))
    return found


def web_api_methods_called() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in PRODUCTION_CODE:
        if path.name == "slack_client.py":  # the map itself
            continue
        for method, line in methods_in(ast.parse(path.read_text(), filename=str(path))):
            found.setdefault(method, []).append(f"{path.relative_to(ROOT)}:{line}")
    return found


def test_usage_hint_names_every_verb_and_matches_the_code():
    hint = manifest()["features"]["slash_commands"][0]["usage_hint"]
    assert hint == usage_hint(), f"set manifest.yml usage_hint to {usage_hint()!r}"
    words = {part.split()[0] for part in hint.split("|")}
    assert set(VERBS) <= words


def test_usage_hint_follows_a_newly_registered_verb():
    from bot.commands import Positional, Verb, register

    register(Verb("zap", "test only", (Positional("slug"),), mutating=True))
    try:
        assert "zap <slug>" in usage_hint()
    finally:
        del VERBS["zap"]
    assert "zap" not in usage_hint()


def test_every_request_url_is_the_events_path_the_app_serves():
    data = manifest()
    command = data["features"]["slash_commands"][0]
    assert command["command"] == "/mcp"
    urls = [
        command["url"],
        data["settings"]["interactivity"]["request_url"],
        data["settings"]["event_subscriptions"]["request_url"],
    ]
    for url in urls:
        parsed = urlparse(url)
        assert parsed.scheme == "https"
        assert parsed.path == EVENTS_PATH
    assert data["settings"]["interactivity"]["is_enabled"] is True
    assert data["settings"]["socket_mode_enabled"] is False


def test_app_home_is_enabled_and_subscribed():
    data = manifest()
    assert data["features"]["app_home"]["home_tab_enabled"] is True
    assert "app_home_opened" in data["settings"]["event_subscriptions"]["bot_events"]
    assert data["features"]["bot_user"]["display_name"]


def test_scopes_are_exactly_what_the_code_calls():
    called = web_api_methods_called()
    assert "chat.postMessage" in called, "the scan must at least see the audit posts"
    unmapped = {m: where for m, where in called.items() if m not in SLACK_METHOD_SCOPES}
    assert not unmapped, f"add these methods and their scopes to bot/slack_client.py: SLACK_METHOD_SCOPES: {unmapped}"
    needed = set(FEATURE_SCOPES) | {SLACK_METHOD_SCOPES[m] for m in called if SLACK_METHOD_SCOPES[m]}
    granted = set(manifest()["oauth_config"]["scopes"]["bot"])
    assert granted >= needed, f"manifest.yml lacks scopes {sorted(needed - granted)}"
    assert granted <= needed, f"manifest.yml asks for scopes no code needs: {sorted(granted - needed)}"
    assert "user" not in manifest()["oauth_config"]["scopes"], "the bot needs no user-token scopes"


def test_the_scan_sees_sdk_calls_literal_names_and_say():
    source = (
        "def f(client, conn, say):\n"
        "    client.usergroups_users_list(usergroup='S1')\n"
        "    enqueue(conn, 'chat.update', {})\n"
        "    say('hi')\n"
        "    log.info('chat.postMessage is not a call in a sentence')\n"
    )
    assert sorted(m for m, _ in methods_in(ast.parse(source))) == [
        "chat.postMessage",
        "chat.update",
        "usergroups.users.list",
    ]
