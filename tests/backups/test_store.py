"""Backup destinations: S3 (moto server over HTTP) and a local directory, streamed and fail-closed."""

from __future__ import annotations

import hashlib
import os
import time

import boto3
import pytest

from bot.backups.store import PART_SIZE, BackupNotConfigured, BackupStoreError, LocalStore, S3Store, make_store
from bot.config import BackupSettings, ConfigError, load_settings

MB = 1024 * 1024


def chunks(total: int, size: int = MB, produced: list[int] | None = None):
    """Deterministic pseudo-random data, produced lazily; `produced` counts chunks handed out."""
    seed = hashlib.sha256(b"seed").digest()
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        block = (seed * (n // len(seed) + 1))[:n]
        sent += n
        if produced is not None:
            produced.append(sent)
        yield block


def digest(data_chunks) -> str:
    h = hashlib.sha256()
    for c in data_chunks:
        h.update(c)
    return h.hexdigest()


def test_stream_round_trip_list_size_delete(store):
    total = 2 * PART_SIZE + 3 * MB  # two full parts and a tail on S3
    produced: list[int] = []
    progress: list[tuple[int, int]] = []
    stored = store.upload(
        "dev/full/a.dump",
        chunks(total, produced=produced),
        content_type="application/octet-stream",
        on_progress=lambda n: progress.append((n, produced[-1])),
    )
    assert stored.size == total
    # Streaming: bytes were stored while the source still had data to give.
    assert progress and progress[0][1] < total
    assert [n for n, _ in progress] == sorted(n for n, _ in progress) and progress[-1][0] == total
    assert store.size("dev/full/a.dump") == total
    assert digest(store.read_chunks("dev/full/a.dump")) == digest(chunks(total))
    store.put_bytes("dev/scoped/r1/bk/manifest.json", b'{"a": 1}', content_type="application/json")
    assert store.read_bytes("dev/scoped/r1/bk/manifest.json") == b'{"a": 1}'
    assert {o.key for o in store.list("dev/")} == {"dev/full/a.dump", "dev/scoped/r1/bk/manifest.json"}
    assert [o.key for o in store.list("dev/scoped/")] == ["dev/scoped/r1/bk/manifest.json"]
    store.delete("dev/full/a.dump")
    assert store.size("dev/full/a.dump") is None


def test_a_failing_source_leaves_nothing_behind(store):
    def broken():
        yield from chunks(PART_SIZE + MB)
        raise RuntimeError("pg_dump died")

    with pytest.raises(RuntimeError):
        store.upload("dev/full/broken.dump", broken(), content_type="application/octet-stream")
    assert store.size("dev/full/broken.dump") is None
    assert list(store.list("")) == []
    if isinstance(store, S3Store):
        uploads = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
        assert uploads == []  # aborted, not left to accumulate


def test_s3_keys_live_under_the_prefix(s3_store):
    s3_store.put_bytes("x/y.json", b"{}", content_type="application/json")
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_store.bucket)["Contents"]]
    assert keys == ["team/x/y.json"]
    assert s3_store.location("x/y.json") == "s3://mcp-ops-backups/team/x/y.json"


def test_s3_sse_kms(make_bucket):
    key_id = boto3.client("kms").create_key(Description="backups")["KeyMetadata"]["KeyId"]
    store = S3Store(make_bucket("kms-backups"), kms_key_id=key_id)
    store.put_bytes("small.json", b"{}", content_type="application/json")
    store.upload("big.dump", chunks(PART_SIZE + MB), content_type="application/octet-stream")
    for key in ("small.json", "big.dump"):
        head = store.head(key)
        assert head["ServerSideEncryption"] == "aws:kms"
        assert key_id in head["SSEKMSKeyId"]


def test_missing_bucket_fails_closed_with_a_short_reason(aws):
    store = S3Store("no-such-bucket-here")
    with pytest.raises(BackupStoreError) as caught:
        store.upload("dev/full/a.dump", chunks(3 * MB), content_type="application/octet-stream")
    assert "NoSuchBucket" in caught.value.message
    assert "s3://no-such-bucket-here/dev/full/a.dump" in caught.value.message
    assert "testing" not in caught.value.message  # no credential in the message


def test_local_store_write_failure_is_a_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = LocalStore(blocker)
    with pytest.raises(BackupStoreError) as caught:
        store.put_bytes("dev/a.json", b"{}", content_type="application/json")
    assert "write failed" in caught.value.message


def test_local_retention_prunes_old_files_only(local_store):
    local_store.put_bytes("dev/full/old.dump", b"old", content_type="x")
    local_store.put_bytes("dev/full/new.dump", b"new", content_type="x")
    old = local_store.root / "dev/full/old.dump"
    past = time.time() - 10 * 86_400
    os.utime(old, (past, past))
    assert local_store.prune(7) == ["dev/full/old.dump"]
    assert [o.key for o in local_store.list("")] == ["dev/full/new.dump"]


def test_destination_settings(tmp_path):
    base = {"BOT_DATABASE_URL": "postgresql://u@h/db", "DATABASE_URL_DEV": "postgresql://u@h/dev"}
    settings = load_settings({**base, "BACKUP_DIR": str(tmp_path)}, require_slack=False)
    assert isinstance(make_store(settings.backup), LocalStore)
    s3 = load_settings(
        {**base, "BACKUP_BUCKET": "my-bucket", "BACKUP_PREFIX": "/ops/backups/", "BACKUP_KMS_KEY_ID": "alias/x"},
        require_slack=False,
    ).backup
    assert (s3.bucket, s3.prefix, s3.kms_key_id) == ("my-bucket", "ops/backups/", "alias/x")
    assert s3.destination == "s3://my-bucket/ops/backups/ (SSE-KMS)"
    with pytest.raises(BackupNotConfigured):
        make_store(BackupSettings())
    for bad, name in (
        ({"BACKUP_BUCKET": "Not_A_Bucket"}, "BACKUP_BUCKET"),
        ({"BACKUP_KMS_KEY_ID": "k"}, "BACKUP_KMS_KEY_ID"),
        ({"BACKUP_BUCKET": "my-bucket", "BACKUP_RETENTION_DAYS": "7"}, "BACKUP_RETENTION_DAYS"),
        ({"BACKUP_PREFIX": "a/../b"}, "BACKUP_PREFIX"),
    ):
        with pytest.raises(ConfigError) as caught:
            load_settings({**base, **bad}, require_slack=False)
        assert str(caught.value).startswith(name)
