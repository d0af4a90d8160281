"""Long output: the message shows the head of a list and counts the rest; the file holds all of it.

Every list a renderer builds goes through `head`: at most `limit` lines, and never more text than
`budget` characters, so a message stays well inside Slack's limits whatever the data (150 tables,
100 servers, 50 queries with their text). What is left out is counted on the last line, which says
where the rest is: the attached file when there is one, else how to narrow the command.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bot.slacktext.blocks import Block, block_chars
from bot.slacktext.mrkdwn import Mrkdwn

LIST_BUDGET = 6_000  # characters of list lines in one message: half of the ~12,000 Slack takes in blocks
ITEMS_BUDGET = 9_000  # characters of items with their buttons (confirm dialogs count too): room left for the rest


def head(
    lines: Sequence[Mrkdwn], *, limit: int, rest: Callable[[int], Mrkdwn], budget: int = LIST_BUDGET
) -> tuple[list[Mrkdwn], int]:
    """The first lines that fit (`limit` lines, `budget` characters), then `rest(n)` for the n left out.

    Returns the lines to show and how many were left out.
    """
    shown: list[Mrkdwn] = []
    size = 0
    for line in lines[:limit]:
        if shown and size + len(line) + 1 > budget:
            break
        shown.append(line)
        size += len(line) + 1
    left = len(lines) - len(shown)
    return ([*shown, rest(left)] if left else shown), left


def head_items(items: Sequence[list[Block]], *, limit: int, budget: int = ITEMS_BUDGET) -> tuple[list[Block], int]:
    """The blocks of the first items that fit (`limit` items, `budget` characters as Slack counts them, a
    button's confirm dialog included), and how many items that is. For lists where each item is a section
    with its own buttons."""
    kept: list[Block] = []
    size = shown = 0
    for blocks in items[:limit]:
        cost = block_chars(blocks)
        if shown and size + cost > budget:
            break
        kept += blocks
        size += cost
        shown += 1
    return kept, shown


def in_turn(groups: Sequence[str]) -> list[int]:
    """Indexes of a list whose items belong to `groups`, taken from each group in turn (the first of each,
    then the second of each, ...): a head cut from this order leaves no group out while others have many."""
    rank: dict[str, int] = {}
    keyed = []
    for index, group in enumerate(groups):
        keyed.append((rank.get(group, 0), index))
        rank[group] = rank.get(group, 0) + 1
    return [index for _, index in sorted(keyed)]


def as_plain(text: str) -> str:
    """A mrkdwn line as a text file shows it: entities back to `<`, `>`, `&` (a file is not parsed)."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
