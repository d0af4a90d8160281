"""The forgotten person in scoped backups: which backups hold their rows, and rewriting them without.

A backup file is PostgreSQL COPY text. A row belongs to the person when it is one of their user rows
(identifier or key digest), holds their email in a listed column, references one of their user rows
by key, or references (through any foreign key of the live catalog) a row of the backup that belongs
to them: the same closure the erasure's scope follows, computed on the backup's own rows, parents first.
Rows of `anonymise`-mode tables are rewritten (email -> token, listed columns cleared) rather than
dropped, and emails in listed JSON columns are replaced. A purge writes the changed files under new
names, then the new manifest (the switch), then removes the old files; a backup left with no rows is
deleted whole. Everything compares digests: the identifier is never needed.
"""

from __future__ import annotations

import hashlib
import json
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from bot.backups.index import BackupRow
from bot.backups.manifest import COMPRESSION_LEVEL, MANIFEST_NAME, Manifest, ManifestStep, load_manifest
from bot.backups.restore import restore_order
from bot.backups.store import BackupStore
from bot.deletion.catalog import Catalog, ForeignKey, TableRef
from bot.erasure import copytext
from bot.erasure.identity import digest, email_digest, key_text, row_token, scrub_mentions, token
from bot.erasure.plan import ErasureTarget
from bot.erasure.targets import IdentityTable, Targets

CHUNK = 1024 * 1024


@dataclass
class BackupFinding:
    backup_id: str
    location: str
    created_at: str
    slug: str | None
    request_id: str | None
    dropped: dict[str, int] = field(default_factory=dict)  # rows of the person, per table
    rewritten: dict[str, int] = field(default_factory=dict)  # rows anonymised or with an email replaced
    action: str = "found"  # found | rewritten | deleted

    @property
    def rows(self) -> int:
        return sum(self.dropped.values()) + sum(self.rewritten.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "location": self.location,
            "created_at": self.created_at,
            "slug": self.slug,
            "request_id": self.request_id,
            "rows": self.rows,
            "action": self.action,
        }


@dataclass
class _Rules:
    step: ManifestStep
    table: TableRef
    at: dict[str, int]
    users: bool
    identity: IdentityTable | None
    json: list[str]
    parents: list[ForeignKey]  # foreign keys to tables of this backup (the closure)
    user_refs: list[ForeignKey]  # foreign keys to the user table's key (its rows may not be in the backup)

    @property
    def relevant(self) -> bool:
        return bool(self.users or self.identity or self.json or self.parents or self.user_refs)


class BackupScanner:
    """Reads (and, for a purge, rewrites) one scoped backup for one erasure target."""

    def __init__(
        self, store: BackupStore, catalog: Catalog, targets: Targets, target: ErasureTarget, emails: dict[str, int]
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.targets = targets
        self.target = target
        self.emails = emails
        self.user_keys = set(target.user_keys)
        self._digests: dict[str, str] = {}

    def _digest(self, value: str) -> str:
        found = self._digests.get(value)
        if found is None:
            if len(self._digests) > 500_000:
                self._digests.clear()
            found = self._digests[value] = digest(value)
        return found

    def _rules(self, manifest: Manifest) -> list[_Rules]:
        present = {TableRef(s.schema, s.table) for s in manifest.steps}
        users_key = self.catalog.table(self.targets.users).key if self.targets.users in self.catalog.tables else ()
        rules = []
        for step in restore_order(manifest):
            ref = TableRef(step.schema, step.table)
            at = {c: i for i, c in enumerate(step.columns)}
            has = lambda cols, at=at: all(c in at for c in cols)  # noqa: E731
            fks = [fk for fk in self.catalog.foreign_keys if fk.child == ref and has(fk.child_columns)]
            identity = self.targets.identity_table(ref)
            rules.append(
                _Rules(
                    step=step,
                    table=ref,
                    at=at,
                    users=ref == self.targets.users and step.action == "delete",
                    identity=identity if identity is not None and has(identity.columns) else None,
                    json=[j.column for j in self.targets.json if j.table == ref and j.column in at],
                    parents=[fk for fk in fks if fk.parent in present],
                    user_refs=[
                        fk for fk in fks if fk.parent == self.targets.users and tuple(fk.parent_columns) == users_key
                    ],
                )
            )
        return rules

    def _lines(self, manifest: Manifest, step: ManifestStep) -> Iterator[bytes]:
        return copytext.gunzip_lines(self.store.read_chunks(manifest.file_key(step)))

    def _is_person(self, rules: _Rules, fields: list[bytes]) -> bool:
        person = self.target.person
        at = rules.at
        key = tuple(copytext.decode(fields[at[k]]) for k in rules.step.primary_key)
        if self._digest(key_text(key)) in self.user_keys:
            return True
        email_col = self.targets.user_email
        if email_col in at and person.is_email:
            value = copytext.decode(fields[at[email_col]])
            if value is not None and email_digest(value) == person.normalised:
                return True
        for col in self.targets.user_exact:
            if col in at:
                value = copytext.decode(fields[at[col]])
                if value is not None and self._digest(value) == person.exact:
                    return True
                if value is not None and person.is_email and email_digest(value) == person.normalised:
                    return True
        return False

    def _fate(self, rules: _Rules, fields: list[bytes], removed: dict[tuple[TableRef, tuple[str, ...]], set]) -> str:
        """`drop`, `null:<cols>` (a SET NULL reference to a dropped row), `identity`, or `keep`."""
        at = rules.at
        if rules.users and self._is_person(rules, fields):
            return "drop"
        for fk in rules.parents + rules.user_refs:
            values = tuple(copytext.decode(fields[at[c]]) for c in fk.child_columns)
            if None in values:
                continue
            gone = values in removed.get((fk.parent, tuple(fk.parent_columns)), ())
            if not gone and fk in rules.user_refs:
                gone = self._digest(key_text(values)) in self.user_keys
            if gone:
                if fk.on_delete == "set null" and rules.step.action == "delete":
                    return "null:" + ",".join(fk.set_columns)
                return "drop"
        if rules.identity is not None:
            for col in rules.identity.columns:
                value = copytext.decode(fields[at[col]])
                if value is not None and email_digest(value) in self.emails:
                    return "drop" if rules.identity.mode == "delete" else "identity"
        return "keep"

    def _rewrite(self, rules: _Rules, fields: list[bytes], fate: str) -> tuple[list[bytes], bool]:
        """The row with the person taken out of it; whether anything changed."""
        at = rules.at
        out = list(fields)
        changed = False
        if fate.startswith("null:"):
            for col in fate[5:].split(","):
                if col in at:
                    out[at[col]] = copytext.NULL
                    changed = True
        if fate == "identity" and rules.identity is not None:
            for col in rules.identity.columns:
                value = copytext.decode(fields[at[col]])
                if value is not None and email_digest(value) in self.emails:
                    if col in rules.identity.unique:
                        key = self.catalog.table(rules.table).key
                        row_key = key_text([copytext.decode(fields[at[k]]) for k in key])
                        out[at[col]] = copytext.encode(row_token(email_digest(value), row_key))
                    else:
                        out[at[col]] = copytext.encode(token(email_digest(value)))
                    changed = True
            for cleared in rules.identity.clear:
                if cleared.column in at:
                    out[at[cleared.column]] = copytext.NULL if cleared.nullable else b""
                    changed = True
        for col in rules.json:
            value = copytext.decode(out[at[col]])
            if value is not None and "@" in value:
                scrubbed, replaced = scrub_mentions(value, self.emails)
                if replaced:
                    out[at[col]] = copytext.encode(scrubbed)
                    changed = True
        return out, changed

    def _needed_refs(self, rules: list[_Rules]) -> dict[TableRef, set[tuple[str, ...]]]:
        needed: dict[TableRef, set[tuple[str, ...]]] = {}
        for rule in rules:
            for fk in rule.parents:
                needed.setdefault(fk.parent, set()).add(tuple(fk.parent_columns))
        return needed

    def scan(self, manifest: Manifest) -> tuple[BackupFinding, dict[int, tuple[set[int], dict[int, str]]]]:
        """Which rows of each file belong to the person (dropped) or change (rewritten), by line number."""
        m = manifest
        finding = BackupFinding(m.backup_id, m.key, m.created_at, m.slug, m.request_id)
        all_rules = self._rules(manifest)
        needed = self._needed_refs(all_rules)
        removed: dict[tuple[TableRef, tuple[str, ...]], set] = {}
        changes: dict[int, tuple[set[int], dict[int, str]]] = {}
        for rules in all_rules:
            if not rules.relevant:
                continue
            drop: set[int] = set()
            rewrite: dict[int, str] = {}  # line -> its fate, for the rewrite
            while True:  # a self-reference reaches further on each pass; usually one pass
                before = len(drop)
                for number, line in enumerate(self._lines(manifest, rules.step)):
                    if number in drop:
                        continue
                    fields = line.split(b"\t")
                    fate = self._fate(rules, fields, removed)
                    if fate == "drop":
                        drop.add(number)
                        rewrite.pop(number, None)
                        for cols in needed.get(rules.table, ()):
                            if all(c in rules.at for c in cols):
                                values = tuple(copytext.decode(fields[rules.at[c]]) for c in cols)
                                removed.setdefault((rules.table, cols), set()).add(values)
                    elif self._rewrite(rules, fields, fate)[1]:
                        rewrite[number] = fate
                if len(drop) == before or not any(fk.parent == rules.table for fk in rules.parents):
                    break
            label = rules.step.qualified + ("" if rules.step.action == "delete" else f" ({rules.step.action})")
            if drop:
                finding.dropped[label] = len(drop)
            if rewrite:
                finding.rewritten[label] = len(rewrite)
            if drop or rewrite:
                changes[rules.step.order] = (drop, rewrite)
        return finding, changes

    def purge(self, manifest: Manifest, erasure_id: int) -> BackupFinding:
        """Rewrite the files holding the person (or delete the backup if nothing else is left in it)."""
        finding, changes = self.scan(manifest)
        if not changes:
            return finding
        remaining = sum(s.rows for s in manifest.steps) - sum(finding.dropped.values())
        old_keys = [manifest.file_key(s) for s in manifest.steps] + [manifest.key]
        if remaining == 0:
            for key in old_keys:
                self.store.delete(key)
            finding.action = "deleted"
            return finding
        document = json.loads(self.store.read_bytes(manifest.key))
        new = self.write_changed(manifest, changes, self.store, f"erased-{erasure_id}")
        try:
            for entry in document["steps"]:
                step = new.get(int(entry["order"]))
                if step is not None:
                    entry.update(
                        file=step.file,
                        rows=step.rows,
                        bytes=step.bytes,
                        sha256=step.sha256,
                        stored_bytes=step.stored_bytes,
                    )
            document.setdefault("purged", []).append(
                {"erasure": erasure_id, "person": self.target.person.label, "rows": finding.rows}
            )
            body = json.dumps(document, indent=2).encode()
            self.store.put_bytes(manifest.key, body, content_type="application/json")  # the switch
        except BaseException:
            for step in new.values():
                self.store.delete(manifest.file_key(step))
            raise
        for step in manifest.steps:
            if step.order in changes:
                self.store.delete(manifest.file_key(step))
        finding.action = "rewritten"
        return finding

    def without(self, manifest: Manifest, scratch: BackupStore) -> tuple[Manifest, BackupFinding]:
        """The backup as it would be purged, its changed files written to `scratch` (the backup stays as it is)."""
        finding, changes = self.scan(manifest)
        if not changes:
            return manifest, finding
        new = self.write_changed(manifest, changes, scratch, f"without-{uuid.uuid4().hex[:8]}")
        return replace(manifest, steps=tuple(new.get(s.order, s) for s in manifest.steps)), finding

    def write_changed(
        self, manifest: Manifest, changes: dict[int, tuple[set[int], dict[int, str]]], into: BackupStore, suffix: str
    ) -> dict[int, ManifestStep]:
        """The changed files, written to `into` beside the manifest under new names: their new steps, by order."""
        rules = {r.step.order: r for r in self._rules(manifest)}
        new: dict[int, ManifestStep] = {}
        try:
            for step in manifest.steps:
                if step.order not in changes:
                    continue
                drop, rewrite = changes[step.order]
                name = step.file.removesuffix(".copy.gz") + f".{suffix}.copy.gz"
                key = manifest.key.rsplit("/", 1)[0] + "/" + name
                new[step.order] = replace(step, file=name)
                rows, raw_bytes, sha, stored = self._write_file(manifest, rules[step.order], drop, rewrite, key, into)
                new[step.order] = replace(step, file=name, rows=rows, bytes=raw_bytes, sha256=sha, stored_bytes=stored)
        except BaseException:
            for step in new.values():
                into.delete(manifest.file_key(step))
            raise
        return new

    def _write_file(
        self, manifest: Manifest, rules: _Rules, drop: set[int], rewrite: dict[int, str], key: str, into: BackupStore
    ) -> tuple[int, int, str, int]:
        counted = {"rows": 0, "bytes": 0}
        sha = hashlib.sha256()

        def chunks() -> Iterator[bytes]:
            compressor = zlib.compressobj(COMPRESSION_LEVEL, zlib.DEFLATED, 31)
            buffer = bytearray()
            for number, line in enumerate(self._lines(manifest, rules.step)):
                if number in drop:
                    continue
                if number in rewrite:
                    line = b"\t".join(self._rewrite(rules, line.split(b"\t"), rewrite[number])[0])
                buffer += line + b"\n"
                counted["rows"] += 1
                if len(buffer) >= CHUNK:
                    sha.update(buffer)
                    counted["bytes"] += len(buffer)
                    yield compressor.compress(bytes(buffer))
                    buffer.clear()
            sha.update(buffer)
            counted["bytes"] += len(buffer)
            yield compressor.compress(bytes(buffer)) + compressor.flush()

        stored = into.upload(key, chunks(), content_type="application/gzip")
        return counted["rows"], counted["bytes"], sha.hexdigest(), stored.size


def scoped_manifests(store: BackupStore, rows: list[BackupRow]) -> Iterator[Manifest]:
    for row in rows:
        if row.kind == "scoped" and row.state == "complete" and row.location and row.location.endswith(MANIFEST_NAME):
            yield load_manifest(store, row.location)
