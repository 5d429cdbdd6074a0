"""The job record and its state machine: queued -> running -> done | failed.

Every transition is a conditional update, so a duplicate SQS delivery of a finished job changes nothing and
sends no second webhook: only the worker whose running -> done (or -> failed) update succeeds notifies.
A worker that died leaves the job `running`; the redelivered message may take it again (running -> running).
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, fields
from enum import Enum

from diarizer_service.backends.base import JobTable

MAX_INLINE_RESULT_BYTES = 100_000  # larger results live only in S3 (DynamoDB items are capped at 400 KB)


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


FINISHED = (JobStatus.DONE.value, JobStatus.FAILED.value)


def make_job_id(key_id: str, request_id: str) -> str:
    return f"{key_id}#{request_id}"


def job_prefix(key_id: str, request_id: str) -> str:
    """S3 prefix of everything a job stores: jobs/<key_id>/<request_id>/."""
    return f"jobs/{key_id}/{request_id}/"


@dataclass
class Job:
    job_id: str
    key_id: str
    key_hash: str  # to find the webhook secret; a hash, not the key
    request_id: str
    api: str
    audio_key: str
    options: dict  # speakers, min_speakers, max_speakers, merge_adjacent
    webhook: str | None = None
    webhook_id: str = field(default_factory=lambda: f"msg_{uuid.uuid4().hex}")
    status: str = JobStatus.QUEUED.value
    created_at: int = field(default_factory=lambda: int(time.time()))
    updated_at: int = 0
    expires_at: int = 0  # DynamoDB TTL
    attempts: int = 0
    audio_format: str | None = None
    audio_seconds: float | None = None
    result: dict | None = None  # the Diarized object, when small enough
    result_key: str | None = None
    rttm_key: str | None = None
    error: dict | None = None  # {"code", "message"} when failed
    webhook_delivery: dict | None = None  # {"delivered", "attempts", "status"?, "error"?}

    @classmethod
    def new(cls, *, key_id: str, key_hash: str, request_id: str, api: str, audio_key: str, options: dict,
            webhook: str | None, retention_days: int, audio_format: str | None = None,
            audio_seconds: float | None = None) -> "Job":
        now = int(time.time())
        return cls(job_id=make_job_id(key_id, request_id), key_id=key_id, key_hash=key_hash, request_id=request_id,
                   api=api, audio_key=audio_key, options=options, webhook=webhook, created_at=now, updated_at=now,
                   expires_at=now + retention_days * 86400, audio_format=audio_format, audio_seconds=audio_seconds)

    @classmethod
    def from_item(cls, item: dict) -> "Job":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in item.items() if k in known})

    def to_item(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class JobStore:
    """Job records on a JobTable, with the allowed transitions as methods that return False when lost."""

    def __init__(self, table: JobTable):
        self.table = table

    def create(self, job: Job) -> bool:
        return self.table.create(job.to_item())

    def get(self, job_id: str) -> Job | None:
        item = self.table.get(job_id)
        return Job.from_item(item) if item else None

    def delete(self, job_id: str) -> None:
        self.table.delete(job_id)

    def _transition(self, job_id: str, expected: tuple[str, ...], changes: dict) -> bool:
        return self.table.update(job_id, {**changes, "updated_at": int(time.time())}, expected_status=expected)

    def start(self, job: Job) -> bool:
        """queued|running -> running (running again when a worker died and SQS redelivered)."""
        return self._transition(job.job_id, (JobStatus.QUEUED.value, JobStatus.RUNNING.value),
                                {"status": JobStatus.RUNNING.value, "attempts": job.attempts + 1})

    def finish(self, job_id: str, *, result: dict, result_key: str, rttm_key: str, audio_seconds: float,
               result_size: int) -> bool:
        changes = {"status": JobStatus.DONE.value, "result_key": result_key, "rttm_key": rttm_key,
                   "audio_seconds": audio_seconds, "error": None}
        if result_size <= MAX_INLINE_RESULT_BYTES:
            changes["result"] = result
        return self._transition(job_id, (JobStatus.RUNNING.value,), changes)

    def fail(self, job_id: str, code: str, message: str) -> bool:
        return self._transition(job_id, (JobStatus.QUEUED.value, JobStatus.RUNNING.value),
                                {"status": JobStatus.FAILED.value, "error": {"code": code, "message": message}})

    def record_delivery(self, job_id: str, delivery: dict) -> None:
        self.table.update(job_id, {"webhook_delivery": delivery, "updated_at": int(time.time())})
