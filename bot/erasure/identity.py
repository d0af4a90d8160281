"""Who is being forgotten, as digests only: the bot never stores (or logs) the identifier itself.

An identifier is an email (compared case-insensitively), a `distinct_id` or a user id (exactly). The
bot keeps sha256 digests: of the normalised identifier (trimmed; an email also lowercased), of the
identifier as typed (trimmed: distinct ids and ids are exact), of each matched user row's key, and
of each email the listed columns are matched on. Every match in the database is a comparison of
digests computed by PostgreSQL (`sha256()`), so a request approved later, a re-application after a
restore or a purge of backups needs nothing else. Emails inside JSON are found by a pattern, then
compared by digest; a replaced email becomes `erased-<16 hex>`, the same stable token everywhere.
Each digest travels with the length of what it digests: PostgreSQL compares the length first and
computes a sha256 only for values of that length (most rows of a big table cost no hash at all).

Case-insensitive means Unicode's lower case on both sides: Python's `str.lower()` here, and in
PostgreSQL `lower()` under a Unicode collation the database has (`fold_collation`: ICU's root locale,
else PostgreSQL 18's or 17's builtin one), not the database's own collation, whose C locale would
lower only ASCII letters (`Zoë.ÜNAL@…` would then never match `zoë.ünal@…`). Emails in JSON and free
text may be internationalised: the pattern takes letters of any script.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Text,
    and_,
    case,
    cast,
    collate,
    column,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    text,
)
from sqlalchemy.types import ARRAY

# Letters of an email beyond ASCII (internationalised addresses): every script, combining marks
# included, but not the Latin-1 and general punctuation, spaces and CJK punctuation around them in
# prose («…», “…”, 、). Written with escapes both Python's `re` and PostgreSQL's ARE read alike.
_WIDE = (
    r"\u00C0-\u1FFF\u2070-\u2FFF\u3040-\uD7FF\uF900-\uFEFE"  # letters, marks, symbols, CJK, Hangul
    r"\uFF10-\uFF19\uFF21-\uFF3A\uFF41-\uFF5A\uFF66-\uFFDC"  # full-width digits and letters, half-width kana
    r"\U00010000-\U0010FFFF"  # beyond the BMP
)
# An email as found in free text or JSON; the same pattern works in Python and in PostgreSQL (ARE).
EMAIL_PATTERN = rf"[A-Za-z0-9._%+{_WIDE}-]+@[A-Za-z0-9.{_WIDE}-]+\.[A-Za-z{_WIDE}]{{2,}}"
EMAIL_IN_TEXT = re.compile(EMAIL_PATTERN)
LABEL_CHARS = 12  # the digest prefix shown in messages and audit lines
TOKEN_PREFIX = "erased-"  # noqa: S105 - the anonymised value's prefix, not a secret
TOKEN_CHARS = 16


def normalise(identifier: str) -> str:
    """How an identifier is compared: trimmed; an email (anything with `@`) also lowercased."""
    value = identifier.strip()
    return value.lower() if "@" in value else value


def digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def email_digest(email: str) -> str:
    return digest(email.strip().lower())


def label(value_digest: str) -> str:
    """`sha256:0123456789ab`: how a digest appears in messages and the audit trail."""
    return f"sha256:{value_digest[:LABEL_CHARS]}"


def identifier_label(identifier: str) -> str:
    """The label of a typed identifier (the audit line of a forget-user command shows this)."""
    return label(digest(normalise(identifier)))


def token(value_digest: str) -> str:
    """What an anonymised email becomes: stable, so the same person's rows still group together."""
    return f"{TOKEN_PREFIX}{value_digest[:TOKEN_CHARS]}"


ROW_CHARS = 8  # a UNIQUE column's token also carries this much of the digest of its row's key


def row_token(value_digest: str, row_key: str) -> str:
    """The token in a column under a UNIQUE index: `erased-<16 hex>-<8 hex of the row's key>`.

    Two rows of the same person (the email in two cases, or erased twice) stay distinct, and the
    person's rows still share the prefix."""
    return f"{token(value_digest)}-{digest(row_key)[:ROW_CHARS]}"


# Digests with the length of what they digest: {sha256 hex: characters}.
Digests = Mapping[str, int]


@dataclass(frozen=True)
class Person:
    """The identifier as digests: `normalised` (the receipt's), `exact` (distinct ids and ids), and lengths."""

    normalised: str
    exact: str
    is_email: bool
    length: int
    exact_length: int

    @classmethod
    def of(cls, identifier: str) -> Person:
        value = identifier.strip()
        norm = normalise(value)
        return cls(digest(norm), digest(value), "@" in value, len(norm), len(value))

    @property
    def label(self) -> str:
        return label(self.normalised)

    def to_json(self) -> dict[str, Any]:
        return {
            "normalised": self.normalised,
            "exact": self.exact,
            "is_email": self.is_email,
            "length": self.length,
            "exact_length": self.exact_length,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Person:
        return cls(
            str(data["normalised"]),
            str(data["exact"]),
            bool(data["is_email"]),
            int(data["length"]),
            int(data["exact_length"]),
        )


# -- the same digests in SQL --------------------------------------------------------------------

# Collations whose lower() is Unicode's (as Python's str.lower()), most faithful first.
FOLD_COLLATIONS = ("und-x-icu", "pg_unicode_fast", "pg_c_utf8")
_FOLD_QUERY = text(
    "SELECT collname FROM pg_collation WHERE collname = ANY(:names) AND collencoding IN"
    " (-1, (SELECT encoding FROM pg_database WHERE datname = current_database()))"
)


def fold_collation(conn: Connection) -> str | None:
    """The collation this database lowers emails under; None: its own (ASCII letters only under C)."""
    found = set(conn.execute(_FOLD_QUERY, {"names": list(FOLD_COLLATIONS)}).scalars())
    return next((name for name in FOLD_COLLATIONS if name in found), None)


def sql_fold(expr: Any, fold: str | None) -> ColumnElement[str]:
    """`lower(btrim(expr))` as `normalise` does it in Python: under the Unicode collation `fold`."""
    trimmed = func.btrim(cast(expr, Text))
    return func.lower(collate(trimmed, fold) if fold else trimmed)


def sql_digest(expr: Any) -> ColumnElement[str]:
    return func.encode(func.sha256(func.convert_to(cast(expr, Text), literal("UTF8"))), literal("hex"))


def sql_email_digest(expr: Any, fold: str | None) -> ColumnElement[str]:
    return sql_digest(sql_fold(expr, fold))


def sql_key_text(alias: Any, key: Sequence[str]) -> ColumnElement[str]:
    """A row's key as one text value (composite keys joined by U+001F), as `key_text` does in Python."""
    if len(key) == 1:
        return cast(alias.c[key[0]], Text)
    return func.concat_ws(literal("\x1f"), *(cast(alias.c[k], Text) for k in key))


def key_text(values: Sequence[Any]) -> str:
    return "\x1f".join(str(v) for v in values)


def sql_token(expr: Any, fold: str | None) -> ColumnElement[str]:
    """`erased-<16 hex>` of an email column's own value, computed by PostgreSQL."""
    return literal(TOKEN_PREFIX) + func.left(sql_email_digest(expr, fold), TOKEN_CHARS)


def sql_row_token(expr: Any, row_key: Any, fold: str | None) -> ColumnElement[str]:
    """`row_token` computed by PostgreSQL; `row_key` is `sql_key_text` of the row."""
    return sql_token(expr, fold) + literal("-") + func.left(sql_digest(row_key), ROW_CHARS)


def digest_in(value: Any, digests: Digests) -> ColumnElement[bool]:
    """`value` (text) has one of the digests; its sha256 computed only when its length is one of theirs."""
    if not digests:
        return false()
    lengths = sorted(set(digests.values()))
    return case((func.char_length(value).in_(lengths), sql_digest(value).in_(sorted(digests))), else_=false())


# The one character whose lower case is longer (U+0130 -> "i" + U+0307): any other value keeps its length.
_LONGER_IN_LOWER_CASE = "\u0130"


def email_matches(expr: Any, emails: Digests, fold: str | None) -> ColumnElement[bool]:
    """`expr` holds one of the emails, case-insensitively: only values of a matching length are lowered and hashed."""
    if not emails:
        return false()
    trimmed = func.btrim(cast(expr, Text))
    may_match = or_(
        func.char_length(trimmed).in_(sorted(set(emails.values()))),
        func.strpos(trimmed, literal(_LONGER_IN_LOWER_CASE)) > 0,
    )
    return case((may_match, sql_digest(sql_fold(expr, fold)).in_(sorted(emails))), else_=false())


def person_matches(
    alias: Any, person: Person, *, email: str | None, exact: Sequence[str], fold: str | None
) -> ColumnElement[bool]:
    """User rows the identifier names: its email column case-insensitively, the `exact` columns exactly (an
    email identifier matches them case-insensitively too: a distinct id that is an email)."""
    parts: list[ColumnElement[bool]] = []
    if email is not None and person.is_email:
        parts.append(email_matches(alias.c[email], {person.normalised: person.length}, fold))
    for c in exact:
        parts.append(digest_in(cast(alias.c[c], Text), {person.exact: person.exact_length}))
        if person.is_email:  # a distinct id that is an email is the person's email: any case
            parts.append(email_matches(alias.c[c], {person.normalised: person.length}, fold))
    return or_(*parts) if parts else false()


def json_mentions(expr: Any, email_digests: Collection[str], fold: str | None) -> ColumnElement[bool]:
    """A jsonb (or text) value mentions one of the emails, anywhere: keys, values, inside longer strings."""
    if not email_digests:
        return literal(False)
    as_text = cast(expr, Text)
    found = (
        func.regexp_matches(as_text, literal(EMAIL_PATTERN), literal("g"))
        .table_valued(column("m", ARRAY(Text)))
        .render_derived(name="found")
    )
    return and_(
        func.strpos(as_text, literal("@")) > 0,
        exists(
            select(literal(1)).select_from(found).where(sql_email_digest(found.c.m[1], fold).in_(sorted(email_digests)))
        ),
    )


def scrub_mentions(text: str, email_digests: Collection[str]) -> tuple[str, int]:
    """Replace every email in `text` whose digest is listed by its token; returns (text, replacements)."""
    replaced = 0

    def swap(match: re.Match[str]) -> str:
        nonlocal replaced
        found = email_digest(match.group(0))
        if found not in email_digests:
            return match.group(0)
        replaced += 1
        return token(found)

    return EMAIL_IN_TEXT.sub(swap, text), replaced
