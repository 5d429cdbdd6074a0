"""The crash-point harness for the S3 batch path: the worker (or the dead-letter function) dies right after each
side effect of one batch object's life, and the results under results/ must still end right.

How: as in test_crash_points.py, every backend object (blobs, queue, jobs, keys) is wrapped so that the Nth
call goes through and then raises `Crash`, a BaseException no handler catches. The batch path reaches S3 only
through `backends.blobs` (head/get/put/delete), so every S3 read and write the worker and the dead-letter
function make is a crash point. Then the world goes on as on AWS: moto S3 sends the bucket's notification
(template.yaml: s3:ObjectCreated:* under incoming/ -> JobsQueue) when the user uploads; the event source
mapping hands the message to the worker handler and deletes it unless it is reported in batchItemFailures;
an undeleted message comes back (after 3 receives the redrive policy moves it to the DLQ, whose
DeadLetterFunction runs the same way). Each function runs with its template.yaml S3 rights (the dead-letter
function cannot read incoming/). The life ends when nothing moves.

For every N, the end state must be: exactly one of results/<path>.json (done) or results/<path>.error.json
(failed), matching the outcome; a done result's `source-etag` is the current version's and its .json and
.rttm are that version's diarization (no stale .rttm, no leftover error record); a failed object has its
well-formed error record (`source` and `error.code`/`message`: error records name no version) and nothing
else under results/, no .rttm either; no message left in the queue or the DLQ.

Histories: a new object; a new version of an object whose previous version is done, or failed; and a new
version uploaded while the first version's engine runs. Outcomes: the engine succeeds; it cannot decode the
audio (permanent); it raises every time (transient: given up on the last receive); it kills the worker every
time (only the dead-letter function writes the error record).

Moto only: local mode (`diarize serve`) has no batch path, nothing turns files under incoming/ into messages.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import re
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from diarizer.types import AudioDecodeError, Diarization, DiarizationOptions
from diarizer_service.backends import Backends
from diarizer_service.backends.aws import DynamoJobTable, DynamoKeyStore, S3BlobStore, SqsJobQueue
from diarizer_service.runtime import Runtime, default_probe, set_runtime
from diarizer_service.settings import load_settings
from flow.conftest import JOBS_TABLE, KEYS_TABLE, create_tables
from reliability.helpers import sqs_messages_left
from reliability.test_crash_points import Crash, CrashPlan, Crashing

REPO_ROOT = Path(__file__).resolve().parents[2]
KEY = "incoming/2026/call one.wav"  # a folder and a space: the notification quotes the key (quote_plus)
BASE = "results/2026/call one.wav"
FILE_ID = "2026_call_one.wav"  # the RTTM file id: the path with "/" and spaces as "_"


class Killed(BaseException):
    """The engine takes the worker down (out of memory, Lambda timeout): nothing after it runs."""


# template.yaml: the S3 actions each function's role allows under the batch path's prefixes (HeadObject needs
# s3:GetObject). The DeadLetterFunction may not read incoming/: it judges a dead letter by the event's eTag.
RIGHTS = {
    "worker": {"get_object": ("incoming/", "results/", "jobs/"), "put_object": ("results/",),
               "delete_object": ("results/",)},
    "dead-letter": {"get_object": ("results/",), "put_object": ("results/",), "delete_object": ("results/",)},
    "transcoder": {"get_object": ("jobs/", "uploads/", "incoming/"), "put_object": ("jobs/",),
                   "delete_object": ("jobs/",)},
}


class RoleS3:
    """The S3 client as the function now running sees it: AccessDenied outside its role's rights."""

    def __init__(self, client):
        self._client, self.role = client, "worker"

    def __getattr__(self, name):
        call = getattr(self._client, name)
        action = "get_object" if name == "head_object" else name
        if action not in ("get_object", "put_object", "delete_object"):
            return call

        def guarded(**kwargs):
            if not kwargs["Key"].startswith(RIGHTS[self.role][action]):
                code = "403" if name == "head_object" else "AccessDenied"  # HEAD answers carry no error body
                raise ClientError({"Error": {"Code": code, "Message": "Access Denied"}}, name)
            return call(**kwargs)
        return guarded


class BatchWorld:
    """One moto account: the bucket with its incoming/ notification, the queue and its DLQ, the real handlers."""

    def __init__(self, runtime: Runtime, role_s3: RoleS3, worker_app, transcoder_app, context, s3, sqs,
                 queue_url: str, transcode_url: str, dlq_url: str):
        self.runtime, self.role_s3, self.worker_app, self.context = runtime, role_s3, worker_app, context
        self.transcoder_app = transcoder_app
        self.bucket = runtime.settings.bucket
        self.s3, self.sqs, self.queue_url, self.transcode_url, self.dlq_url = s3, sqs, queue_url, transcode_url, dlq_url
        self.invocations: list[str] = []  # the roles of the function invocations, in order
        self.failure: type[BaseException] | None = None  # the engine raises a new one of these on every call
        self.during_engine: list = []  # things that happen while the engine runs (once each, in order)
        real_diarize = runtime.diarize

        def diarize(audio, options, *, max_seconds):
            if self.during_engine:
                self.during_engine.pop(0)()
            if self.failure is not None:
                raise self.failure("the engine failed")
            return real_diarize(audio, options, max_seconds=max_seconds)
        runtime.diarize = diarize

    def arm(self, plan: CrashPlan) -> None:
        real = self.runtime.backends
        self.runtime.backends = dataclasses.replace(real, **{name: Crashing(getattr(real, name), name, plan)
                                                            for name in ("blobs", "queue", "jobs", "keys",
                                                                         "transcode_queue")})

    def upload(self, body: bytes, speakers: int | None = None) -> None:
        """The user's upload (not a crash point): S3 sends the ObjectCreated notification to the queue."""
        metadata = {"speakers": str(speakers)} if speakers else {}
        self.s3.put_object(Bucket=self.bucket, Key=KEY, Body=body, Metadata=metadata)

    def etag(self) -> str:
        return self.s3.head_object(Bucket=self.bucket, Key=KEY)["ETag"].strip('"')

    # ---- what Lambda's SQS pollers do
    def _receive(self, url: str) -> tuple[dict, list[dict]]:
        messages = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"],
                                            VisibilityTimeout=0, WaitTimeSeconds=0).get("Messages", [])
        return {"Records": [{
            "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
            "attributes": m["Attributes"], "messageAttributes": {}, "md5OfBody": m["MD5OfBody"],
            "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q",
            "awsRegion": "us-east-1"} for m in messages]}, messages

    def _invoke(self, url: str, role: str, handler) -> bool:
        """One invocation on the visible messages; False when there were none. A Crash or Killed propagates:
        nothing is deleted, the messages come back."""
        event, messages = self._receive(url)
        if not messages:
            return False
        self.invocations.append(role)
        self.role_s3.role = role
        try:
            answer = handler(event, self.context)
        finally:
            self.role_s3.role = "worker"
        failed = {item["itemIdentifier"] for item in answer["batchItemFailures"]}
        for message in messages:
            if message["MessageId"] not in failed:
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        return True

    def run_worker_once(self) -> bool:
        return self._invoke(self.queue_url, "worker", self.worker_app.lambda_handler)

    def run_dead_letters(self) -> bool:
        return self._invoke(self.dlq_url, "dead-letter", self.worker_app.dead_letter_handler)

    def run_transcoder_once(self) -> bool:
        return self._invoke(self.transcode_url, "transcoder", self.transcoder_app.lambda_handler)

    def messages_left(self) -> int:
        return sqs_messages_left(self.sqs, self.queue_url, self.transcode_url, self.dlq_url)

    def results(self) -> dict[str, tuple[bytes, dict]]:
        """Every object under results/: key -> (body, user metadata)."""
        found = {}
        for item in self.s3.list_objects_v2(Bucket=self.bucket, Prefix="results/").get("Contents", []):
            answer = self.s3.get_object(Bucket=self.bucket, Key=item["Key"])
            found[item["Key"]] = (answer["Body"].read(), answer["Metadata"])
        return found


@pytest.fixture(scope="module")
def moto_account():
    """One moto account for the module, its clients and tables made once: each world gets its own resources."""
    with mock_aws():
        dynamodb = boto3.resource("dynamodb", region_name="us-east-1")
        create_tables(dynamodb)  # no job records on the batch path: a call to the tables would be a crash point
        yield boto3.client("s3", region_name="us-east-1"), boto3.client("sqs", region_name="us-east-1"), dynamodb


_world_numbers = itertools.count()


@pytest.fixture
def make_world(moto_account, fake_engine, worker_handler, transcode_handler, lambda_context):
    """make_world() -> a context manager yielding a fresh BatchWorld: its own bucket, queue and DLQ."""
    s3, sqs, dynamodb = moto_account

    @contextlib.contextmanager
    def make():
        n = next(_world_numbers)
        bucket = f"diarizer-batch-{n}"
        s3.create_bucket(Bucket=bucket)
        dlq_url = sqs.create_queue(QueueName=f"dlq-{n}")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        queue_url = sqs.create_queue(QueueName=f"jobs-{n}", Attributes={"RedrivePolicy": json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"})})["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        transcode_url = sqs.create_queue(QueueName=f"transcode-{n}", Attributes={"RedrivePolicy": json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"})})["QueueUrl"]
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={  # as template.yaml
            "QueueConfigurations": [{"QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"], "Filter": {
                "Key": {"FilterRules": [{"Name": "prefix", "Value": "incoming/"}]}}}]})
        sqs.purge_queue(QueueUrl=queue_url)  # the s3:TestEvent S3 sends on configuring the notification
        settings = load_settings({"DIARIZER_BACKEND": "aws", "DIARIZER_BUCKET": bucket,
                                  "DIARIZER_QUEUE_URL": queue_url, "DIARIZER_JOBS_TABLE": JOBS_TABLE,
                                  "DIARIZER_KEYS_TABLE": KEYS_TABLE})
        # create_aws_backends' classes, on the account's clients (new clients would take most of the time)
        role_s3 = RoleS3(s3)
        backends = Backends(blobs=S3BlobStore(bucket, client=role_s3), queue=SqsJobQueue(queue_url, client=sqs),
                            jobs=DynamoJobTable(JOBS_TABLE, dynamodb), keys=DynamoKeyStore(KEYS_TABLE, dynamodb),
                            transcode_queue=SqsJobQueue(transcode_url, client=sqs))
        runtime = Runtime(settings, backends, probe=default_probe, engine_factory=lambda: fake_engine)
        set_runtime(runtime)
        try:
            yield BatchWorld(runtime, role_s3, worker_handler, transcode_handler, lambda_context, s3, sqs, queue_url,
                             transcode_url, dlq_url)
        finally:
            set_runtime(None)
    return make


def live(world: BatchWorld, plan: CrashPlan | None = None) -> bool:
    """Redelivery and the dead-letter function until nothing moves; False if it never settles."""
    if plan is not None:
        world.arm(plan)
    for _ in range(60):
        try:
            if not (world.run_worker_once() or world.run_transcoder_once() or world.run_dead_letters()):
                return True
        except (Crash, Killed):
            continue  # the function died: its messages come back
    return False


# ------------------------------------------------------------------------------------------- end states
OUTCOMES = {  # what the engine raises on every call -> (error code, words of its message); None: done
    "done": (None, None),
    "undecodable": (AudioDecodeError, ("unsupported_audio", "could not be decoded")),
    "raises": (RuntimeError, ("processing_failed", "Gave up after")),  # the worker's, then the DLQ's words
    "killed": (Killed, ("processing_failed", "the worker stopped or crashed")),
}


def check_end_state(world: BatchWorld, outcome: str, expected: Diarization) -> list[str]:
    problems = []
    results = world.results()
    error = OUTCOMES[outcome][1]
    if error is None:
        if set(results) != {f"{BASE}.json", f"{BASE}.rttm"}:
            problems.append(f"results/ holds {sorted(results)}, expected the .json and .rttm only")
        if f"{BASE}.json" in results:
            body, metadata = results[f"{BASE}.json"]
            if metadata.get("source-etag") != world.etag():
                problems.append(f"the .json names version {metadata.get('source-etag')}, not {world.etag()}")
            if json.loads(body) != expected.to_dict():
                problems.append(f"the .json is not the current version's diarization: {body[:200]!r}")
        if f"{BASE}.rttm" in results and results[f"{BASE}.rttm"][0].decode() != expected.to_rttm(FILE_ID):
            problems.append(f"the .rttm is not the current version's: {results[f'{BASE}.rttm'][0][:200]!r}")
    else:
        if set(results) != {f"{BASE}.error.json"}:
            problems.append(f"results/ holds {sorted(results)}, expected the error record only")
        if f"{BASE}.error.json" in results:
            record = json.loads(results[f"{BASE}.error.json"][0])
            code, words = error
            if (record.get("source") != KEY or set(record) != {"source", "error"}
                    or record["error"].get("code") != code or words not in record["error"].get("message", "")):
                problems.append(f"error record {record}, expected source {KEY!r}, code {code!r}, '{words}...'")
    if world.messages_left():
        problems.append(f"{world.messages_left()} message(s) left in the queue and the DLQ")
    return problems


# ------------------------------------------------------------------------------------------- the test
HISTORIES = ["new", "after-done", "after-failed", "replaced-in-flight"]


def begin(world: BatchWorld, history: str, audio: dict[int, bytes]) -> None:
    """Everything before the life under test, unarmed: version 1 and its results; version 2 uploaded (or, for
    replaced-in-flight, uploaded while the engine runs on version 1)."""
    if history == "after-done":
        world.upload(audio[1], speakers=2)
        assert live(world) and set(world.results()) == {f"{BASE}.json", f"{BASE}.rttm"}
    elif history == "after-failed":
        world.upload(b"RIFF, but not audio")
        assert live(world) and set(world.results()) == {f"{BASE}.error.json"}
    elif history == "replaced-in-flight":
        world.upload(audio[1], speakers=2)
        world.during_engine.append(lambda: world.upload(audio[2], speakers=3))
        return
    world.upload(audio[2], speakers=3)


def expected_writes(history: str, outcome: str) -> set[tuple[str, str]]:
    """The writes a life without a crash must make, at least: each is a crash point."""
    if outcome == "done":
        writes = {("blobs.put", f"{BASE}.rttm"), ("blobs.put", f"{BASE}.json")}
        if history == "after-failed":
            writes.add(("blobs.delete", f"{BASE}.error.json"))
        return writes
    writes = {("blobs.put", f"{BASE}.error.json")}
    if history == "after-done":  # version 1's result would still read as done
        writes |= {("blobs.delete", f"{BASE}.json"), ("blobs.delete", f"{BASE}.rttm")}
    return writes


@pytest.mark.parametrize("history", HISTORIES)
@pytest.mark.parametrize("outcome", list(OUTCOMES))
def test_a_crash_after_any_side_effect_of_a_batch_object_still_ends_with_its_one_result(
        make_world, fake_engine, wav_bytes, history, outcome):
    audio = {1: wav_bytes(1.0), 2: wav_bytes(2.0)}
    # what the engine answers for version 2 (speakers=3 from its metadata); version 1 would have 2 speakers
    expected = fake_engine.diarize(audio[2], DiarizationOptions(speakers=3), max_seconds=60.0)

    def one_life(plan: CrashPlan) -> tuple[list[str], list[str]]:
        with make_world() as world:
            begin(world, history, audio)
            world.failure = OUTCOMES[outcome][0]
            settled = live(world, plan)
            problems = ([] if settled else ["never settled"]) + check_end_state(world, outcome, expected)
            return problems, world.invocations

    plan = CrashPlan(None)  # a life without a crash: count the side effects
    problems, invocations = one_life(plan)
    assert problems == []
    side_effects = [name for name, *_ in plan.calls]
    writes = {(name, args[0]) for name, args, *_ in plan.calls if name in ("blobs.put", "blobs.delete")}
    assert expected_writes(history, outcome) <= writes, side_effects
    assert side_effects.count("blobs.head") >= 3, side_effects  # the object, its result, the version re-check
    if outcome in ("raises", "killed"):  # the worker gave up: the dead-letter function's calls are crash points too
        assert invocations.count("worker") >= 3 and "dead-letter" in invocations, invocations

    failures = {}
    for n in range(1, len(side_effects) + 1):
        plan = CrashPlan(n)
        problems, _ = one_life(plan)
        assert plan.crashed_at is not None
        if problems:
            failures[f"after #{n} {plan.crashed_at}"] = problems
    assert failures == {}, json.dumps(failures, indent=1)


def test_a_late_dead_letter_of_an_old_version_leaves_the_newer_versions_result(make_world, fake_engine, wav_bytes):
    """Version 1 kills the worker on every receive; version 2 is uploaded and finished before version 1's dead
    letter is handled. The dead-letter function may not read incoming/, so it used to judge by the event's eTag:
    version 2's good result looked stale to it, was deleted, and "gave up" was written in its place."""
    audio = {1: wav_bytes(1.0), 2: wav_bytes(2.0)}
    expected = fake_engine.diarize(audio[2], DiarizationOptions(speakers=3), max_seconds=60.0)
    with make_world() as world:
        world.upload(audio[1], speakers=2)
        world.failure = Killed
        for _ in range(3):
            with pytest.raises(Killed):
                world.run_worker_once()
        world.failure = None
        world.upload(audio[2], speakers=3)
        while world.run_worker_once():  # version 1's message moves to the DLQ; version 2 is diarized
            pass
        assert set(world.results()) == {f"{BASE}.json", f"{BASE}.rttm"}
        assert world.run_dead_letters()  # now version 1's dead letter
        assert "dead-letter" in world.invocations
        assert check_end_state(world, "done", expected) == []


# ------------------------------------------------------------------------------------------- container formats
@pytest.fixture(scope="module")
def m4a(tmp_path_factory) -> bytes:
    """A real M4A (AAC), as a phone's recorder writes it: the worker has no PyAV on AWS and forwards it."""
    from media_factory import make_media

    return make_media(REPO_ROOT / "demo" / "two-speakers.flac", "m4a", tmp_path_factory.mktemp("m4a")).read_bytes()


CONTAINER_OUTCOMES = {  # -> the files under results/ at the end
    "done": {f"{BASE}.json", f"{BASE}.rttm"},
    "undecodable": {f"{BASE}.error.json"},  # the transcoder cannot decode it: the worker writes the record
    "killed": {f"{BASE}.error.json"},  # the engine kills the worker on the transcoded audio every time
}


def _comparable(results: dict[str, tuple[bytes, dict]]) -> dict:
    """Results as compared between lives: exact, but for the attempt count in a "Gave up after N attempts" record
    (a dead letter handled twice has been received once more)."""
    return {key: (re.sub(rb"after \d+ attempts", b"after N attempts", body), metadata)
            for key, (body, metadata) in results.items()}


@pytest.mark.parametrize("history", ["new", "after-done"])
@pytest.mark.parametrize("outcome", list(CONTAINER_OUTCOMES))
def test_a_crash_after_any_side_effect_of_a_container_object_still_ends_with_its_one_result(
        make_world, m4a, wav_bytes, outcome, history):
    """incoming/ -> worker (forwards) -> TranscodeFunction (FLAC under jobs/batch/) -> worker -> results/: every
    side effect of the three functions (the forward and the transcoder's messages included) is a crash point, and
    every life must end with the results of a life without a crash."""
    body = m4a[:3000] if outcome == "undecodable" else m4a

    def one_life(plan: CrashPlan) -> tuple[bool, dict, int, list[str], str]:
        with make_world() as world:
            if history == "after-done":  # version 1, a WAV, is done; version 2 is the M4A
                world.upload(wav_bytes(1.0), speakers=2)
                assert live(world) and set(world.results()) == {f"{BASE}.json", f"{BASE}.rttm"}
            world.failure = Killed if outcome == "killed" else None
            world.upload(body, speakers=3)
            settled = live(world, plan)
            return settled, world.results(), world.messages_left(), world.invocations, world.etag()

    plan = CrashPlan(None)
    settled, expected, left, invocations, etag = one_life(plan)
    assert settled and left == 0 and set(expected) == CONTAINER_OUTCOMES[outcome], (sorted(expected), invocations)
    if outcome == "done":  # the M4A's own diarization (3 speakers from its metadata), not version 1's
        body_json, metadata = expected[f"{BASE}.json"]
        assert metadata["source-etag"] == etag and json.loads(body_json)["num_speakers"] == 3
    assert "transcoder" in invocations
    side_effects = [name for name, *_ in plan.calls]
    assert "transcode_queue.send" in side_effects and "queue.send" in side_effects, side_effects
    if outcome == "done":
        assert ("blobs.put", f"{BASE}.json") in [(name, args[0]) for name, args, *_ in plan.calls if args]

    failures = {}
    for n in range(1, len(side_effects) + 1):
        plan = CrashPlan(n)
        settled, results, left, _, _ = one_life(plan)
        assert plan.crashed_at is not None
        problems = [] if settled else ["never settled"]
        if _comparable(results) != _comparable(expected):
            problems.append(f"results/ differs from a life without a crash: {sorted(results)}")
        if left:
            problems.append(f"{left} message(s) left")
        if problems:
            failures[f"after #{n} {plan.crashed_at}"] = problems
    assert failures == {}, json.dumps(failures, indent=1)
