"""Property tests of the command language: `parse` fails only with CommandError, and what it
accepts survives a round trip through `canonical()` (as Slack would send it back)."""

from __future__ import annotations

import html
import shlex
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bot.commands import ID_RE, SLUG_RE, STAGE_RE, VERBS, Flag, ParsedCommand, Verb, parse
from bot.errors import CommandError

# What a person can type into a value: no control characters but tab and newline (refused), no invisible
# format characters (dropped), no space but the plain one (other spaces read as it): bot/commands.py typed_text.
TYPED = st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zs", "Zl", "Zp")) | st.sampled_from(" \t\n")
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def slack_escape(text: str) -> str:
    """What Slack does to a slash command's text before sending it."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def key(parsed: ParsedCommand) -> tuple[Any, ...]:
    return parsed.verb.name, dict(parsed.args), dict(parsed.flags), parsed.stage


def parse_or_error(text: str) -> ParsedCommand | None:
    try:
        return parse(text)
    except CommandError as exc:
        assert exc.message and "Traceback" not in exc.message
        return None


WORDS = st.sampled_from(
    [
        *VERBS,
        "--stage",
        "--limit",
        "--days",
        "--org",
        "--",
        "-",
        "'",
        '"',
        "\u201c",
        "\u2019",
        "&amp;",
        "&lt;",
        "--stage=dev",
        "--limit=0",
        "--days=99999",
        "=",
        "\\",
        "\n",
        "\t",
        "--x-y",
        "--LIMIT",
    ]
)
TOKENISH = st.lists(st.one_of(WORDS, st.text(max_size=12)), max_size=8).map(" ".join)


@SETTINGS
@given(st.one_of(st.text(max_size=300), TOKENISH, st.text(max_size=5000)))
def test_parse_raises_nothing_but_command_error(text: str) -> None:
    parsed = parse_or_error(text)
    if parsed is not None:  # whatever it accepted, it accepts again from its canonical form
        assert key(parse(slack_escape(parsed.canonical()))) == key(parsed)


def flag_value(flag: Flag) -> st.SearchStrategy[Any]:
    if flag.kind == "int":
        return st.integers(min_value=flag.minimum or 0, max_value=flag.maximum or 10_000)
    if flag.kind == "id":
        return st.from_regex(ID_RE, fullmatch=True).filter(lambda v: len(v) <= 64)
    if flag.kind == "text":
        return st.text(TYPED, min_size=1, max_size=40).filter(lambda v: v.strip() and len(v) <= 40)
    if flag.kind == "slug":
        return st.from_regex(SLUG_RE, fullmatch=True).filter(lambda v: len(v) <= 60)
    return st.just(True)


def quoted(value: str) -> st.SearchStrategy[str]:
    plain = [value] if value and all(c.isalnum() or c in "._-" for c in value) else []
    return st.sampled_from([*plain, shlex.quote(value)])


@st.composite
def valid_commands(draw: st.DrawFn) -> tuple[str, tuple[Any, ...]]:
    verb: Verb = draw(st.sampled_from(list(VERBS.values())))
    parts: list[str] = [draw(st.sampled_from([verb.name, verb.name.upper(), verb.name.title()]))]
    args: dict[str, str] = {}
    for pos in verb.positionals:
        if not pos.required and draw(st.booleans()):
            break
        if pos.kind == "slug":
            value = draw(st.from_regex(SLUG_RE, fullmatch=True).filter(lambda v: len(v) <= 60))
        elif pos.kind == "id":
            value = draw(st.from_regex(ID_RE, fullmatch=True).filter(lambda v: len(v) <= 60))
        elif pos.kind == "verb":
            value = draw(st.sampled_from(list(VERBS)))
        elif pos.kind == "stage":
            value = draw(st.from_regex(STAGE_RE, fullmatch=True))
        elif pos.kind == "person":  # an email, distinct id or user id: any printable text
            value = draw(
                st.text(TYPED, min_size=1, max_size=30).filter(
                    lambda v: v.strip() and not v.startswith("-") and all(ord(c) >= 32 for c in v)
                )
            )
        else:
            value = draw(st.text(TYPED, min_size=1, max_size=30).filter(lambda v: not v.startswith("-")))
        args[pos.name] = value.lower() if pos.kind in ("verb", "stage") else value
        parts.append(draw(quoted(value)))
    flags = {flag.name: flag.default for flag in verb.flags}
    options: list[str] = []
    for flag in draw(st.permutations(verb.flags)):
        if not draw(st.booleans()):
            continue
        value = draw(flag_value(flag))
        flags[flag.name] = value
        if flag.kind == "bool":
            options.append(f"--{flag.name}")
        elif draw(st.booleans()) and not str(value).startswith("-"):
            options.append(f"--{flag.name} {draw(quoted(str(value)))}")
        else:
            options.append(f"--{flag.name}={shlex.quote(str(value))}")
    stage = None
    if verb.stage != "none" and draw(st.booleans()):
        stage = draw(st.from_regex(STAGE_RE, fullmatch=True)).lower()
        options.append(draw(st.sampled_from([f"--stage {stage}", f"--stage={stage.upper()}"])))
    # Options may come before, between or after the positionals.
    words = parts[1:]
    for option in options:
        words.insert(draw(st.integers(min_value=0, max_value=len(words))), option)
    return " ".join([parts[0], *words]), (verb.name, args, flags, stage)


@SETTINGS
@given(valid_commands())
def test_valid_commands_parse_to_what_was_meant_and_round_trip(case: tuple[str, tuple[Any, ...]]) -> None:
    text, expected = case
    assume(len(text) <= 4000)
    parsed = parse(slack_escape(text))
    assert key(parsed) == expected
    canonical = parsed.canonical()
    assert key(parse(slack_escape(canonical))) == expected
    assert html.unescape(slack_escape(canonical)) == canonical


def test_a_text_flag_value_that_looks_like_an_option_round_trips() -> None:
    from bot.commands import register

    register(Verb("note", "test only", flags=(Flag("reason", "text", "why"),), stage="none"))
    try:
        parsed = parse("note --reason=--force")
        assert parsed.flags["reason"] == "--force"
        assert key(parse(parsed.canonical())) == key(parsed)
    finally:
        del VERBS["note"]
