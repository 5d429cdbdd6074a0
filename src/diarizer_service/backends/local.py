"""Local stand-ins on one machine, persistent under DIARIZER_DATA_DIR: blobs as files, jobs/keys/queue in sqlite.

The queue behaves like SQS where it matters: a received message is invisible for a visibility timeout and
comes back (with a higher receive count) unless deleted, so a job taken by a worker that died is retried;
after `max_receive_count` receives it moves to a dead-letter table.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import stat
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterable, Iterator, Mapping
from urllib.parse import quote, urlencode

from diarizer_service.backends.base import Backends, BlobInfo, BlobNotFound, BlobTooLarge
from diarizer_service.errors import BackendError
from diarizer_service.settings import Settings

LOCAL_UPLOAD_PATH = "/local-blobs/"  # + the blob key: where presigned PUTs go in local mode

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, status TEXT, item TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (key_hash TEXT PRIMARY KEY, item TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    message_id TEXT PRIMARY KEY, body TEXT NOT NULL, sent_at REAL NOT NULL,
    visible_at REAL NOT NULL, receive_count INTEGER NOT NULL DEFAULT 0, receipt_handle TEXT);
CREATE TABLE IF NOT EXISTS dead_letters (message_id TEXT PRIMARY KEY, body TEXT NOT NULL, receive_count INTEGER);
CREATE TABLE IF NOT EXISTS voiceprints (
    key_id TEXT NOT NULL, voiceprint_id TEXT NOT NULL, item TEXT NOT NULL, PRIMARY KEY (key_id, voiceprint_id));
"""


@contextmanager
def _failures_as(operation: str) -> Iterator[None]:
    """sqlite and file-system errors (locked, disk full, I/O error, permissions) become BackendError naming the
    operation and keeping the real reason: the API answers 503 (retryable), the worker retries through the
    queue. A missing blob (BlobNotFound) and a key escaping the store (ValueError) pass unchanged."""
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        raise BackendError(f"{operation} failed: {type(exc).__name__}: {exc}") from exc


class _Database:
    def __init__(self, path: Path):
        self.path = path
        with _failures_as("opening the local database"):
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, timeout=30)
            try:
                db.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer (API + worker loop)
                db.executescript(_SCHEMA)
            finally:
                db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        # One short-lived connection per operation: safe across threads and processes (API + worker loop).
        with _failures_as("sqlite"):
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                db.execute("PRAGMA secure_delete=ON")  # deleted rows (voiceprints: biometric) are overwritten
                db.execute("BEGIN IMMEDIATE")
            except BaseException:  # no transaction to roll back: a ROLLBACK would replace the real error
                db.close()
                raise
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the error being raised is the one that matters
                raise
            finally:
                db.close()


# _write_durably's temp files: <name>.<uuid4 hex>.tmp (FileBlobStore.remove_stale_temp_files matches only these)
_TEMP_NAME = re.compile(r".+\.[0-9a-f]{32}\.tmp")


def _write_durably(path: Path, data: bytes | Iterable[bytes]) -> int:
    """Temp file, fsync, rename, fsync of the directory: after a crash the file is whole or absent (and a
    reader never sees half of it). `data` may come in chunks (an upload, never whole in memory); returns
    the number of bytes written."""
    tmp = path.with_name(path.name + f".{uuid.uuid4().hex}.tmp")
    size = 0
    try:
        with open(tmp, "wb") as file:
            for chunk in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
                file.write(chunk)
                size += len(chunk)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return size


class FileBlobStore:
    def __init__(self, root: Path, public_url: str = ""):
        self.root = root.resolve()
        self.public_url = public_url  # where `diarize serve` listens: presigned upload URLs point there

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"blob key escapes the store: {key!r}")
        return path

    @staticmethod
    def _meta_path(path: Path) -> Path:
        return path.with_name(path.name + ".__meta__.json")

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream",
            metadata: Mapping[str, str] | None = None) -> None:
        path = self._path(key)
        with _failures_as("blob write"):
            path.parent.mkdir(parents=True, exist_ok=True)
            # The metadata first: a blob is never visible without its own metadata (a stale one is overwritten).
            meta = {"content_type": content_type, "metadata": dict(metadata or {})}
            _write_durably(self._meta_path(path), json.dumps(meta).encode())
            _write_durably(path, data)

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        with _failures_as("blob read"):
            try:
                with open(self._path(key), "rb") as file:
                    data = file.read() if max_bytes is None else file.read(max_bytes + 1)
            except (FileNotFoundError, IsADirectoryError) as exc:
                raise BlobNotFound(key) from exc  # a KeyError: not turned into BackendError
        if max_bytes is not None and len(data) > max_bytes:
            raise BlobTooLarge(f"{key}: over {max_bytes} bytes")
        return data

    def head(self, key: str) -> BlobInfo | None:
        path = self._path(key)
        with _failures_as("blob head"):
            if not path.is_file():
                return None
            meta_path = self._meta_path(path)
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
            stat = path.stat()
        return BlobInfo(size=stat.st_size, etag=f"{stat.st_mtime_ns:x}-{stat.st_size:x}",
                        metadata={k.lower(): v for k, v in meta.get("metadata", {}).items()})

    def current_etag(self, key: str) -> str | None:
        info = self.head(key)
        return info.etag if info is not None else None

    def delete(self, key: str) -> None:
        path = self._path(key)
        with _failures_as("blob delete"):
            path.unlink(missing_ok=True)
            self._meta_path(path).unlink(missing_ok=True)

    def remove_stale_temp_files(self) -> int:
        """Delete the temp files of writes that never finished (a process killed or exiting mid-upload cannot
        clean up); returns how many. Only for a caller that knows no write is under way (`diarize serve` at
        start-up, holding the data dir's lock). Only _write_durably's naming is touched, never a blob."""
        removed = 0
        with _failures_as("removing stale temp files"):
            for folder, _dirs, names in os.walk(self.root):  # symlinked folders are not followed
                for name in names:
                    path = Path(folder, name)
                    if _TEMP_NAME.fullmatch(name) and stat.S_ISREG(path.lstat().st_mode):
                        path.unlink(missing_ok=True)
                        removed += 1
        return removed

    def remove_older_than(self, prefix: str, cutoff: float) -> int:
        """Delete the files under `prefix` last written before `cutoff` (unix seconds), then the folders left
        empty; returns how many files. Local mode's stand-in for the bucket's lifecycle rules, which expire
        objects by age (template.yaml: ExpireJobs, ExpireUploads)."""
        top, removed = self._path(prefix.rstrip("/") + "/x").parent, 0
        with _failures_as("expiring blobs"):
            for folder, _dirs, names in os.walk(top, topdown=False):  # symlinked folders are not followed
                for name in names:
                    path = Path(folder, name)
                    info = path.lstat()
                    if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                        path.unlink(missing_ok=True)
                        removed += 1
                if Path(folder) != top and not os.listdir(folder):
                    os.rmdir(folder)
        return removed

    # ---- presigned uploads, like S3's: `diarize serve` receives the PUT (gateway.py) -------------------------
    def presign_put(self, key: str, expires_seconds: int) -> str:
        if not self.public_url:
            raise NotImplementedError("uploads are received by `diarize serve`; no server URL is configured")
        expires = int(time.time()) + expires_seconds
        query = urlencode({"expires": expires, "signature": self._sign(key, expires)})
        return f"{self.public_url.rstrip('/')}{LOCAL_UPLOAD_PATH}{quote(key)}?{query}"

    def check_upload(self, key: str, expires: str, signature: str) -> bool:
        """True when (key, expires, signature) came from presign_put and has not expired."""
        # At most 12 digits: int() of thousands would raise instead of refusing, and no real expiry is that far.
        if not (expires.isascii() and expires.isdigit() and len(expires) <= 12) or int(expires) < time.time():
            return False
        return hmac.compare_digest(self._sign(key, int(expires)), signature)

    def put_stream(self, key: str, chunks: Iterable[bytes], *, content_type: str = "application/octet-stream") -> int:
        """Write an upload chunk by chunk (never whole in memory), as durably as `put`; returns its size."""
        path = self._path(key)
        with _failures_as("blob write"):
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_durably(self._meta_path(path), json.dumps({"content_type": content_type, "metadata": {}}).encode())
            return _write_durably(path, chunks)

    def _sign(self, key: str, expires: int) -> str:
        return hmac.new(self._signing_key(), f"PUT\n{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def _signing_key(self) -> bytes:
        """A random key kept in the data dir, so upload URLs survive a restart of the server."""
        path = self.root.parent / "upload-signing.key"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
        return path.read_text().strip().encode()


@dataclass(frozen=True)
class QueueMessage:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    sent_at: float


class SqliteJobQueue:
    def __init__(self, db: _Database, max_receive_count: int = 3):
        self._db = db
        self.max_receive_count = max_receive_count
        self.dead_lettered = 0  # messages this object moved to the dead letters (the worker loop watches it)

    def send(self, body: dict) -> str:
        message_id = str(uuid.uuid4())
        now = time.time()
        with self._db.transaction() as db:
            db.execute("INSERT INTO messages (message_id, body, sent_at, visible_at) VALUES (?, ?, ?, ?)",
                       (message_id, json.dumps(body), now, now))
        return message_id

    def receive(self, max_messages: int = 1, visibility_timeout: float = 900.0) -> list[QueueMessage]:
        now = time.time()
        taken: list[QueueMessage] = []
        with self._db.transaction() as db:
            rows = db.execute("SELECT message_id, body, receive_count, sent_at FROM messages WHERE visible_at <= ? "
                              "ORDER BY sent_at LIMIT ?", (now, max_messages * 4)).fetchall()
            for message_id, body, receive_count, sent_at in rows:
                if receive_count >= self.max_receive_count:  # like an SQS redrive policy
                    db.execute("INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?)", (message_id, body, receive_count))
                    db.execute("DELETE FROM messages WHERE message_id = ?", (message_id,))
                    self.dead_lettered += 1
                    continue
                if len(taken) == max_messages:
                    break
                receipt = uuid.uuid4().hex
                db.execute("UPDATE messages SET visible_at = ?, receive_count = receive_count + 1, receipt_handle = ? "
                           "WHERE message_id = ?", (now + visibility_timeout, receipt, message_id))
                taken.append(QueueMessage(message_id, receipt, body, receive_count + 1, sent_at))
        return taken

    def delete(self, receipt_handle: str) -> None:
        with self._db.transaction() as db:
            db.execute("DELETE FROM messages WHERE receipt_handle = ?", (receipt_handle,))

    def change_visibility(self, receipt_handle: str, visibility_timeout: float) -> None:
        """Like SQS ChangeMessageVisibility: a failed message comes back after `visibility_timeout` seconds."""
        with self._db.transaction() as db:
            db.execute("UPDATE messages SET visible_at = ? WHERE receipt_handle = ?",
                       (time.time() + visibility_timeout, receipt_handle))

    def give_back(self, receipt_handle: str) -> None:
        """Visible again now, and this receive not counted: the server stopped the job, the job did not fail. A
        job interrupted by three restarts must run a fourth time, not be dead-lettered as crashing."""
        with self._db.transaction() as db:
            db.execute("UPDATE messages SET visible_at = ?, receive_count = MAX(receive_count - 1, 0) "
                       "WHERE receipt_handle = ?", (time.time(), receipt_handle))

    def release_in_flight(self) -> int:
        """Make every received, undeleted message visible now; returns how many. Only for a caller that knows
        the workers holding them are gone (`diarize serve` at start-up: it holds the data dir's lock)."""
        now = time.time()
        with self._db.transaction() as db:
            cursor = db.execute("UPDATE messages SET visible_at = ? WHERE receipt_handle IS NOT NULL "
                                "AND visible_at > ?", (now, now))
            return cursor.rowcount

    def dead_letters(self) -> list[dict]:
        with self._db.transaction() as db:
            rows = db.execute("SELECT message_id, body, receive_count FROM dead_letters").fetchall()
        return [{"message_id": m, "body": b, "receive_count": c} for m, b, c in rows]

    def delete_dead_letter(self, message_id: str) -> None:
        with self._db.transaction() as db:
            db.execute("DELETE FROM dead_letters WHERE message_id = ?", (message_id,))


def to_sqs_event(messages: list[QueueMessage], queue_arn: str = "arn:aws:sqs:local:000000000000:diarizer-jobs") -> dict:
    """Wrap received local messages in the SQS event shape the worker's lambda_handler expects."""
    return {"Records": [{
        "messageId": m.message_id, "receiptHandle": m.receipt_handle, "body": m.body,
        "attributes": {"ApproximateReceiveCount": str(m.receive_count), "SentTimestamp": str(int(m.sent_at * 1000))},
        "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs", "eventSourceARN": queue_arn,
        "awsRegion": "local",
    } for m in messages]}


class SqliteJobTable:
    def __init__(self, db: _Database):
        self._db = db

    def create(self, item: dict) -> bool:
        with self._db.transaction() as db:
            cursor = db.execute("INSERT OR IGNORE INTO jobs (job_id, status, item) VALUES (?, ?, ?)",
                                (item["job_id"], item.get("status"), json.dumps(item)))
            return cursor.rowcount == 1

    def get(self, job_id: str) -> dict | None:
        with self._db.transaction() as db:
            row = db.execute("SELECT item FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def update(self, job_id: str, changes: dict, *, expected_status: Collection[str] | None = None) -> bool:
        with self._db.transaction() as db:
            row = db.execute("SELECT item FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                return False
            item = json.loads(row[0])
            if expected_status and item.get("status") not in expected_status:
                return False
            for name, value in changes.items():
                if value is None:
                    item.pop(name, None)
                else:
                    item[name] = value
            db.execute("UPDATE jobs SET status = ?, item = ? WHERE job_id = ?", (item.get("status"), json.dumps(item), job_id))
            return True

    def delete(self, job_id: str, *, expected: Mapping[str, str] | None = None) -> bool:
        with self._db.transaction() as db:
            if expected:
                row = db.execute("SELECT item FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
                item = json.loads(row[0]) if row else None
                if item is None or any(item.get(name) != value for name, value in expected.items()):
                    return False
            db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
            return True

    def delete_expired(self, now: float) -> int:
        """Delete the records whose `expires_at` has passed; returns how many. Local mode's stand-in for the
        DynamoDB table's TTL on `expires_at`."""
        with self._db.transaction() as db:
            return db.execute("DELETE FROM jobs WHERE CAST(json_extract(item, '$.expires_at') AS INTEGER) <= ?",
                              (int(now),)).rowcount

    def list_due(self, now: float, limit: int) -> list[dict]:
        with self._db.transaction() as db:
            rows = db.execute("SELECT item FROM jobs WHERE json_extract(item, '$.outbox') = 'due' AND "
                              "json_extract(item, '$.outbox_at') <= ? ORDER BY json_extract(item, '$.outbox_at') "
                              "LIMIT ?", (now, limit)).fetchall()
        return [json.loads(row[0]) for row in rows]


class SqliteKeyStore:
    def __init__(self, db: _Database):
        self._db = db

    def put(self, item: dict) -> None:
        with self._db.transaction() as db:
            db.execute("INSERT OR REPLACE INTO api_keys (key_hash, item) VALUES (?, ?)", (item["key_hash"], json.dumps(item)))

    def get(self, key_hash: str) -> dict | None:
        with self._db.transaction() as db:
            row = db.execute("SELECT item FROM api_keys WHERE key_hash = ?", (key_hash,)).fetchone()
        return json.loads(row[0]) if row else None

    def list(self) -> list[dict]:
        with self._db.transaction() as db:
            return [json.loads(row[0]) for row in db.execute("SELECT item FROM api_keys").fetchall()]

    def update(self, key_hash: str, changes: dict) -> None:
        with self._db.transaction() as db:
            row = db.execute("SELECT item FROM api_keys WHERE key_hash = ?", (key_hash,)).fetchone()
            if row is None:
                raise KeyError(key_hash)
            item = {**json.loads(row[0]), **changes}
            db.execute("UPDATE api_keys SET item = ? WHERE key_hash = ?", (json.dumps(item), key_hash))


class SqliteVoiceprintStore:
    def __init__(self, db: _Database):
        self._db = db

    def put(self, item: dict) -> None:
        with self._db.transaction() as db:
            db.execute("INSERT OR REPLACE INTO voiceprints (key_id, voiceprint_id, item) VALUES (?, ?, ?)",
                       (item["key_id"], item["voiceprint_id"], json.dumps(item)))

    def get(self, key_id: str, voiceprint_id: str) -> dict | None:
        with self._db.transaction() as db:
            row = db.execute("SELECT item FROM voiceprints WHERE key_id = ? AND voiceprint_id = ?",
                             (key_id, voiceprint_id)).fetchone()
        return json.loads(row[0]) if row else None

    def list(self, key_id: str) -> list[dict]:
        with self._db.transaction() as db:
            rows = db.execute("SELECT item FROM voiceprints WHERE key_id = ?", (key_id,)).fetchall()
        return [json.loads(row[0]) for row in rows]

    def delete(self, key_id: str, voiceprint_id: str) -> bool:
        with self._db.transaction() as db:
            deleted = db.execute("DELETE FROM voiceprints WHERE key_id = ? AND voiceprint_id = ?",
                                 (key_id, voiceprint_id)).rowcount == 1
        # The write-ahead log still holds the old page until a checkpoint: copy it back and empty the log.
        db = sqlite3.connect(self._db.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()
        return deleted


def create_local_backends(settings: Settings) -> Backends:
    root = Path(settings.data_dir)
    db = _Database(root / "diarizer.sqlite3")
    return Backends(
        blobs=FileBlobStore(root / "blobs", settings.public_url),
        queue=SqliteJobQueue(db, settings.max_receive_count),
        jobs=SqliteJobTable(db),
        keys=SqliteKeyStore(db),
        voiceprints=SqliteVoiceprintStore(db),
    )
