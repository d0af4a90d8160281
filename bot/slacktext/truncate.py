"""Cutting mrkdwn to a length without breaking it.

A cut never splits a code span or block, an entity (`&amp;`), a mention or link (`<...>`) or an
emoji code; a `*bold*`, `_italic_` or `~strike~` span that the cut opens is closed after the
ellipsis, and a code span too long to keep whole is cut inside and closed. Where a line break
is close to the limit the cut is made there, so a list loses whole lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.slacktext.mrkdwn import Mrkdwn

ELLIPSIS = "…"
ATOM_RE = re.compile(
    r"```.*?```"  # code block
    r"|`[^`\n]+`"  # code span
    r"|&(?:amp|lt|gt);"  # entity
    r"|<[^<>\n]{1,3000}>"  # mention, channel, link
    r"|:[a-z0-9_+\-']{1,100}:"  # emoji code
    r"|.",
    re.DOTALL,
)
MARKERS = "*_~"
LINE_BREAK_SHARE = 0.6  # cut at the last line break if it keeps at least this share of the room


@dataclass(frozen=True)
class _Atom:
    start: int
    text: str


def _atoms(text: str) -> list[_Atom]:
    return [_Atom(m.start(), m.group(0)) for m in ATOM_RE.finditer(text)]


def _is_word(char: str) -> bool:
    return char.isalnum()


def _closed_spans(text: str, atoms: list[_Atom]) -> dict[int, int]:
    """Formatting spans as Slack reads them: opener atom index -> closer atom index."""
    open_at: dict[str, int] = {}
    spans: dict[int, int] = {}
    for index, atom in enumerate(atoms):
        marker = atom.text
        if marker not in MARKERS:
            continue
        before = text[atom.start - 1] if atom.start > 0 else " "
        after = text[atom.start + 1] if atom.start + 1 < len(text) else " "
        if marker in open_at and not before.isspace() and not _is_word(after):
            spans[open_at.pop(marker)] = index
        elif marker not in open_at and not _is_word(before) and not after.isspace():
            open_at[marker] = index
    return spans


def _cut_inside(atom: str, room: int) -> str:
    """A code span or block too long to keep: its start, an ellipsis, and its fence again."""
    fence = "```" if atom.startswith("```") else "`"
    inner = atom[len(fence) : -len(fence)]
    keep = room - 2 * len(fence) - len(ELLIPSIS)
    if keep < 1:
        return ""
    inner = inner[:keep]
    # Never end inside an entity: `&am` would show as text.
    amp = inner.rfind("&")
    if amp != -1 and ";" not in inner[amp:]:
        inner = inner[:amp]
    return f"{fence}{inner}{ELLIPSIS}{fence}"


def truncate(text: str, limit: int) -> str:
    """`text` if it fits in `limit` characters, else a balanced cut of it ending in an ellipsis.

    Returns the same type it was given (a `Mrkdwn` stays one).
    """
    if len(text) <= limit:
        return text
    atoms = _atoms(text)
    spans = _closed_spans(text, atoms)
    reserve = len(ELLIPSIS) + len(MARKERS)  # room for the ellipsis and up to three closing markers
    room = max(limit - reserve, 0)
    kept: list[str] = []
    size = 0
    tail = ""
    for atom in atoms:
        if size + len(atom.text) > room:
            if atom.text.startswith("`") and len(atom.text) > 1 and size < room // 2:
                tail = _cut_inside(atom.text, room - size)
            break
        kept.append(atom.text)
        size += len(atom.text)
    count = len(kept)
    if not tail:
        newline = max((i for i, a in enumerate(kept) if a == "\n"), default=-1)
        if newline > 0 and sum(len(a) for a in kept[:newline]) >= LINE_BREAK_SHARE * room:
            kept, count = kept[:newline], newline
    closers = [atoms[i].text for i in sorted(spans, reverse=True) if i < count <= spans[i]]
    body = "".join(kept).rstrip()
    result = body + tail + ("" if tail else ELLIPSIS) + "".join(closers)
    result = result[:limit]
    return Mrkdwn(result) if isinstance(text, Mrkdwn) else result


def cut_plain(text: str, limit: int) -> str:
    """Plain text (which Slack shows as is) cut to `limit` characters with an ellipsis."""
    if len(text) <= limit:
        return text
    return text[: max(limit - len(ELLIPSIS), 0)].rstrip() + ELLIPSIS
