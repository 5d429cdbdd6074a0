"""The four small storage interfaces the service needs; `aws.py` and `local.py` implement each of them.

Records are plain JSON-like dicts (str/int/float/bool/list/dict); `jobs.py` and `auth.py` own their shape.
Infrastructure failures (network, throttling, outage) raise `BackendError`; a failed condition is a
normal return value (False), never an exception.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Mapping, Protocol

from diarizer_service.errors import BackendError

__all__ = ["BackendError", "BlobInfo", "BlobNotFound", "BlobTooLarge", "BlobStore", "JobQueue", "JobTable", "KeyStore",
           "VoiceprintStore", "Backends"]


class BlobNotFound(KeyError):
    """No object under that key."""


class BlobTooLarge(ValueError):
    """The object is over the `max_bytes` the reader allows (found out before it is read into memory)."""


@dataclass(frozen=True)
class BlobInfo:
    size: int
    etag: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)  # user metadata, keys lower-case, no x-amz-meta-


class BlobStore(Protocol):
    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream",
            metadata: Mapping[str, str] | None = None) -> None: ...

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        """Raises BlobNotFound; BlobTooLarge when the object has more than `max_bytes` bytes (never read whole:
        an object may be replaced by a bigger one at any time, e.g. a presigned upload URL used again)."""
        ...

    def head(self, key: str) -> BlobInfo | None: ...

    def current_etag(self, key: str) -> str | None:
        """The object's etag as the bucket's listing shows it (None: no such object): the version a function that
        may list the bucket but not read the object (the dead-letter function and incoming/ audio) can learn."""
        ...

    def delete(self, key: str) -> None: ...

    def presign_put(self, key: str, expires_seconds: int) -> str: ...


class JobQueue(Protocol):
    def send(self, body: dict) -> str: ...  # returns the message id


class JobTable(Protocol):
    def create(self, item: dict) -> bool: ...  # False when an item with this job_id already exists

    def get(self, job_id: str) -> dict | None: ...

    def update(self, job_id: str, changes: dict, *, expected_status: Collection[str] | None = None) -> bool:
        """Set `changes` (a None value removes the attribute). With `expected_status`, only when the current
        status is one of them; returns False when that condition fails or the item does not exist."""
        ...

    def delete(self, job_id: str, *, expected: Mapping[str, str] | None = None) -> bool:
        """With `expected`, only when each named attribute currently has that value; returns False when that
        condition fails or the item does not exist (True otherwise)."""
        ...

    def list_due(self, now: float, limit: int) -> list[dict]:
        """Up to `limit` items whose `outbox` is set and `outbox_at` <= now, oldest first (see jobs.py)."""
        ...


class KeyStore(Protocol):
    def put(self, item: dict) -> None: ...

    def get(self, key_hash: str) -> dict | None: ...

    def list(self) -> list[dict]: ...

    def update(self, key_hash: str, changes: dict) -> None: ...


class VoiceprintStore(Protocol):
    """Enrolled voiceprints, partitioned by the API key that owns them (biometric data: never logged)."""

    def put(self, item: dict) -> None: ...  # item has key_id and voiceprint_id

    def get(self, key_id: str, voiceprint_id: str) -> dict | None: ...

    def list(self, key_id: str) -> list[dict]: ...

    def delete(self, key_id: str, voiceprint_id: str) -> bool: ...  # False when there was none


@dataclass
class Backends:
    blobs: BlobStore
    queue: JobQueue
    jobs: JobTable
    keys: KeyStore
    transcode_queue: JobQueue | None = None  # AWS only: container audio goes through TranscodeFunction
    voiceprints: VoiceprintStore | None = None  # None: the deployment has no voiceprint table
