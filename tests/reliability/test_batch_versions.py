"""Batch objects (incoming/<path>) replaced, failing or sharing a message, on moto S3/SQS with fixed interleavings:

* a new version that fails must not leave the previous version's results/<path>.json, which reads as "done";
* a run that started from an older version writes nothing once a newer version was uploaded (the newer
  version's own event writes its results), whether it finishes, fails, or read the newer body by accident;
* one record failing every time in a multi-record message does not keep the others from being diarized;
* results/foo.error.json is both incoming/foo's error record and incoming/foo.error's result: the worker
  deletes it only as the error record of the object it is about.
"""
from __future__ import annotations

import json

import pytest

from diarizer.types import AudioDecodeError
from diarizer_service.worker import Worker
from flow.conftest import BUCKET


def _s3_message(*keys: str) -> str:
    """An S3 notification for the objects as they are now (S3 quotes keys like quote_plus)."""
    from urllib.parse import quote_plus

    return json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                                    "s3": {"bucket": {"name": BUCKET},
                                           "object": {"key": quote_plus(key, safe="/"), "eTag": ""}}}
                                   for key in keys]})


def _sqs_event(body: str, receive_count: int = 1) -> dict:
    return {"Records": [{"messageId": f"m-{receive_count}", "receiptHandle": "r", "body": body,
                         "attributes": {"ApproximateReceiveCount": str(receive_count)}, "messageAttributes": {},
                         "md5OfBody": "", "eventSource": "aws:sqs", "awsRegion": "us-east-1",
                         "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:diarizer-jobs"}]}


def _results(stack) -> set[str]:
    return {o["Key"] for o in stack.s3.list_objects_v2(Bucket=BUCKET, Prefix="results/").get("Contents", [])}


def _etag(stack, key: str) -> str:
    return stack.s3.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')


def _result(stack, base: str) -> tuple[dict, str, str]:
    """(results/<base>.json body, its source-etag, results/<base>.rttm text)."""
    answer = stack.s3.get_object(Bucket=BUCKET, Key=f"results/{base}.json")
    rttm = stack.s3.get_object(Bucket=BUCKET, Key=f"results/{base}.rttm")["Body"].read().decode()
    return json.loads(answer["Body"].read()), answer["Metadata"]["source-etag"], rttm


def _error(stack, base: str) -> dict:
    return json.loads(stack.s3.get_object(Bucket=BUCKET, Key=f"results/{base}.error.json")["Body"].read())


def _speakers(rttm: str) -> set[str]:
    return {line.split()[7] for line in rttm.splitlines()}


# ------------------------------------------------------------------------------------------ bug 1
def test_a_failed_new_version_removes_the_previous_versions_result(stack, worker_handler, wav_bytes):
    stack.s3.put_object(Bucket=BUCKET, Key="incoming/call.wav", Body=wav_bytes(2.0), Metadata={"speakers": "2"})
    assert worker_handler.lambda_handler(_sqs_event(_s3_message("incoming/call.wav")), stack.context) == {
        "batchItemFailures": []}
    assert _results(stack) == {"results/call.wav.json", "results/call.wav.rttm"}

    stack.s3.put_object(Bucket=BUCKET, Key="incoming/call.wav", Body=b"definitely not audio")  # version 2
    assert worker_handler.lambda_handler(_sqs_event(_s3_message("incoming/call.wav")), stack.context) == {
        "batchItemFailures": []}

    # Only the error record: nothing that reads as "done" for version 2.
    assert _results(stack) == {"results/call.wav.error.json"}
    record = _error(stack, "call.wav")
    assert record["source"] == "incoming/call.wav" and record["error"]["code"] == "unsupported_audio"

    stack.s3.put_object(Bucket=BUCKET, Key="incoming/call.wav", Body=wav_bytes(1.0), Metadata={"speakers": "3"})
    worker_handler.lambda_handler(_sqs_event(_s3_message("incoming/call.wav")), stack.context)
    body, source_etag, rttm = _result(stack, "call.wav")  # version 3 succeeds: its own error record is cleared
    assert _results(stack) == {"results/call.wav.json", "results/call.wav.rttm"}
    assert source_etag == _etag(stack, "incoming/call.wav") and body["num_speakers"] == 3


# ------------------------------------------------------------------------------------------ bug 2
def test_a_slow_older_version_does_not_overwrite_the_newer_versions_result(stack, wav_bytes, fake_engine,
                                                                          monkeypatch):
    stack.s3.put_object(Bucket=BUCKET, Key="incoming/m.wav", Body=wav_bytes(2.0), Metadata={"speakers": "2"})
    worker_a, worker_b = Worker(stack.runtime), Worker(stack.runtime)
    real_diarize = stack.runtime.diarize  # around the runtime's engine lock, which B needs too
    raced = []

    def diarize(audio, options, *, max_seconds):
        if not raced:  # worker A, in the engine with version 1: version 2 arrives and B finishes it
            raced.append(True)
            stack.s3.put_object(Bucket=BUCKET, Key="incoming/m.wav", Body=wav_bytes(3.0),
                                Metadata={"speakers": "3"})
            worker_b.handle_message(_s3_message("incoming/m.wav"), 1)
        return real_diarize(audio, options, max_seconds=max_seconds)

    monkeypatch.setattr(stack.runtime, "diarize", diarize)
    worker_a.handle_message(_s3_message("incoming/m.wav"), 1)

    assert fake_engine.calls == 2  # A did run the engine on version 1; its answer is dropped, not written
    assert [r["num_speakers"] for r in fake_engine.results] == [3, 2]  # B (v2), then A (v1)
    body, source_etag, rttm = _result(stack, "m.wav")
    assert _results(stack) == {"results/m.wav.json", "results/m.wav.rttm"}
    assert source_etag == _etag(stack, "incoming/m.wav")
    assert body == fake_engine.results[0] and _speakers(rttm) == {"speaker1", "speaker2", "speaker3"}


def test_a_body_read_after_a_newer_upload_is_not_diarized_under_the_older_etag(stack, wav_bytes, fake_engine,
                                                                              monkeypatch):
    """The head saw version 1, the get returned version 2 (uploaded and finished by B in between)."""
    stack.s3.put_object(Bucket=BUCKET, Key="incoming/m.wav", Body=wav_bytes(2.0), Metadata={"speakers": "2"})
    blobs = stack.runtime.backends.blobs
    real_get = blobs.get
    replaced = []

    def get(key, **kwargs):
        if key == "incoming/m.wav" and not replaced:
            replaced.append(True)
            stack.s3.put_object(Bucket=BUCKET, Key=key, Body=wav_bytes(3.0), Metadata={"speakers": "3"})
            Worker(stack.runtime).handle_message(_s3_message(key), 1)
        return real_get(key, **kwargs)

    monkeypatch.setattr(blobs, "get", get)
    Worker(stack.runtime).handle_message(_s3_message("incoming/m.wav"), 1)

    assert fake_engine.calls == 1  # B's only: A noticed the version change before spending the engine on it
    body, source_etag, _ = _result(stack, "m.wav")
    assert source_etag == _etag(stack, "incoming/m.wav") and body == fake_engine.results[0]
    assert body["num_speakers"] == 3 and _results(stack) == {"results/m.wav.json", "results/m.wav.rttm"}


@pytest.mark.parametrize("failure", ["permanent", "transient-last-attempt"])
def test_an_older_version_that_fails_writes_no_error_record_over_a_newer_success(stack, wav_bytes, fake_engine,
                                                                                monkeypatch, failure):
    stack.s3.put_object(Bucket=BUCKET, Key="incoming/m.wav", Body=wav_bytes(2.0))
    real_diarize = stack.runtime.diarize
    receive_count = 1 if failure == "permanent" else stack.runtime.settings.max_receive_count
    raced = []

    def diarize(audio, options, *, max_seconds):
        if not raced:  # worker A: version 2 arrives and B finishes it, then A's run fails
            raced.append(True)
            stack.s3.put_object(Bucket=BUCKET, Key="incoming/m.wav", Body=wav_bytes(3.0))
            Worker(stack.runtime).handle_message(_s3_message("incoming/m.wav"), 1)
            raise AudioDecodeError("version 1 is unreadable") if failure == "permanent" else RuntimeError("gone")
        return real_diarize(audio, options, max_seconds=max_seconds)

    monkeypatch.setattr(stack.runtime, "diarize", diarize)
    if failure == "permanent":
        Worker(stack.runtime).handle_message(_s3_message("incoming/m.wav"), receive_count)
    else:  # still raised: SQS redelivers, and the retry sees the newer version already done
        with pytest.raises(RuntimeError):
            Worker(stack.runtime).handle_message(_s3_message("incoming/m.wav"), receive_count)

    assert fake_engine.calls == 1  # B's
    assert _results(stack) == {"results/m.wav.json", "results/m.wav.rttm"}  # no error record for version 1
    body, source_etag, _ = _result(stack, "m.wav")
    assert source_etag == _etag(stack, "incoming/m.wav") and body == fake_engine.results[0]


# ------------------------------------------------------------------------------------------ bug 3
def test_a_record_failing_every_time_does_not_keep_the_others_of_its_message_from_being_diarized(
        stack, worker_handler, wav_bytes, fake_engine):
    bad, good = wav_bytes(1.0), wav_bytes(2.0)
    stack.s3.put_object(Bucket=BUCKET, Key="incoming/a.wav", Body=bad)
    stack.s3.put_object(Bucket=BUCKET, Key="incoming/b.wav", Body=good)
    real_diarize = fake_engine.diarize
    engine_inputs = []

    def diarize(audio, options, *, max_seconds):
        engine_inputs.append("a" if audio == bad else "b")
        if audio == bad:
            raise RuntimeError("transient, every time, on a.wav")
        return real_diarize(audio, options, max_seconds=max_seconds)

    fake_engine.diarize = diarize
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=_s3_message("incoming/a.wav", "incoming/b.wav"))
    for attempt in (1, 2, 3):  # each receive fails the message (a.wav), which SQS makes visible again
        event = stack.receive_sqs_event()
        assert [r["attributes"]["ApproximateReceiveCount"] for r in event["Records"]] == [str(attempt)]
        answer = stack.run_worker(worker_handler, event)
        assert answer == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
        stack.sqs.change_message_visibility(QueueUrl=stack.queue_url,
                                            ReceiptHandle=event["Records"][0]["receiptHandle"], VisibilityTimeout=0)
    # b.wav diarized on the first receive and skipped on the retries (its result is for this version).
    assert engine_inputs == ["a", "b", "a", "a"]
    assert _results(stack) == {"results/b.wav.json", "results/b.wav.rttm", "results/a.wav.error.json"}
    b_result = _result(stack, "b.wav")
    assert b_result[1] == _etag(stack, "incoming/b.wav") and b_result[0] == fake_engine.results[0]
    record = _error(stack, "a.wav")
    assert record["source"] == "incoming/a.wav" and record["error"]["code"] == "processing_failed"
    assert "3 attempts" in record["error"]["message"] and "RuntimeError" in record["error"]["message"]

    assert stack.receive_sqs_event()["Records"] == []  # moved to the dead-letter queue by the redrive policy
    dead = stack.sqs.receive_message(QueueUrl=stack.dlq_url, AttributeNames=["All"])["Messages"]
    assert len(dead) == 1
    assert worker_handler.dead_letter_handler(_sqs_event(dead[0]["Body"], 3), stack.context) == {
        "batchItemFailures": []}
    # The dead letter fails a.wav only: b.wav's result is current, so no "gave up" record for it.
    assert _results(stack) == {"results/b.wav.json", "results/b.wav.rttm", "results/a.wav.error.json"}
    assert _result(stack, "b.wav") == b_result and _error(stack, "a.wav")["source"] == "incoming/a.wav"


# ------------------------------------------------------------------------------------------ bug 5
def test_results_foo_error_json_is_deleted_only_as_the_error_record_of_incoming_foo(stack, wav_bytes):
    worker = Worker(stack.runtime)
    stack.s3.put_object(Bucket=BUCKET, Key="incoming/foo.error", Body=wav_bytes(1.0))
    worker.handle_message(_s3_message("incoming/foo.error"), 1)
    foo_error_result = _result(stack, "foo.error")

    stack.s3.put_object(Bucket=BUCKET, Key="incoming/foo", Body=wav_bytes(2.0))
    worker.handle_message(_s3_message("incoming/foo"), 1)

    # incoming/foo's success leaves incoming/foo.error's result (not an error record of incoming/foo) alone.
    assert _results(stack) == {"results/foo.error.json", "results/foo.error.rttm",
                               "results/foo.json", "results/foo.rttm"}
    assert _result(stack, "foo.error") == foo_error_result
    assert foo_error_result[1] == _etag(stack, "incoming/foo.error")

    # And a failing incoming/foo.error leaves results/foo.error.json in place when it is incoming/foo's error
    # record (no source-etag), while incoming/foo's real error record is still deleted by its next success.
    stack.s3.put_object(Bucket=BUCKET, Key="incoming/foo", Body=b"not audio")
    worker.handle_message(_s3_message("incoming/foo"), 1)
    assert _error(stack, "foo")["source"] == "incoming/foo"  # (it replaced incoming/foo.error's result)
    stack.s3.put_object(Bucket=BUCKET, Key="incoming/foo.error", Body=b"not audio either")
    worker.handle_message(_s3_message("incoming/foo.error"), 1)
    assert _error(stack, "foo")["source"] == "incoming/foo"
    assert _error(stack, "foo.error")["source"] == "incoming/foo.error"
    stack.s3.put_object(Bucket=BUCKET, Key="incoming/foo", Body=wav_bytes(1.0))
    worker.handle_message(_s3_message("incoming/foo"), 1)
    assert "results/foo.error.json" not in _results(stack)
    assert _result(stack, "foo")[1] == _etag(stack, "incoming/foo")
