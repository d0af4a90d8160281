"""SQL text fit to show: every literal blanked by PostgreSQL's own lexer, or nothing shown at all.

Query text from `pg_stat_activity` is whatever a client sent, secrets in literals included
(`... WHERE token = 'xoxb-...'`). Regular expressions cannot lex SQL: one `E'\\''` escaped quote,
a dollar-quoted body or a comment holding a quote, and everything after it passes as code.
pglast binds libpg_query, PostgreSQL's own scanner: its tokens say exactly which spans are
string, bit-string and numeric constants; those become `'…'` / `…`, comments are dropped, and
only tokens are shown. It fails closed: text the scanner refuses is not shown. Text cut short by
PostgreSQL (`track_activity_query_size`) ends inside an unterminated literal or comment; what
lexes before it is shown, then `'…'`. The scanner reads `'...'` as PostgreSQL does with
standard_conforming_strings on (the default since 9.1); a server or client with it off reads a backslash
in such a literal as an escape (`'it\\'s secret'` is one literal there, and the scanner would end it
after the backslash and show the rest): text with a plain literal holding a backslash, which the two
settings end in different places, is not shown.
"""

from __future__ import annotations

from pglast.parser import ParseError, scan

STRING_TOKENS = frozenset({"SCONST", "USCONST", "BCONST", "XCONST"})
NUMBER_TOKENS = frozenset({"ICONST", "FCONST"})
COMMENT_TOKENS = frozenset({"SQL_COMMENT", "C_COMMENT"})
HIDDEN = "(query text hidden: could not be parsed)"


def _shown(sql: str, name: str, start: int, end: int) -> str:
    if name in STRING_TOKENS:
        return "'…'"
    if name in NUMBER_TOKENS:
        return "…"
    return sql[start : end + 1]


def _blank(sql: str) -> str | None:
    """The tokens of `sql` with literals blanked and comments dropped, on one line; None if a gap between
    tokens holds anything but whitespace. Raises ParseError when the scanner refuses the text."""
    parts: list[str] = []
    space = False
    previous_end = 0
    for token in scan(sql):
        gap = sql[previous_end : token.start]
        if gap.strip():
            return None  # something the scanner did not return as a token: do not guess
        previous_end = token.end + 1
        if token.name == "SCONST" and sql[token.start] == "'" and "\\" in sql[token.start : token.end + 1]:
            return None  # its end depends on standard_conforming_strings: do not guess
        if token.name in COMMENT_TOKENS:
            space = True
            continue
        if parts and (gap or space):
            parts.append(" ")
        space = False
        parts.append(_shown(sql, token.name, token.start, token.end))
    if sql[previous_end:].strip():
        return None
    return "".join(parts)


def blank_literals(sql: str) -> str | None:
    """`sql` with every literal blanked and no comment, or None when PostgreSQL's lexer refuses it."""
    try:
        return _blank(sql)
    except ParseError as exc:
        location = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else -1
        if "unterminated" not in str(exc.args[0]) or not 0 <= location < len(sql):
            return None
    except ValueError:
        return None
    try:
        head = _blank(sql[:location])
    except (ParseError, ValueError):
        return None
    return None if head is None else f"{head} '…'".strip()
