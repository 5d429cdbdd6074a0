"""The job record and its state machines: queued -> running -> done | failed, and for a job with a webhook,
webhook_state pending -> delivered | failed once the job finished.

Every transition is a conditional update, so a duplicate SQS delivery of a finished job changes nothing: only
the worker whose running -> done (or -> failed) update succeeds finishes the job. A worker that died leaves the
job `running`; the redelivered message may take it again (running -> running).

The process may die after any side effect, so a record that still needs something done carries a due time in
the sparse "outbox" index (`outbox` = "due", `outbox_at` = unix seconds): a `queued` job whose message may
never have been sent (it leaves the index once the send is confirmed), or a finished job whose webhook is
still pending. The sweeper (sweeper.py) sends the message or re-drives the delivery of whatever is overdue,
and a client's retry of a queued request_id still in the index sends its message; a job whose message was
sent is out of the index (SQS, its redelivery and its dead-letter queue own it then).
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, fields
from enum import Enum

from diarizer.types import AudioDecodeError, AudioTooLongError, EmptyAudioError

from diarizer_service.backends.base import JobTable

MAX_INLINE_RESULT_BYTES = 100_000  # larger results live only in S3 (DynamoDB items are capped at 400 KB)


class PermanentJobError(Exception):
    """The job can never succeed (bad audio, bad options): fail it, do not retry."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def too_long(cls, max_seconds: float) -> PermanentJobError:
        return cls("audio_too_long", f"The audio is longer than {max_seconds:g} s.")

    @classmethod
    def for_audio(cls, exc: AudioDecodeError, max_seconds: float) -> PermanentJobError:
        """Audio the engine or the transcoder refused: the same code whichever of them decoded it."""
        if isinstance(exc, AudioTooLongError):
            return cls.too_long(max_seconds)
        if isinstance(exc, EmptyAudioError):
            return cls("empty_audio", "The audio contains no samples.")
        return cls("unsupported_audio", f"The audio could not be decoded: {exc}")


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


FINISHED = (JobStatus.DONE.value, JobStatus.FAILED.value)


class WebhookState(str, Enum):
    PENDING = "pending"  # the job finished; no POST has been acknowledged yet
    DELIVERED = "delivered"  # a 2xx answer came back
    FAILED = "failed"  # refused for good (4xx, unsafe URL, key deleted) or retried for too long


OUTBOX_DUE = "due"  # the partition value of the outbox index: only records that need the sweeper carry it


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
    webhook_delivery: dict | None = None  # {"delivered", "attempts", "status"?, "error"?, "rounds"}
    webhook_state: str | None = None  # WebhookState, once a job with a webhook finished
    outbox: str | None = None  # OUTBOX_DUE while the sweeper must look at this record (sparse index key)
    outbox_at: int | None = None  # when (unix seconds)
    # The submit attempt that may still withdraw this queued record: its creator, until a retry claims it to
    # send its message (see JobStore.claim and withdraw). None on records written before it existed.
    attempt_id: str | None = None
    # What was asked (audio, options, webhook), hashed: the request_id is an idempotency key, so a retry of the
    # same request is answered 200 and one with the same request_id but other content is a 409, never a silent
    # 200 for a request that is dropped. None on records written before it existed (then not checked).
    fingerprint: str | None = None

    @classmethod
    def new(cls, *, key_id: str, key_hash: str, request_id: str, api: str, audio_key: str, options: dict,
            webhook: str | None, retention_days: int, sweep_after_seconds: int = 300, audio_format: str | None = None,
            audio_seconds: float | None = None, attempt_id: str | None = None,
            fingerprint: str | None = None) -> "Job":
        """Born in the outbox: if its message is never sent, the sweeper sends it `sweep_after_seconds` later."""
        now = int(time.time())
        return cls(job_id=make_job_id(key_id, request_id), key_id=key_id, key_hash=key_hash, request_id=request_id,
                   api=api, audio_key=audio_key, options=options, webhook=webhook, created_at=now, updated_at=now,
                   expires_at=now + retention_days * 86400, audio_format=audio_format, audio_seconds=audio_seconds,
                   outbox=OUTBOX_DUE, outbox_at=now + sweep_after_seconds, attempt_id=attempt_id,
                   fingerprint=fingerprint)

    @property
    def awaiting_message(self) -> bool:
        """Queued, and its message may never have been sent."""
        return self.status == JobStatus.QUEUED.value and self.outbox == OUTBOX_DUE

    @property
    def webhook_pending(self) -> bool:
        return bool(self.webhook) and self.webhook_state == WebhookState.PENDING.value

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

    def claim(self, job_id: str, attempt_id: str) -> bool:
        """A retry of a queued job takes over sending its message: from now on the attempt that created the
        record can no longer withdraw it. False when the job is no longer queued (started, finished or gone)."""
        return self._transition(job_id, (JobStatus.QUEUED.value,), {"attempt_id": attempt_id})

    def postpone(self, job_id: str, until: int) -> None:
        """Move a record's due time (`outbox_at`) later, leaving it in the outbox: the sweeper's answer to a record
        whose handling raised, so that it does not stay in front of every other due record."""
        self.table.update(job_id, {"outbox_at": until})

    def withdraw(self, job: Job) -> bool:
        """Delete the record `job`'s attempt created, only while nobody else can have been told about it: still
        queued, still in the outbox (no message confirmed) and not claimed by a retry. False otherwise."""
        if not job.attempt_id:
            return False
        return self.table.delete(job.job_id, expected={"attempt_id": job.attempt_id,
                                                       "status": JobStatus.QUEUED.value, "outbox": OUTBOX_DUE})

    def _transition(self, job_id: str, expected: tuple[str, ...], changes: dict) -> bool:
        return self.table.update(job_id, {**changes, "updated_at": int(time.time())}, expected_status=expected)

    def list_due(self, now: float, limit: int) -> list[Job]:
        """Records whose outbox time has come (queued without a worker yet, or a webhook still pending)."""
        return [Job.from_item(item) for item in self.table.list_due(now, limit)]

    def start(self, job: Job) -> bool:
        """queued|running -> running (running again when a worker died and SQS redelivered). Out of the
        outbox: the message exists (we hold it), and SQS redelivery and the dead-letter queue take over."""
        return self._transition(job.job_id, (JobStatus.QUEUED.value, JobStatus.RUNNING.value),
                                {"status": JobStatus.RUNNING.value, "attempts": job.attempts + 1,
                                 "outbox": None, "outbox_at": None})

    def mark_enqueued(self, job_id: str) -> bool:
        """Its message was sent: out of the outbox (the queue, its redelivery and dead-letter queue own it now).
        A process that dies just before this leaves it in: the message is sent again later, harmlessly."""
        return self._transition(job_id, (JobStatus.QUEUED.value,), {"outbox": None, "outbox_at": None})

    def leave_outbox(self, job_id: str) -> None:
        self.table.update(job_id, {"outbox": None, "outbox_at": None})

    @staticmethod
    def _webhook_changes(job: Job, due_at: int) -> dict:
        """Finishing a job with a webhook makes its delivery pending (in the outbox until acknowledged)."""
        if not job.webhook:
            return {}
        return {"webhook_state": WebhookState.PENDING.value, "outbox": OUTBOX_DUE, "outbox_at": due_at}

    def finish(self, job: Job, *, result: dict, result_key: str, rttm_key: str, audio_seconds: float,
               result_size: int, webhook_due_at: int) -> bool:
        changes = {"status": JobStatus.DONE.value, "result_key": result_key, "rttm_key": rttm_key,
                   "audio_seconds": audio_seconds, "error": None, **self._webhook_changes(job, webhook_due_at)}
        if result_size <= MAX_INLINE_RESULT_BYTES:
            changes["result"] = result
        return self._transition(job.job_id, (JobStatus.RUNNING.value,), changes)

    def fail(self, job: Job, code: str, message: str, *, webhook_due_at: int) -> bool:
        return self._transition(job.job_id, (JobStatus.QUEUED.value, JobStatus.RUNNING.value),
                                {"status": JobStatus.FAILED.value, "error": {"code": code, "message": message},
                                 "outbox": None, "outbox_at": None, **self._webhook_changes(job, webhook_due_at)})

    def record_delivery(self, job_id: str, delivery: dict, state: WebhookState, retry_at: int | None) -> None:
        """The outcome of one delivery round; a pending one stays in the outbox until `retry_at`."""
        pending = state is WebhookState.PENDING
        self.table.update(job_id, {"webhook_delivery": delivery, "webhook_state": state.value,
                                   "outbox": OUTBOX_DUE if pending else None,
                                   "outbox_at": retry_at if pending else None, "updated_at": int(time.time())},
                          expected_status=FINISHED)
