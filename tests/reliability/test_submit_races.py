"""Two attempts of one request_id in flight at once (a client retry while the first attempt still runs).

Each interleaving is forced deterministically: one backend call of attempt A is wrapped so that the client's
retry B runs at exactly that point (nested, or in a thread A is paused in). Then the world goes on: the worker
takes every message, the sweeper runs a day later. The invariant: a 200 answer means exactly one job that
finishes, with its audio, and whose webhook is delivered once; no attempt's audio is left without a job, and
nothing is left in the queue or the outbox. On moto (S3/SQS/DynamoDB) and on the local backends.
"""
from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from diarizer_service import api
from diarizer_service.auth import create_key
from diarizer_service.backends import create_backends
from diarizer_service.errors import ApiError, BackendError
from diarizer_service.jobs import job_prefix, make_job_id
from diarizer_service.runtime import Runtime, default_probe
from diarizer_service.settings import load_settings
from diarizer_service.sweeper import sweep
from diarizer_service.worker import Worker
from flow.conftest import BUCKET, JOBS_TABLE, KEYS_TABLE, create_tables

REQUEST_ID = "race-1"
DAY = 86400


@dataclass
class World:
    runtime: Runtime
    kind: str
    receiver: object
    body: str
    sqs: object = None
    queue_url: str = ""

    def __post_init__(self):
        self.key = create_key(self.runtime.backends.keys, "race test").record
        self.job_id = make_job_id(self.key.key_id, REQUEST_ID)

    def submit(self) -> int:
        """One attempt, as the API handler would answer it: 200, or the ApiError's status."""
        query = {"request_id": REQUEST_ID, "webhook": self.receiver.url}
        try:
            assert api.submit_async(self.runtime, self.key, self.body, False, query) == {
                "request_id": REQUEST_ID, "api": "diarize"}
            return 200
        except ApiError as exc:
            return exc.status

    def _take_messages(self) -> list[tuple[str, int]]:
        if self.kind == "local":
            queue = self.runtime.backends.queue
            taken = queue.receive(max_messages=10, visibility_timeout=0)
            for message in taken:
                queue.delete(message.receipt_handle)
            return [(m.body, m.receive_count) for m in taken]
        answer = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10, AttributeNames=["All"],
                                          VisibilityTimeout=0, WaitTimeSeconds=0)
        taken = answer.get("Messages", [])
        for message in taken:
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return [(m["Body"], int(m["Attributes"]["ApproximateReceiveCount"])) for m in taken]

    def run_everything(self) -> int:
        """The worker takes every message; when none is left, a day passes and the sweeper runs. Returns how
        many messages the worker handled."""
        worker, handled = Worker(self.runtime), 0
        for step in range(10):
            messages = self._take_messages()
            for body, receive_count in messages:
                worker.handle_message(body, receive_count)
                handled += 1
            if not messages:
                sweep(worker, now=time.time() + (step + 1) * DAY)
                if not (messages := self._take_messages()):
                    break
                for body, receive_count in messages:
                    worker.handle_message(body, receive_count)
                    handled += 1
        return handled

    def audio_objects(self) -> list[str]:
        """Every attempt's audio object under jobs/<key_id>/<request_id>/ (not the results)."""
        prefix = job_prefix(self.key.key_id, REQUEST_ID)
        if self.kind == "local":
            root = Path(self.runtime.settings.data_dir) / "blobs"
            names = [str(p.relative_to(root)) for p in (root / prefix).glob("*") if p.is_file()]
        else:
            listing = boto3.client("s3", region_name="us-east-1").list_objects_v2(Bucket=BUCKET, Prefix=prefix)
            names = [item["Key"] for item in listing.get("Contents", [])]
        return sorted(n for n in names if n[len(prefix):].startswith("audio") and "__meta__" not in n)

    def messages_left(self) -> int:
        return len(self._take_messages())

    def assert_one_finished_job(self, audio: bytes) -> None:
        job = self.runtime.jobs.get(self.job_id)
        assert job is not None, "the client was told 200 but the job record is gone"
        assert (job.status, job.error) == ("done", None)
        assert self.runtime.backends.blobs.get(job.audio_key) == audio
        assert self.audio_objects() == [job.audio_key], "an attempt's audio is left without a job"
        assert [hook.json()["request_id"] for hook in self.receiver.received] == [REQUEST_ID]
        assert job.webhook_state == "delivered"
        assert self.messages_left() == 0
        assert self.runtime.jobs.list_due(time.time() + 100 * DAY, 10) == []


@pytest.fixture(params=["local", "moto"])
def world(request, tmp_path, fake_engine, wav_bytes, webhook_receiver, monkeypatch):
    monkeypatch.setattr("diarizer_service.webhooks.BACKOFF_SECONDS", 0.0)
    body = json.dumps({"content": base64.b64encode(wav_bytes(1.0)).decode()})
    common = {"DIARIZER_ALLOW_LOCAL_WEBHOOKS": "true", "DIARIZER_WEBHOOK_TIMEOUT_SECONDS": "2"}
    if request.param == "local":
        settings = load_settings({**common, "DIARIZER_BACKEND": "local", "DIARIZER_DATA_DIR": str(tmp_path / "data")})
        yield World(Runtime(settings, create_backends(settings), probe=default_probe,
                            engine_factory=lambda: fake_engine), "local", webhook_receiver, body)
        return
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        sqs = boto3.client("sqs", region_name="us-east-1")
        queue_url = sqs.create_queue(QueueName="jobs")["QueueUrl"]
        create_tables(boto3.resource("dynamodb", region_name="us-east-1"))
        settings = load_settings({**common, "DIARIZER_BACKEND": "aws", "DIARIZER_BUCKET": BUCKET,
                                  "DIARIZER_QUEUE_URL": queue_url, "DIARIZER_JOBS_TABLE": JOBS_TABLE,
                                  "DIARIZER_KEYS_TABLE": KEYS_TABLE})
        yield World(Runtime(settings, create_backends(settings), probe=default_probe,
                            engine_factory=lambda: fake_engine), "moto", webhook_receiver, body, sqs, queue_url)


def throttled(what: str) -> BackendError:
    return BackendError(f"{what} failed: ProvisionedThroughputExceededException (simulated)")


def test_a_retry_whose_create_is_throttled_leaves_the_first_attempts_audio(world, wav_bytes, monkeypatch):
    """A stored its audio and is about to write its record; B finds no record, stores its audio, its create is
    throttled and it cleans up; then A's create lands. B must not have deleted A's audio."""
    table, real_create, answers, creates = world.runtime.backends.jobs, world.runtime.backends.jobs.create, {}, []

    def create(item):
        creates.append(item)
        if len(creates) == 1:  # A's create: the retry runs first, and its own create is throttled
            answers["B"] = world.submit()
            return real_create(item)
        raise throttled("DynamoDB put")

    with monkeypatch.context() as patch:
        patch.setattr(table, "create", create)
        answers["A"] = world.submit()
    assert answers == {"B": 503, "A": 200}
    assert world.run_everything() == 1
    world.assert_one_finished_job(wav_bytes(1.0))


@pytest.mark.parametrize("retry_marks_sent", [True, False], ids=["retry-marks-sent", "retry-mark-throttled"])
def test_a_retry_that_sent_the_message_keeps_the_job_when_the_first_attempts_send_fails(world, wav_bytes,
                                                                                       monkeypatch, retry_marks_sent):
    """A wrote its record, its SQS send fails; before A cleans up, B finds the record in the outbox, sends its
    message and answers 200. A's cleanup must then leave the record and the audio alone. With B's
    mark_enqueued throttled the record is still queued and in the outbox when A cleans up: only B's claim
    tells A the record is no longer its own to withdraw."""
    queue, table = world.runtime.backends.queue, world.runtime.backends.jobs
    real_send, real_update, answers, sends = queue.send, table.update, {}, []

    def send(body):
        sends.append(body)
        if len(sends) == 1:  # A's send: the retry runs now, then A's send fails
            answers["B"] = world.submit()
            raise throttled("SQS send")
        return real_send(body)

    def update(job_id, changes, **kwargs):
        if "outbox" in changes and "status" not in changes and "B" not in answers:  # B's mark_enqueued
            raise throttled("DynamoDB update")
        return real_update(job_id, changes, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(queue, "send", send)
        if not retry_marks_sent:
            patch.setattr(table, "update", update)
        answers["A"] = world.submit()
    assert answers == {"B": 200, "A": 503}
    world.run_everything()
    world.assert_one_finished_job(wav_bytes(1.0))


def test_a_retry_that_lost_the_create_race_claims_the_job_before_answering(world, wav_bytes, monkeypatch):
    """Both attempts found no record and stored their audio; A's create lands first, B's create finds it
    (False) and B answers 200; then A's send fails. B's 200 must hold (the job runs, with A's audio) and B's
    own audio object, which no record points at, must be gone."""
    queue, table = world.runtime.backends.queue, world.runtime.backends.jobs
    real_send, real_create = queue.send, table.create
    answers, creates = {}, []

    def create(item):
        creates.append(item)
        if len(creates) == 1:  # A's create: B runs up to its own create first
            answers["B"] = world.submit()
            return answers.pop("A created")
        answers["A created"] = real_create(creates[0])  # A's write lands just before B's
        return real_create(item)

    def send(body):
        if "A" not in answers and "B" in answers:  # A's send, after B answered
            raise throttled("SQS send")
        return real_send(body)

    with monkeypatch.context() as patch:
        patch.setattr(table, "create", create)
        patch.setattr(queue, "send", send)
        answers["A"] = world.submit()
    assert answers == {"B": 200, "A": 503}
    world.run_everything()
    world.assert_one_finished_job(wav_bytes(1.0))


def test_a_retry_whose_job_is_withdrawn_under_it_answers_503_and_leaves_nothing(world, wav_bytes, monkeypatch):
    """A wrote its record and its send failed; B reads the record (queued, in the outbox); then A withdraws it
    and deletes its audio before B sends anything. B must not answer 200 for a job that no longer exists. A
    third attempt then makes the job afresh."""
    queue, table = world.runtime.backends.queue, world.runtime.backends.jobs
    real_send, real_get = queue.send, table.get
    a_send_failing, b_has_read = threading.Event(), threading.Event()
    answers: dict[str, int] = {}

    def send(body):
        if threading.current_thread().name == "attempt-A":
            a_send_failing.set()
            assert b_has_read.wait(30)  # A pauses in its failing send until B has read the record
            raise throttled("SQS send")
        return real_send(body)

    def get(job_id):
        item = real_get(job_id)
        if threading.current_thread() is threading.main_thread() and item is not None and not b_has_read.is_set():
            b_has_read.set()  # B has read the record: A now fails and cleans up, all before B goes on
            attempt_a.join(30)
        return item

    attempt_a = threading.Thread(target=lambda: answers.__setitem__("A", world.submit()), name="attempt-A")
    with monkeypatch.context() as patch:
        patch.setattr(queue, "send", send)
        attempt_a.start()
        assert a_send_failing.wait(30)
        patch.setattr(table, "get", get)
        answers["B"] = world.submit()
        attempt_a.join(30)
    assert answers == {"A": 503, "B": 503}
    assert world.runtime.jobs.get(world.job_id) is None and world.audio_objects() == []
    assert world.messages_left() == 0

    assert world.submit() == 200  # the client's next retry
    world.run_everything()
    world.assert_one_finished_job(wav_bytes(1.0))
