"""Where backups go: an S3 bucket, or a local directory for the demo and tests.

Both stores take data as an iterable of byte chunks and never hold a whole file: S3
uploads are multipart with one part buffered at a time, and the local store writes to a
`.partial` file that is renamed only when complete. A failed upload leaves nothing behind
that could be mistaken for a backup, and raises `BackupStoreError` (fail closed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from bot.config import BackupSettings
from bot.errors import UserFacingError

log = logging.getLogger(__name__)

PART_SIZE = 8 * 1024 * 1024  # S3 needs >= 5 MiB for every part but the last
READ_CHUNK = 1024 * 1024


class BackupStoreError(UserFacingError):
    """The destination refused a read or write; the message names the store, never a credential."""

    outcome = "error"


class BackupNotConfigured(UserFacingError):
    outcome = "unavailable"


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    modified: datetime | None = None


# Called with the number of bytes stored so far, as parts land.
ProgressCallback = Callable[[int], None]


class BackupStore(Protocol):
    """A flat key space of immutable files."""

    description: str

    def upload(
        self, key: str, chunks: Iterable[bytes], *, content_type: str, on_progress: ProgressCallback | None = None
    ) -> StoredObject: ...

    def put_bytes(self, key: str, data: bytes, *, content_type: str) -> StoredObject: ...

    def read_chunks(self, key: str) -> Iterator[bytes]: ...

    def read_bytes(self, key: str, *, limit: int = 16 * 1024 * 1024) -> bytes: ...

    def size(self, key: str) -> int | None: ...

    def list(self, prefix: str) -> Iterator[StoredObject]: ...

    def delete(self, key: str) -> None: ...

    def location(self, key: str) -> str: ...


def _check_key(key: str) -> str:
    path = PurePosixPath(key)
    if not key or path.is_absolute() or any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"not a relative backup key: {key!r}")
    return key


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


class LocalStore:
    """Files under one directory; keys are relative paths."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.description = f"directory {self.root}"

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def location(self, key: str) -> str:
        return str(self._path(key))

    def _fail(self, action: str, key: str, exc: OSError) -> BackupStoreError:
        return BackupStoreError(f"the backup {action} failed in {self.description} ({key}: {exc.strerror or exc})")

    def upload(
        self, key: str, chunks: Iterable[bytes], *, content_type: str, on_progress: ProgressCallback | None = None
    ) -> StoredObject:
        path = self._path(key)
        partial = path.with_name(path.name + ".partial")
        written = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
                    written += len(chunk)
                    if on_progress is not None:
                        on_progress(written)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, path)
        except OSError as exc:
            _remove_quietly(partial)
            raise self._fail("write", key, exc) from exc
        except BaseException:
            _remove_quietly(partial)
            raise
        return StoredObject(key, written, datetime.now(UTC))

    def put_bytes(self, key: str, data: bytes, *, content_type: str) -> StoredObject:
        return self.upload(key, [data], content_type=content_type)

    def read_chunks(self, key: str) -> Iterator[bytes]:
        try:
            handle = open(self._path(key), "rb")  # noqa: SIM115 - closed by the generator below
        except OSError as exc:
            raise self._fail("read", key, exc) from exc
        with handle:
            while chunk := handle.read(READ_CHUNK):
                yield chunk

    def read_bytes(self, key: str, *, limit: int = 16 * 1024 * 1024) -> bytes:
        data = b"".join(self.read_chunks(key))
        if len(data) > limit:
            raise BackupStoreError(f"{key} is larger than expected ({len(data)} bytes)")
        return data

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._fail("read", key, exc) from exc

    def list(self, prefix: str) -> Iterator[StoredObject]:
        base = self.root
        if not base.exists():
            return
        for path in sorted(base.rglob("*")):
            if not path.is_file() or path.name.endswith(".partial"):
                continue
            key = path.relative_to(base).as_posix()
            if key.startswith(prefix):
                stat = path.stat()
                yield StoredObject(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC))

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise self._fail("delete", key, exc) from exc

    def prune(self, older_than_days: int, *, now: float | None = None) -> list[str]:
        """Delete files older than the retention; S3 does this with a lifecycle rule instead."""
        cutoff = (time.time() if now is None else now) - older_than_days * 86_400
        removed: list[str] = []
        for item in list(self.list("")):
            if item.modified is not None and item.modified.timestamp() < cutoff:
                self.delete(item.key)
                removed.append(item.key)
        for directory in sorted((p for p in self.root.rglob("*") if p.is_dir()), reverse=True):
            with contextlib.suppress(OSError):
                directory.rmdir()  # only empty ones go
        return removed


def _client_error(exc: ClientError | BotoCoreError) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return str(error.get("Code") or error.get("Message") or "error")
    return type(exc).__name__


class S3Store:
    """A bucket (and prefix), through the default credential chain (env, profile, role, AWS_ENDPOINT_URL)."""

    def __init__(self, bucket: str, *, prefix: str = "", kms_key_id: str | None = None, client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.kms_key_id = kms_key_id
        self.client = client or boto3.session.Session().client(
            "s3",
            config=BotoConfig(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=120),
        )
        self.description = f"s3://{bucket}/{prefix}"

    def _key(self, key: str) -> str:
        return self.prefix + _check_key(key)

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _fail(self, action: str, key: str, exc: ClientError | BotoCoreError) -> BackupStoreError:
        return BackupStoreError(f"the backup {action} failed at {self.location(key)} ({_client_error(exc)})")

    def _encryption(self) -> dict[str, str]:
        if not self.kms_key_id:
            return {}
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}

    def put_bytes(self, key: str, data: bytes, *, content_type: str) -> StoredObject:
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type, **self._encryption()
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("write", key, exc) from exc
        return StoredObject(key, len(data), datetime.now(UTC))

    def upload(
        self, key: str, chunks: Iterable[bytes], *, content_type: str, on_progress: ProgressCallback | None = None
    ) -> StoredObject:
        """Multipart upload, one part in memory; a small file is a single PUT."""
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        stored = 0
        full_key = self._key(key)
        try:
            for chunk in chunks:
                buffer += chunk
                if len(buffer) >= PART_SIZE:
                    if upload_id is None:
                        upload_id = self.client.create_multipart_upload(
                            Bucket=self.bucket, Key=full_key, ContentType=content_type, **self._encryption()
                        )["UploadId"]
                    stored += self._upload_part(full_key, upload_id, parts, bytes(buffer))
                    buffer.clear()
                    if on_progress is not None:
                        on_progress(stored)
            if upload_id is None:
                self.client.put_object(
                    Bucket=self.bucket, Key=full_key, Body=bytes(buffer), ContentType=content_type, **self._encryption()
                )
                stored = len(buffer)
            else:
                if buffer:
                    stored += self._upload_part(full_key, upload_id, parts, bytes(buffer))
                self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=full_key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
            if on_progress is not None:
                on_progress(stored)
        except (ClientError, BotoCoreError) as exc:
            self._abort(full_key, upload_id)
            raise self._fail("upload", key, exc) from exc
        except BaseException:
            self._abort(full_key, upload_id)
            raise
        return StoredObject(key, stored, datetime.now(UTC))

    def _upload_part(self, full_key: str, upload_id: str, parts: list[dict[str, Any]], body: bytes) -> int:
        number = len(parts) + 1
        response = self.client.upload_part(
            Bucket=self.bucket, Key=full_key, UploadId=upload_id, PartNumber=number, Body=body
        )
        parts.append({"PartNumber": number, "ETag": response["ETag"]})
        return len(body)

    def _abort(self, full_key: str, upload_id: str | None) -> None:
        if upload_id is None:
            return
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id)
        except (ClientError, BotoCoreError) as exc:
            # A lifecycle rule (AbortIncompleteMultipartUpload) cleans what this could not.
            log.warning("could not abort a multipart upload", extra={"error": _client_error(exc)})

    def read_chunks(self, key: str) -> Iterator[bytes]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            yield from body.iter_chunks(READ_CHUNK)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("read", key, exc) from exc

    def read_bytes(self, key: str, *, limit: int = 16 * 1024 * 1024) -> bytes:
        data = b"".join(self.read_chunks(key))
        if len(data) > limit:
            raise BackupStoreError(f"{key} is larger than expected ({len(data)} bytes)")
        return data

    def head(self, key: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=self._key(key)))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._fail("read", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("read", key, exc) from exc

    def size(self, key: str) -> int | None:
        head = self.head(key)
        return None if head is None else int(head["ContentLength"])

    def list(self, prefix: str) -> Iterator[StoredObject]:
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    yield StoredObject(item["Key"][len(self.prefix) :], int(item["Size"]), item.get("LastModified"))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("listing", prefix or "/", exc) from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("delete", key, exc) from exc


def make_store(settings: BackupSettings) -> BackupStore:
    """The configured destination; raises BackupNotConfigured when there is none (fail closed)."""
    if settings.bucket:
        return S3Store(settings.bucket, prefix=settings.prefix, kms_key_id=settings.kms_key_id)
    if settings.directory is not None:
        return LocalStore(settings.directory)
    raise BackupNotConfigured("no backup destination is configured: set BACKUP_BUCKET (S3) or BACKUP_DIR")
