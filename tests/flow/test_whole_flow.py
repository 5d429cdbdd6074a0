"""The real thing: API handler -> S3/DynamoDB/SQS (moto) -> worker handler with the real engine -> webhook,
checked against the bundled recordings' reference RTTMs (demo/*.rttm), not against a fake engine's constant."""
import base64
import json
from pathlib import Path

import pytest

from diarizer_service.webhooks import verify_signature

ASYNC = "/audio/generic/api/v2/async/diarize"
DEMO = Path(__file__).resolve().parents[2] / "demo"


def demo_der(name: str, segments: list[dict], duration: float) -> float:
    """Diarization error rate of the service's segments against demo/<name>.rttm (0.25 s collar)."""
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    reference, hypothesis = Annotation(), Annotation()
    for line in (DEMO / f"{name}.rttm").read_text().splitlines():
        fields = line.split()
        start, length = float(fields[3]), float(fields[4])
        reference[Segment(start, start + length)] = fields[7]
    for segment in segments:
        hypothesis[Segment(segment["start"], segment["end"])] = segment["speaker_id"]
    return DiarizationErrorRate(collar=0.25)(reference, hypothesis, uem=Segment(0, duration))


def reference_speakers(name: str) -> int:
    return len({line.split()[7] for line in (DEMO / f"{name}.rttm").read_text().splitlines()})


@pytest.fixture
def engine_stack(stack, real_engine):
    stack.runtime.engine_factory = lambda: real_engine
    return stack


@pytest.mark.parametrize("name", ["two-speakers", "three-speakers"])
def test_async_request_to_signed_webhook_with_the_real_engine(engine_stack, api_handler, worker_handler,
                                                              webhook_receiver, name):
    """speakers -1: the engine finds how many speakers there are; the answer must match the reference."""
    stack = engine_stack
    recording = (DEMO / f"{name}.flac").read_bytes()
    body = {"content": base64.b64encode(recording).decode(), "sampleRate": 16000, "encoding": "FLAC",
            "languageCode": "en-US", "speakers": -1, "audioType": "default", "vad": True}
    status, reply = stack.call_api("POST", ASYNC, query={"webhook": webhook_receiver.url, "request_id": "meeting-1"},
                                   body=body, handler=api_handler)
    assert (status, reply) == (200, {"request_id": "meeting-1", "api": "diarize"})

    key_id = stack.key.record.key_id
    item = stack.job_item("meeting-1")
    assert item["audio_key"].startswith(f"jobs/{key_id}/meeting-1/audio-")
    audio = stack.s3.get_object(Bucket=stack.runtime.settings.bucket, Key=item["audio_key"])
    assert audio["Body"].read() == recording and audio["ServerSideEncryption"] == "aws:kms"
    assert item["status"] == "queued" and int(item["expires_at"]) > int(item["created_at"])

    event = stack.receive_sqs_event()
    assert [json.loads(r["body"]) for r in event["Records"]] == [{"job_id": f"{key_id}#meeting-1"}]
    assert stack.run_worker(worker_handler, event) == {"batchItemFailures": []}

    [hit] = webhook_receiver.received
    assert verify_signature(stack.key.record.webhook_secret, hit.headers, hit.body)
    payload = hit.json()
    assert set(payload) == {"request_id", "response"} and payload["request_id"] == "meeting-1"
    response = payload["response"]
    speakers = reference_speakers(name)
    assert set(response) == {"num_speakers", "segments"} and response["num_speakers"] == speakers
    assert {s["speaker_id"] for s in response["segments"]} == {f"speaker{i + 1}" for i in range(speakers)}
    duration = stack.job_item("meeting-1")["audio_seconds"]
    assert all(set(s) == {"speaker_id", "start", "end"} and 0 <= s["start"] < s["end"] <= float(duration) + 0.01
               for s in response["segments"])
    assert demo_der(name, response["segments"], float(duration)) < 0.15  # who spoke when, not just how many

    assert stack.job_item("meeting-1")["status"] == "done"
    stored = stack.s3.get_object(Bucket=stack.runtime.settings.bucket, Key=stack.job_item("meeting-1")["result_key"])
    assert json.loads(stored["Body"].read()) == response
    status, job = stack.call_api("GET", f"{ASYNC}/meeting-1", handler=api_handler)
    assert status == 200 and job["status"] == "done" and job["response"] == response
    assert job["webhook"]["delivered"] is True


def test_batch_upload_to_results_with_the_real_engine(engine_stack, worker_handler, demo_two_speakers):
    stack = engine_stack
    bucket = stack.runtime.settings.bucket
    queue_arn = stack.sqs.get_queue_attributes(QueueUrl=stack.queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    stack.s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [{
        "QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"],
        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "incoming/"}]}}}]})
    stack.s3.put_object(Bucket=bucket, Key="incoming/team call/demo.flac", Body=demo_two_speakers,
                        Metadata={"speakers": "2"})

    answer = stack.run_worker(worker_handler)  # S3's s3:TestEvent (if sent) and the ObjectCreated event
    assert answer == {"batchItemFailures": []}

    result = json.loads(stack.s3.get_object(Bucket=bucket, Key="results/team call/demo.flac.json")["Body"].read())
    assert result["num_speakers"] == 2
    assert demo_der("two-speakers", result["segments"], result["segments"][-1]["end"]) < 0.15
    rttm = stack.s3.get_object(Bucket=bucket, Key="results/team call/demo.flac.rttm")["Body"].read().decode()
    lines = rttm.splitlines()
    assert len(lines) == len(result["segments"]) and all(line.split()[1] == "team_call_demo.flac" for line in lines)


def test_sync_routes_with_the_real_engine(engine_stack, api_handler, demo_two_speakers):
    body = {"content": base64.b64encode(demo_two_speakers).decode(), "speakers": 2}
    status, diarized = engine_stack.call_api("POST", "/audio/generic/api/v2/sync/diarize", body=body, handler=api_handler)
    assert status == 200 and diarized["num_speakers"] == 2
    status, segments = engine_stack.call_api("POST", "/audio/generic/api/v1/sync/diarize", body=body, handler=api_handler)
    assert status == 200 and isinstance(segments, list)
    assert {s["speaker_id"] for s in segments} == {1, 2}


def test_librispeech_conversation_through_the_service(engine_stack, api_handler, worker_handler, webhook_receiver,
                                                      libri_pool):
    import audio_factory

    samples, turns = audio_factory.conversation_from_pool(libri_pool, 2, seed=1, seconds=20)
    audio = audio_factory.encode(samples, format="FLAC")
    status, _ = engine_stack.call_api("POST", ASYNC, query={"webhook": webhook_receiver.url, "request_id": "libri"},
                                      body={"content": base64.b64encode(audio).decode()}, handler=api_handler)
    assert status == 200
    assert engine_stack.run_worker(worker_handler) == {"batchItemFailures": []}
    [hit] = webhook_receiver.received
    assert verify_signature(engine_stack.key.record.webhook_secret, hit.headers, hit.body)
    assert hit.json()["response"]["num_speakers"] == len({label for _, _, label in turns}) == 2
