import base64
import json
import time

import pytest

from diarizer_service import api
from diarizer_service.jobs import make_job_id
from diarizer_service.webhooks import deliver, verify_signature
from diarizer_service.worker import Worker


@pytest.fixture
def worker(runtime):
    return Worker(runtime)


def queue_job(runtime, key, audio, webhook, request_id="r-1", **extra):
    api.submit_async(runtime, key, json.dumps({"content": base64.b64encode(audio).decode(), **extra}), False,
                     {"webhook": webhook, "request_id": request_id})
    [message] = runtime.backends.queue.receive()
    return message.body


def test_job_runs_stores_results_and_sends_a_signed_webhook(runtime, worker, key, wav_bytes, webhook_receiver):
    body = queue_job(runtime, key, wav_bytes(2.0), webhook_receiver.url, speakers=2)
    worker.handle_message(body, receive_count=1)
    job = runtime.jobs.get(make_job_id(key.key_id, "r-1"))
    assert job.status == "done" and job.attempts == 1 and job.audio_seconds == pytest.approx(2.0)
    assert job.result_key.startswith(f"jobs/{key.key_id}/r-1/result-") and job.result_key.endswith(".json")
    stored = json.loads(runtime.backends.blobs.get(job.result_key))
    assert stored == job.result and stored["num_speakers"] == 2
    rttm = runtime.backends.blobs.get(job.rttm_key).decode()
    assert rttm.startswith("SPEAKER r-1 1 0.000 ")
    [hit] = webhook_receiver.received
    assert verify_signature(key.webhook_secret, hit.headers, hit.body)
    assert hit.json() == {"request_id": "r-1", "response": stored}
    assert job.webhook_delivery == {"delivered": True, "attempts": 1, "status": 200, "rounds": 1}
    assert job.webhook_state == "delivered" and job.outbox is None  # nothing left for the sweeper


def test_duplicate_delivery_runs_once_and_notifies_once(runtime, worker, key, wav_bytes, webhook_receiver, fake_engine):
    body = queue_job(runtime, key, wav_bytes(1.0), webhook_receiver.url)
    worker.handle_message(body, receive_count=1)
    worker.handle_message(body, receive_count=2)
    assert fake_engine.calls == 1 and len(webhook_receiver.received) == 1


def test_bad_audio_fails_the_job_with_a_reason_and_notifies(runtime, worker, key, wav_bytes, webhook_receiver):
    body = queue_job(runtime, key, wav_bytes(1.0), webhook_receiver.url)
    job_id = json.loads(body)["job_id"]
    runtime.backends.blobs.put(runtime.jobs.get(job_id).audio_key, b"garbage, not audio")
    worker.handle_message(body, receive_count=1)  # consumed: no exception, no retry
    job = runtime.jobs.get(job_id)
    assert job.status == "failed" and job.error["code"] == "unsupported_audio"
    assert "decoded" in job.error["message"]
    assert webhook_receiver.received[0].json() == {"request_id": "r-1", "error": job.error}


def test_transient_errors_retry_then_fail_on_the_last_receive(runtime, worker, key, wav_bytes, webhook_receiver,
                                                               fake_engine):
    body = queue_job(runtime, key, wav_bytes(1.0), webhook_receiver.url)
    job_id = json.loads(body)["job_id"]
    fake_engine.fail_with = RuntimeError("engine crashed")
    with pytest.raises(RuntimeError):
        worker.handle_message(body, receive_count=1)
    assert runtime.jobs.get(job_id).status == "running" and webhook_receiver.received == []
    with pytest.raises(RuntimeError):  # still raised: the message goes on to the DLQ
        worker.handle_message(body, receive_count=3)
    job = runtime.jobs.get(job_id)
    assert job.status == "failed" and job.error["code"] == "processing_failed" and "3 attempts" in job.error["message"]
    assert webhook_receiver.received[0].json()["error"]["code"] == "processing_failed"


def test_webhook_down_leaves_the_job_done_with_its_result(runtime, worker, key, wav_bytes, webhook_receiver):
    webhook_receiver.statuses = [503, 503, 503]
    worker.deliver = lambda *args, **kwargs: deliver(*args, sleep=lambda seconds: None, **kwargs)
    body = queue_job(runtime, key, wav_bytes(1.0), webhook_receiver.url)
    worker.handle_message(body, receive_count=1)
    job = runtime.jobs.get(json.loads(body)["job_id"])
    assert job.status == "done" and job.result["num_speakers"] == 2
    assert job.webhook_delivery == {"delivered": False, "attempts": 3, "status": 503, "error": "HTTP 503",
                                    "rounds": 1}
    assert job.webhook_state == "pending" and job.outbox == "due"  # the sweeper tries again later
    assert job.outbox_at >= time.time() + runtime.settings.sweep_after_seconds - 5
    assert api.job_status(runtime, key, "r-1")["response"] == job.result


def test_missing_job_and_garbage_messages_are_dropped(worker, runtime, fake_engine, caplog):
    """Dropped means: returns normally (the message is deleted, not retried into the DLQ), runs nothing, writes
    nothing, and says why in the log."""
    caplog.set_level("INFO")
    for body, reason in ((json.dumps({"job_id": "nobody#nothing"}), "no job record"),
                         ("not json", "no shape"), (json.dumps([1, 2]), "no shape"), ('{"job_id": ""}', "no shape"),
                         (json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}), "s3:TestEvent"),
                         (json.dumps({"something": "else"}), "unknown shape")):
        caplog.clear()
        assert worker.handle_message(body, 1) is None
        assert any(reason in record.getMessage() for record in caplog.records), (body, caplog.text)
    assert fake_engine.calls == 0 and runtime.jobs.get("nobody#nothing") is None
    root = runtime.backends.blobs.root
    assert not root.exists() or list(root.rglob("*")) == []


def s3_event(key: str, bucket: str = "") -> str:
    return json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                                    "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 1}}}]})


def test_batch_object_with_metadata_options(runtime, worker, wav_bytes, fake_engine):
    runtime.backends.blobs.put("incoming/calls/day 1.wav", wav_bytes(2.0), metadata={"speakers": "3"})
    worker.handle_message(s3_event("incoming/calls/day+1.wav"), 1)  # S3 events URL-encode keys
    result = json.loads(runtime.backends.blobs.get("results/calls/day 1.wav.json"))
    assert result["num_speakers"] == 3
    rttm = runtime.backends.blobs.get("results/calls/day 1.wav.rttm").decode()
    assert rttm.split()[1] == "calls_day_1.wav"
    worker.handle_message(s3_event("incoming/calls/day+1.wav"), 2)  # duplicate event: not run again
    assert fake_engine.calls == 1


def test_batch_failures_write_an_error_file(runtime, worker, wav_bytes):
    runtime.backends.blobs.put("incoming/bad.wav", b"not audio at all")
    runtime.backends.blobs.put("incoming/opts.wav", wav_bytes(1.0), metadata={"min-speakers": "5", "max-speakers": "2"})
    worker.handle_message(s3_event("incoming/bad.wav"), 1)
    worker.handle_message(s3_event("incoming/opts.wav"), 1)
    bad = json.loads(runtime.backends.blobs.get("results/bad.wav.error.json"))
    assert bad["source"] == "incoming/bad.wav" and bad["error"]["code"] == "unsupported_audio"
    opts = json.loads(runtime.backends.blobs.get("results/opts.wav.error.json"))
    assert opts["error"]["code"] == "invalid_options" and "min_speakers" in opts["error"]["message"]
    assert runtime.backends.blobs.head("results/bad.wav.json") is None


def test_batch_ignores_objects_outside_incoming(runtime, worker, wav_bytes, fake_engine):
    runtime.backends.blobs.put("elsewhere/a.wav", wav_bytes(1.0))
    worker.handle_message(s3_event("elsewhere/a.wav"), 1)
    worker.handle_message(s3_event("incoming/"), 1)
    assert fake_engine.calls == 0
