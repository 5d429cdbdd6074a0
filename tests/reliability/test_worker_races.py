"""Races and retries around the worker's outcome, each with a fixed interleaving on real backends:

* two workers run one job (a re-send by the sweeper, a redelivery while the first still runs) and their
  answers differ (a voiceprint enrolled or deleted in between): the loser of the conditional finish must not
  replace the winner's stored result, which the status route, the RTTM and the re-driven webhook read;
* a batch object replaced by a version that kills the worker every time: its dead letter must write the error
  record, even though the previous version's result is there;
* `diarize serve`: a dead letter whose handling failed once (database locked) is handled on a later poll.
"""
from __future__ import annotations

import base64
import json
import time

import pytest
from botocore.exceptions import ClientError

from diarizer.types import Diarization, Segment
from diarizer_service import api
from diarizer_service.auth import create_key
from diarizer_service.backends.local import FileBlobStore, create_local_backends
from diarizer_service.errors import BackendError
from diarizer_service.jobs import job_prefix, make_job_id
from diarizer_service.local_server.worker_loop import WorkerLoop, fail_dead_letter_job
from diarizer_service.runtime import Runtime, default_probe
from diarizer_service.settings import load_settings
from diarizer_service.sweeper import sweep
from diarizer_service.webhooks import verify_signature
from diarizer_service.worker import Worker
from flow.conftest import BUCKET

HOUR = 3600
WINNER = Diarization([Segment("speaker1", 0.0, 1.0)], 1.0)
LOSER = Diarization([Segment("speaker1", 0.0, 0.5), Segment("speaker2", 0.5, 1.0)], 1.0)


class _DeniedS3:
    """The S3 client as an IAM policy that lacks some (action, prefix) pairs sees it: AccessDenied there."""

    def __init__(self, client, denied: dict[str, str]):
        self._client, self._denied = client, denied

    def __getattr__(self, name):
        call = getattr(self._client, name)
        prefix = self._denied.get(name)
        if prefix is None:
            return call

        def guarded(**kwargs):
            if kwargs["Key"].startswith(prefix):
                code = "403" if name == "head_object" else "AccessDenied"  # HEAD answers carry no error body
                raise ClientError({"Error": {"Code": code, "Message": "Access Denied"}}, name)
            return call(**kwargs)
        return guarded


def _job_blobs(runtime: Runtime, prefix: str) -> set[str]:
    blobs = runtime.backends.blobs
    if isinstance(blobs, FileBlobStore):
        return {p.relative_to(blobs.root).as_posix() for p in (blobs.root / prefix).rglob("*")
                if p.is_file() and not p.name.endswith(".__meta__.json")}
    s3 = getattr(blobs._s3, "_client", blobs._s3)
    return {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])}


@pytest.fixture(params=["local", "aws"])
def race_runtime(request, tmp_path, monkeypatch):
    """A runtime on files + sqlite, or on moto with the WorkerFunction's S3 rights (no DeleteObject on jobs/)."""
    if request.param == "local":
        settings = load_settings({"DIARIZER_BACKEND": "local", "DIARIZER_DATA_DIR": str(tmp_path / "data")})
        return Runtime(settings=settings, backends=create_local_backends(settings), probe=default_probe)
    stack = request.getfixturevalue("stack")
    runtime = stack.runtime
    monkeypatch.setattr(runtime.backends.blobs, "_s3", _DeniedS3(runtime.backends.blobs._s3,
                                                                 {"delete_object": "jobs/"}))
    return runtime


@pytest.mark.parametrize("inline", [True, False], ids=["inline-result", "blob-only-result"])
def test_a_losing_duplicate_worker_leaves_the_winners_result(race_runtime, inline, wav_bytes, webhook_receiver,
                                                              monkeypatch):
    runtime = race_runtime
    monkeypatch.setattr("diarizer_service.webhooks.BACKOFF_SECONDS", 0.0)
    if not inline:  # a result over the record's limit: the status route reads the blob
        monkeypatch.setattr("diarizer_service.jobs.MAX_INLINE_RESULT_BYTES", 0)
    key = create_key(runtime.backends.keys, "race").record
    body = json.dumps({"content": base64.b64encode(wav_bytes(1.0)).decode()})
    api.submit_async(runtime, key, body, False, {"request_id": "dup", "webhook": webhook_receiver.url})
    message = json.dumps({"job_id": make_job_id(key.key_id, "dup")})
    webhook_receiver.statuses = [503, 503, 503]  # the winner's first round fails: the sweeper re-drives it

    answers = []

    def diarize(audio, options, *, max_seconds):  # the first worker is in the engine while the duplicate runs start to finish
        answers.append(len(answers))
        if len(answers) == 1:
            Worker(runtime).handle_message(message, 1)
            return LOSER
        return WINNER

    monkeypatch.setattr(runtime, "diarize", diarize)
    Worker(runtime).handle_message(message, 1)  # loses the finish: must not raise (no DeleteObject on AWS)
    assert len(answers) == 2
    sweep(Worker(runtime), now=time.time() + HOUR)

    job = runtime.jobs.get(make_job_id(key.key_id, "dup"))
    expected = WINNER.to_dict()
    assert job.status == "done" and job.webhook_state == "delivered" and job.outbox is None
    assert (job.result == expected) if inline else job.result is None
    assert json.loads(runtime.backends.blobs.get(job.result_key)) == expected
    assert runtime.backends.blobs.get(job.rttm_key).decode() == WINNER.to_rttm("dup")
    assert api.job_status(runtime, key, "dup")["response"] == expected
    hits = webhook_receiver.received
    assert len(hits) == 4 and {h.headers["webhook-id"] for h in hits} == {job.webhook_id}
    assert all(h.body == hits[0].body and verify_signature(key.webhook_secret, h.headers, h.body) for h in hits)
    assert hits[0].json() == {"request_id": "dup", "response": expected}
    results = _job_blobs(runtime, job_prefix(key.key_id, "dup")) - {job.audio_key}
    if isinstance(runtime.backends.blobs, FileBlobStore):
        assert results == {job.result_key, job.rttm_key}  # the loser removed its own blobs
    else:  # the worker may not delete under jobs/: the loser's blobs stay, unreferenced, until they expire
        assert len(results) == 4 and {job.result_key, job.rttm_key} < results


# ------------------------------------------------------------------------------------------ batch dead letters
def _sqs_event(body: str, receive_count: int = 3) -> dict:
    return {"Records": [{"messageId": f"m-{receive_count}", "receiptHandle": "r", "body": body,
                         "attributes": {"ApproximateReceiveCount": str(receive_count)}, "messageAttributes": {},
                         "md5OfBody": "", "eventSource": "aws:sqs", "awsRegion": "us-east-1",
                         "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:diarizer-dlq"}]}


def _s3_event(key: str, etag: str | None = None) -> str:
    obj = {"key": key, **({"eTag": etag} if etag else {})}
    return json.dumps({"Records": [{"eventName": "ObjectCreated:Put",
                                    "s3": {"bucket": {"name": BUCKET}, "object": obj}}]})


def _etag(stack, key: str) -> str:
    return stack.s3.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')


@pytest.mark.parametrize("head_allowed", [True, False], ids=["head-incoming", "no-read-on-incoming"])
def test_a_new_version_that_kills_the_worker_gets_its_error_record(stack, worker_handler, wav_bytes, monkeypatch,
                                                                   head_allowed):
    def results() -> set[str]:
        return {o["Key"] for o in stack.s3.list_objects_v2(Bucket=BUCKET, Prefix="results/")["Contents"]}

    stack.s3.put_object(Bucket=BUCKET, Key="incoming/call.wav", Body=wav_bytes(1.0))
    v1 = _s3_event("incoming/call.wav", _etag(stack, "incoming/call.wav"))
    assert worker_handler.lambda_handler(_sqs_event(v1, 1), stack.context) == {"batchItemFailures": []}
    if not head_allowed:  # from here on only the DeadLetterFunction runs: it may read results/, not incoming/
        blobs = stack.runtime.backends.blobs
        monkeypatch.setattr(blobs, "_s3", _DeniedS3(blobs._s3, {"head_object": "incoming/"}))
    # version 1's worker was killed before SQS deleted the message: its result stands, no error record
    assert worker_handler.dead_letter_handler(_sqs_event(v1), stack.context) == {"batchItemFailures": []}
    assert results() == {"results/call.wav.json", "results/call.wav.rttm"}
    old_result = stack.s3.get_object(Bucket=BUCKET, Key="results/call.wav.json")["Body"].read()

    stack.s3.put_object(Bucket=BUCKET, Key="incoming/call.wav", Body=wav_bytes(2.0))  # version 2 kills the worker
    v2 = _s3_event("incoming/call.wav", _etag(stack, "incoming/call.wav"))
    assert worker_handler.dead_letter_handler(_sqs_event(v2), stack.context) == {"batchItemFailures": []}

    # version 1's result goes: next to the error record it would still read as done for version 2
    assert results() == {"results/call.wav.error.json"}
    record = json.loads(stack.s3.get_object(Bucket=BUCKET, Key="results/call.wav.error.json")["Body"].read())
    assert record["source"] == "incoming/call.wav" and record["error"]["code"] == "processing_failed"
    assert "3 attempts" in record["error"]["message"]
    assert old_result  # it was there before version 2


# ------------------------------------------------------------------------------------------ local dead letters
def test_a_local_dead_letter_whose_handling_failed_once_is_handled_on_a_later_poll(tmp_path, wav_bytes,
                                                                                   webhook_receiver, monkeypatch):
    settings = load_settings({"DIARIZER_BACKEND": "local", "DIARIZER_DATA_DIR": str(tmp_path / "data"),
                              "DIARIZER_MAX_RECEIVE_COUNT": "1"})
    runtime = Runtime(settings=settings, backends=create_local_backends(settings), probe=default_probe)
    key = create_key(runtime.backends.keys, "k").record
    body = json.dumps({"content": base64.b64encode(wav_bytes(1.0)).decode()})
    api.submit_async(runtime, key, body, False, {"request_id": "doomed", "webhook": webhook_receiver.url})
    job_id = make_job_id(key.key_id, "doomed")
    queue = runtime.backends.queue
    queue.receive(max_messages=1, visibility_timeout=0)  # a worker took it ...
    assert runtime.jobs.start(runtime.jobs.get(job_id))  # ... started it and died: running, out of the outbox
    other = queue.send({"job_id": "k#other"})  # received on the same poll the dead letter is first seen

    worker, table, locked = Worker(runtime), runtime.backends.jobs, []
    real_get = table.get

    def get_once_locked(job_id_):
        if not locked:
            locked.append(job_id_)
            raise BackendError("sqlite failed: database is locked")
        return real_get(job_id_)

    monkeypatch.setattr(table, "get", get_once_locked)
    events, said = [], []
    loop = WorkerLoop(queue, lambda event, context: events.append(event) or {"batchItemFailures": []},
                      on_dead_letter=lambda dead: fail_dead_letter_job(worker, dead), retry_delay=0,
                      poll_interval=0, say=said.append)
    for _ in range(3):  # what _run does between polls
        try:
            loop.run_once()
        except BackendError as exc:
            said.append(f"raised: {exc}")

    assert locked == [job_id]
    assert [r["messageId"] for e in events for r in e["Records"]] == [other]  # not held up by the failure
    assert queue.dead_letters() == []
    job = runtime.jobs.get(job_id)
    assert job.status == "failed" and job.error["code"] == "processing_failed"
    assert job.webhook_state == "delivered" and job.outbox is None
    [hit] = webhook_receiver.received
    assert hit.json() == {"request_id": "doomed", "error": job.error}
    assert any("database is locked" in line for line in said)
