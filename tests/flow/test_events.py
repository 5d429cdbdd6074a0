"""Every sample event in events/ goes through its handler (moto, the example key seeded)."""
import dataclasses
import importlib.util
import json
import socket
import time
from pathlib import Path

import pytest

from diarizer_service import webhooks
from diarizer_service.auth import ApiKey, hash_api_key
from diarizer_service.webhooks import generate_webhook_secret

EVENTS = Path(__file__).resolve().parents[2] / "events"
_spec = importlib.util.spec_from_file_location("diarizer_event_examples", EVENTS / "make_events.py")
examples = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(examples)
BUCKET = examples.EXAMPLE_BUCKET


def event(name: str) -> dict:
    return json.loads((EVENTS / name).read_text())


@pytest.fixture
def seeded(stack, monkeypatch):
    """The example key in the keys table; example.com 'resolves' to a public address; posts are recorded."""
    assert stack.runtime.settings.bucket == BUCKET  # the flow stack uses the events' bucket name
    stack.runtime.backends.keys.put(ApiKey(key_hash=hash_api_key(examples.EXAMPLE_API_KEY), key_id=examples.EXAMPLE_KEY_ID,
                                           name="sam local", created_at=int(time.time()),
                                           webhook_secret=generate_webhook_secret()).to_item())
    monkeypatch.setattr(socket, "getaddrinfo",
                        lambda host, port, *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port))])
    posted = []

    def record_post(target, body, headers, timeout):
        posted.append((target, json.loads(body)))
        return 204

    monkeypatch.setattr(webhooks, "_post_once", record_post)
    stack.runtime.settings = dataclasses.replace(stack.runtime.settings, allow_local_webhooks=False)
    return posted


def invoke(handler, name, stack):
    answer = handler.lambda_handler(event(name), stack.context)
    return answer["statusCode"], json.loads(answer["body"])


def test_async_status_upload_and_job_events(stack, seeded, api_handler, worker_handler, fake_engine):
    assert invoke(api_handler, "api-v2-async-diarize.json", stack) == (200, {"request_id": "sam-local-1", "api": "diarize"})
    assert invoke(api_handler, "api-v1-async-diarize.json", stack) == (200, {"request_id": "sam-local-v1", "api": "diarize"})
    status, job = invoke(api_handler, "api-v2-job-status.json", stack)
    assert status == 200 and job["status"] == "queued"
    status, upload = invoke(api_handler, "api-v2-uploads.json", stack)
    assert status == 200 and upload["upload_url"].startswith("https://")

    answer = worker_handler.lambda_handler(event("sqs-job.json"), stack.context)
    assert answer == {"batchItemFailures": []}
    [(target, payload)] = seeded
    assert (target.host, target.address, target.path) == ("example.com", "93.184.215.14", "/diarize-webhook")
    assert payload["request_id"] == "sam-local-1" and payload["response"] == fake_engine.results[-1]
    status, job = invoke(api_handler, "api-v2-job-status.json", stack)
    assert job["status"] == "done" and job["webhook"]["delivered"] is True


def test_s3_event_wrapped_in_sqs(stack, seeded, worker_handler, fake_engine):
    stack.s3.put_object(Bucket=BUCKET, Key="incoming/sam local/sample.wav", Body=examples.one_second_wav())
    answer = worker_handler.lambda_handler(event("sqs-s3-incoming.json"), stack.context)
    assert answer == {"batchItemFailures": []}
    result = json.loads(stack.s3.get_object(Bucket=BUCKET, Key="results/sam local/sample.wav.json")["Body"].read())
    assert result == fake_engine.results[-1]  # the engine's answer for this object's second of audio
    assert result["segments"][-1]["end"] == pytest.approx(1.0)


def test_transcoder_events(stack, seeded, api_handler, transcode_handler, worker_handler, fake_engine):
    """TranscodeFunction's sample messages: the job's audio and the batch object each become a FLAC, and the
    worker takes them from there."""
    assert invoke(api_handler, "api-v2-async-diarize.json", stack)[0] == 200
    assert transcode_handler.lambda_handler(event("sqs-transcode-job.json"), stack.context) == {"batchItemFailures": []}
    job = stack.runtime.jobs.get(f"{examples.EXAMPLE_KEY_ID}#{examples.REQUEST_ID}")
    assert job.audio_key.endswith("/audio.transcoded.flac")
    assert stack.s3.get_object(Bucket=BUCKET, Key=job.audio_key)["Body"].read(4) == b"fLaC"
    assert worker_handler.lambda_handler(event("sqs-job.json"), stack.context) == {"batchItemFailures": []}
    assert stack.runtime.jobs.get(job.job_id).status == "done" and len(seeded) == 1

    stack.s3.put_object(Bucket=BUCKET, Key=examples.BATCH_KEY, Body=examples.one_second_wav())
    answer = transcode_handler.lambda_handler(event("sqs-transcode-batch-object.json"), stack.context)
    assert answer == {"batchItemFailures": []}
    assert stack.run_worker(worker_handler) == {"batchItemFailures": []}  # the transcoder's answer, and the job's
    result = json.loads(stack.s3.get_object(Bucket=BUCKET, Key="results/sam local/sample.wav.json")["Body"].read())
    assert result["segments"][-1]["end"] == pytest.approx(1.0)


def test_sync_events_with_the_real_engine(stack, seeded, api_handler, real_engine):
    stack.runtime.engine_factory = lambda: real_engine
    status, diarized = invoke(api_handler, "api-v2-sync-diarize.json", stack)
    assert status == 200 and set(diarized) == {"num_speakers", "segments"}
    status, segments = invoke(api_handler, "api-v1-sync-diarize.json", stack)
    assert status == 200 and isinstance(segments, list)


def test_voiceprint_events_with_the_real_engine(stack, seeded, api_handler, real_engine):
    stack.runtime.engine_factory = lambda: real_engine
    status, error = invoke(api_handler, "api-v2-voiceprints-delete.json", stack)
    assert status == 404 and error["error"]["code"] == "voiceprint_not_found"
    status, enrolled = invoke(api_handler, "api-v2-voiceprints-enroll.json", stack)
    assert status == 200 and enrolled["name"] == "alice" and enrolled["seconds"] >= 5
    status, listed = invoke(api_handler, "api-v2-voiceprints-list.json", stack)
    assert status == 200 and [v["voiceprint_id"] for v in listed["voiceprints"]] == [enrolled["voiceprint_id"]]
    item = stack.runtime.backends.voiceprints.get(examples.EXAMPLE_KEY_ID, enrolled["voiceprint_id"])
    stack.runtime.backends.voiceprints.put({**item, "voiceprint_id": examples.VOICEPRINT_ID})
    assert invoke(api_handler, "api-v2-voiceprints-delete.json", stack) == (
        200, {"voiceprint_id": examples.VOICEPRINT_ID, "deleted": True})


def test_events_match_the_generator():
    names = {p.name for p in EVENTS.glob("*.json")}
    assert names == {"api-v2-async-diarize.json", "api-v1-async-diarize.json", "api-v2-sync-diarize.json",
                     "api-v1-sync-diarize.json", "api-v2-job-status.json", "api-v2-uploads.json", "sqs-job.json",
                     "sqs-s3-incoming.json", "api-v2-voiceprints-enroll.json", "api-v2-voiceprints-list.json",
                     "api-v2-voiceprints-delete.json", "sqs-transcode-job.json", "sqs-transcode-batch-object.json"}
