"""The crash-point harness: the process dies right after each side effect of submit, run, complete and fail
(every storage, queue and table call, and the webhook POST), and the system must still end well.

How: every backend object (blobs, queue, jobs, keys) and the worker's webhook sender are wrapped so that the
Nth call goes through and then raises `Crash`, a BaseException no handler catches: nothing after that line
runs, as when Lambda times out or `diarize serve` is killed. Then the world goes on as it really would: the
client retries with the same request_id (or gives up), SQS hands an undeleted message out again (after 3
receives it goes to the dead-letter queue and its function), and the scheduled sweeper runs. For every N:

* a job the client was told about (or whose record exists) finishes exactly once (one running -> done/failed
  transition), with the expected outcome;
* its webhook was POSTed at least once, every POST with the job's one `webhook-id`, the same body and a valid
  signature, and its state ends `delivered`;
* nothing is left behind that can never run: no message in the queue or the dead-letter queue, nothing
  overdue in the outbox even a day later.

Run on moto (S3/SQS/DynamoDB, the real Lambda handlers) and on the local backends (files + sqlite).
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field

import boto3
import pytest
from moto import mock_aws

from diarizer.types import AudioDecodeError
from diarizer_service.auth import create_key
from diarizer_service.backends import Backends, create_backends
from diarizer_service.backends.local import to_sqs_event
from diarizer_service.runtime import Runtime, default_probe, set_runtime
from diarizer_service.settings import load_settings
from diarizer_service.sweeper import sweep
from diarizer_service.webhooks import verify_signature
from flow.conftest import BUCKET, JOBS_TABLE, KEYS_TABLE, create_tables
from reliability.helpers import ASYNC_V2, ScriptedReceiver, audio_body, sqs_messages_left

REQUEST_ID = "crash-test"
DAY = 86400


class Crash(BaseException):
    """The process dies here: not an Exception, so no handler records anything after it."""


@dataclass
class CrashPlan:
    """Counts side effects (calls that returned); raises Crash right after the `crash_after`th one, once."""

    crash_after: int | None
    calls: list[tuple[str, tuple, dict, object]] = field(default_factory=list)
    crashed_at: str | None = None
    submit_calls: int = 0  # how many of `calls` the client's submit(s) made

    def done(self, name: str, args: tuple, kwargs: dict, result: object) -> None:
        if name == "jobs.list_due":  # the sweeper's idle polling: a read, and its count depends on the pacing
            return
        self.calls.append((name, args, kwargs, result))
        if self.crashed_at is None and len(self.calls) == self.crash_after:
            self.crashed_at = name
            raise Crash(name)

    def finishes(self) -> int:
        """Successful running -> done/failed transitions of the job table."""
        return sum(1 for name, args, kwargs, result in self.calls
                   if name == "jobs.update" and result is True and args[1].get("status") in ("done", "failed"))


class Crashing:
    """Wraps a backend object: each public method call completes, is counted, and may be the crash point."""

    def __init__(self, inner, label: str, plan: CrashPlan):
        self._inner, self._label, self._plan = inner, label, plan

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if name.startswith("_") or not callable(attr):
            return attr

        def call(*args, **kwargs):
            result = attr(*args, **kwargs)
            self._plan.done(f"{self._label}.{name}", args, kwargs, result)
            return result
        return call


# ------------------------------------------------------------------------------------------- the two worlds
class World:
    """One deployment (moto or local) with the real handlers, a fake engine and a real webhook receiver."""

    def __init__(self, runtime: Runtime, api_app, worker_app, receiver: ScriptedReceiver, context, make_event):
        self.runtime, self.api_app, self.worker_app, self.receiver = runtime, api_app, worker_app, receiver
        self.key = create_key(runtime.backends.keys, "crash test")
        self.context, self.make_event = context, make_event

    def arm(self, plan: CrashPlan) -> None:
        real = self.runtime.backends
        self.runtime.backends = Backends(**{name: Crashing(getattr(real, name), name, plan)
                                            for name in ("blobs", "queue", "jobs", "keys")})
        worker = self.worker_app.get_worker()
        real_deliver = worker.deliver

        def deliver(*args, **kwargs):  # the POST went out (and its answer came back), then the process died
            result = real_deliver(*args, **kwargs)
            plan.done("webhook.post", args, kwargs, result)
            return result
        worker.deliver = deliver

    def submit(self, audio: bytes) -> tuple[int, dict]:
        query = {"apikey": self.key.api_key, "webhook": self.receiver.url, "request_id": REQUEST_ID}
        event = self.make_event("POST", ASYNC_V2, query=query, body=audio_body(audio))
        answer = self.api_app.lambda_handler(event, self.context)
        return answer["statusCode"], json.loads(answer["body"])

    def status(self) -> dict:
        path = f"{ASYNC_V2}/{REQUEST_ID}"
        event = self.make_event("GET", path, query={"apikey": self.key.api_key},
                               path_parameters={"request_id": REQUEST_ID})
        answer = self.api_app.lambda_handler(event, self.context)
        return {"http": answer["statusCode"], **json.loads(answer["body"])}

    def run_worker_once(self) -> bool:
        """Hand the visible messages to the worker like the event source mapping; False when none."""
        event, acks = self.receive()
        if not event["Records"]:
            return False
        answer = self.worker_app.lambda_handler(event, self.context)  # a Crash propagates: nothing is deleted
        failed = {item["itemIdentifier"] for item in answer["batchItemFailures"]}
        for record in event["Records"]:
            if record["messageId"] not in failed:
                acks(record)
        return True

    def sweep(self, now: float) -> None:
        sweep(self.worker_app.get_worker(), now=now)


class MotoWorld(World):
    def __init__(self, *args, sqs, queue_url: str, dlq_url: str):
        super().__init__(*args)
        self.sqs, self.queue_url, self.dlq_url = sqs, queue_url, dlq_url

    def _receive(self, url: str) -> list[dict]:
        answer = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"],
                                          VisibilityTimeout=0, WaitTimeSeconds=0)  # undeleted: visible again
        return answer.get("Messages", [])

    def _event(self, messages: list[dict]) -> dict:
        return {"Records": [{
            "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
            "attributes": m["Attributes"], "messageAttributes": {}, "md5OfBody": m["MD5OfBody"],
            "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q",
            "awsRegion": "us-east-1"} for m in messages]}

    def receive(self):
        def ack(record):
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=record["receiptHandle"])
        return self._event(self._receive(self.queue_url)), ack

    def run_dead_letters(self) -> bool:
        messages = self._receive(self.dlq_url)
        if not messages:
            return False
        answer = self.worker_app.dead_letter_handler(self._event(messages), self.context)
        failed = {item["itemIdentifier"] for item in answer["batchItemFailures"]}
        for message in messages:
            if message["MessageId"] not in failed:
                self.sqs.delete_message(QueueUrl=self.dlq_url, ReceiptHandle=message["ReceiptHandle"])
        return True

    def messages_left(self) -> int:
        return sqs_messages_left(self.sqs, self.queue_url, self.dlq_url)


class LocalWorld(World):
    def __init__(self, *args):
        super().__init__(*args)
        self.queue = self.runtime.backends.queue  # unwrapped: the harness's own view of the queue

    def receive(self):
        messages = self.queue.receive(max_messages=10, visibility_timeout=0)
        return to_sqs_event(messages), lambda record: self.queue.delete(record["receiptHandle"])

    def run_dead_letters(self) -> bool:  # what WorkerLoop does with the local dead letters
        dead = self.queue.dead_letters()
        for letter in dead:
            self.worker_app.get_worker().fail_dead_letter(letter["body"], letter["receive_count"])
            self.queue.delete_dead_letter(letter["message_id"])
        return bool(dead)

    def messages_left(self) -> int:
        with self.queue._db.transaction() as db:
            return (db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
                    + db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0])


@pytest.fixture
def make_world(tmp_path, fake_engine, api_handler, worker_handler, lambda_context, api_event, monkeypatch):
    """make_world(kind) -> a context manager yielding a fresh World (its own moto account or data dir)."""
    monkeypatch.setattr("diarizer_service.webhooks.BACKOFF_SECONDS", 0.0)
    counter = iter(range(10_000))

    @contextlib.contextmanager
    def make(kind: str):
        receiver = ScriptedReceiver([])
        try:
            if kind == "moto":
                with mock_aws():
                    sqs = boto3.client("sqs", region_name="us-east-1")
                    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
                    dlq_url = sqs.create_queue(QueueName="dlq")["QueueUrl"]
                    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
                    queue_url = sqs.create_queue(QueueName="jobs", Attributes={"RedrivePolicy": json.dumps(
                        {"deadLetterTargetArn": dlq_arn["Attributes"]["QueueArn"], "maxReceiveCount": "3"})})[
                        "QueueUrl"]
                    create_tables(boto3.resource("dynamodb", region_name="us-east-1"))
                    settings = load_settings({
                        "DIARIZER_BACKEND": "aws", "DIARIZER_BUCKET": BUCKET, "DIARIZER_QUEUE_URL": queue_url,
                        "DIARIZER_JOBS_TABLE": JOBS_TABLE, "DIARIZER_KEYS_TABLE": KEYS_TABLE,
                        "DIARIZER_ALLOW_LOCAL_WEBHOOKS": "true", "DIARIZER_WEBHOOK_TIMEOUT_SECONDS": "2"})
                    runtime = Runtime(settings, create_backends(settings), probe=default_probe,
                                      engine_factory=lambda: fake_engine)
                    set_runtime(runtime)
                    yield MotoWorld(runtime, api_handler, worker_handler, receiver, lambda_context, api_event,
                                    sqs=sqs, queue_url=queue_url, dlq_url=dlq_url)
            else:
                settings = load_settings({"DIARIZER_BACKEND": "local", "DIARIZER_WEBHOOK_TIMEOUT_SECONDS": "2",
                                          "DIARIZER_DATA_DIR": str(tmp_path / f"data-{next(counter)}")})
                runtime = Runtime(settings, create_backends(settings), probe=default_probe,
                                  engine_factory=lambda: fake_engine)
                set_runtime(runtime)
                yield LocalWorld(runtime, api_handler, worker_handler, receiver, lambda_context, api_event)
        finally:
            set_runtime(None)
            receiver.close()
    return make


# ------------------------------------------------------------------------------------------- one life
def live(world: World, audio: bytes, plan: CrashPlan, *, client_retries: bool) -> bool:
    """Submit (and retry like a client), then let redelivery, the dead-letter function and the sweeper run
    until nothing moves. Returns whether the client was ever told 200."""
    world.arm(plan)
    accepted = False
    for _ in range(3 if client_retries else 1):
        try:
            status, _ = world.submit(audio)
        except Crash:
            continue  # the connection dropped: the client saw no answer
        if status == 200:
            accepted = True
            break
    plan.submit_calls = len(plan.calls)
    for step in range(40):
        try:
            if world.run_worker_once() or world.run_dead_letters():
                continue
            world.sweep(now=time.time() + (step + 1) * DAY)  # nothing visible: let time pass, the sweeper runs
            if not world.run_worker_once() and world.messages_left() == 0:
                break
        except Crash:
            continue  # the worker (or sweeper) died: its message comes back, the record waits in the outbox
    return accepted


def check_end_state(world: World, plan: CrashPlan, accepted: bool, expected: str) -> list[str]:
    problems = []
    status = world.status()
    hooks = [(headers, body) for _, headers, body in world.receiver.hits]
    if status["http"] == 404:
        if accepted:
            problems.append("the client was told 200 but the job does not exist")
        if hooks:
            problems.append("a webhook for a job that does not exist")
    else:
        if status.get("status") != expected:
            problems.append(f"status {status.get('status')!r}, expected {expected!r}: {status}")
        if plan.finishes() != 1:
            problems.append(f"finished {plan.finishes()} times")
        if not hooks:
            problems.append("no webhook was delivered")
        if status.get("webhook", {}).get("state") != "delivered":
            problems.append(f"webhook state {status.get('webhook')}")
        ids = {headers["webhook-id"] for headers, _ in hooks}
        if len(ids) > 1:
            problems.append(f"several webhook-ids: {ids}")
        if len({body for _, body in hooks}) > 1:
            problems.append("webhook bodies differ between deliveries")
        for headers, body in hooks:
            if not verify_signature(world.key.record.webhook_secret, headers, body):
                problems.append("a webhook with a bad signature")
            payload = json.loads(body)
            if payload.get("request_id") != REQUEST_ID or ("response" if expected == "done" else "error") not in payload:
                problems.append(f"wrong webhook body {payload}")
    if world.messages_left():
        problems.append(f"{world.messages_left()} message(s) left in the queues")
    overdue = world.runtime.jobs.list_due(time.time() + 100 * DAY, 10)
    if overdue:
        problems.append(f"records left in the outbox: {[(j.status, j.webhook_state) for j in overdue]}")
    return problems


@pytest.mark.parametrize("kind", ["moto", "local"])
@pytest.mark.parametrize("outcome", ["done", "failed"])
@pytest.mark.parametrize("client_retries", [True, False], ids=["client-retries", "client-gives-up"])
def test_a_crash_after_any_side_effect_loses_no_job_and_no_webhook(make_world, fake_engine, wav_bytes, kind,
                                                                    outcome, client_retries):
    audio = wav_bytes(1.0)
    fake_engine.fail_with = AudioDecodeError("corrupt frame") if outcome == "failed" else None
    with make_world(kind) as world:  # a life without a crash: count the side effects
        plan = CrashPlan(None)
        assert live(world, audio, plan, client_retries=client_retries)
        side_effects = [name for name, *_ in plan.calls]
        assert check_end_state(world, plan, True, outcome) == []
    assert "webhook.post" in side_effects and "queue.send" in side_effects and "jobs.create" in side_effects
    if not client_retries:  # past the submit, whether the client retries changes nothing
        side_effects = side_effects[:plan.submit_calls]

    failures = {}
    for n in range(1, len(side_effects) + 1):
        with make_world(kind) as world:
            plan = CrashPlan(n)
            accepted = live(world, audio, plan, client_retries=client_retries)
            assert plan.crashed_at is not None
            problems = check_end_state(world, plan, accepted, outcome)
            if client_retries and not accepted:
                problems.append("the client's retries never got a 200")
            if problems:
                failures[f"after #{n} {plan.crashed_at}"] = problems
    assert failures == {}, json.dumps(failures, indent=1)
