"""M4A, MP4 and WebM on AWS (moto): API -> worker (forwards) -> TranscodeFunction (FLAC) -> worker -> webhook,
with the real engine, against the FLAC source's speakers; redelivery, broken files and no-PyAV API functions."""
from __future__ import annotations

import base64
import builtins
import json
from pathlib import Path

import audio_factory as af
import pytest
from media_factory import SPEECH_KINDS, frame_agreement, make_media

from diarizer_service.runtime import get_runtime, set_runtime
from diarizer_service.settings import get_settings
from diarizer_service.webhooks import verify_signature

ASYNC = "/audio/generic/api/v2/async/diarize"
THREE_SPEAKERS = Path(__file__).resolve().parents[2] / "demo" / "three-speakers.flac"


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("media")
    made = {kind: make_media(THREE_SPEAKERS, kind, out) for kind in ("m4a", "mp4", "webm", "ogg-opus", *SPEECH_KINDS)}
    # A FLAC with no length in its header (FFmpeg writing to a pipe): libsndfile cannot read it, the worker
    # has no PyAV, so it takes the transcoder's way like the containers.
    made["flac-no-length"] = out / "three-speakers-no-length.flac"
    made["flac-no-length"].write_bytes(af.flac_without_length(af.decode(THREE_SPEAKERS.read_bytes())[0]))
    return made


@pytest.fixture(scope="module")
def flac_result(real_engine) -> dict:
    from diarizer import DiarizationOptions

    return real_engine.diarize(THREE_SPEAKERS, DiarizationOptions()).to_dict()


@pytest.fixture
def transcode_stack(stack, real_engine, monkeypatch):
    """The stack with the template's TranscodeQueue (redrive to the same dead-letter queue) and the real engine."""
    dlq_arn = stack.sqs.get_queue_attributes(QueueUrl=stack.dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    stack.transcode_url = stack.sqs.create_queue(QueueName="diarizer-transcode", Attributes={
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"})})["QueueUrl"]
    monkeypatch.setenv("DIARIZER_TRANSCODE_QUEUE_URL", stack.transcode_url)
    get_settings.cache_clear()
    set_runtime(None)
    get_runtime().engine_factory = lambda: real_engine
    return stack


def receive(stack, queue_url: str) -> dict:
    answer = stack.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, AttributeNames=["All"],
                                       VisibilityTimeout=30)
    return {"Records": [{"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
                         "attributes": m["Attributes"], "messageAttributes": {}, "md5OfBody": m["MD5OfBody"],
                         "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:transcode",
                         "awsRegion": "us-east-1"} for m in answer.get("Messages", [])]}


def run_transcoder(stack, handler, event=None, *, delete: bool = True) -> dict:
    event = receive(stack, stack.transcode_url) if event is None else event
    answer = handler.lambda_handler(event, stack.context)
    if delete:
        for record in event["Records"]:
            stack.sqs.delete_message(QueueUrl=stack.transcode_url, ReceiptHandle=record["receiptHandle"])
    return answer


def without_pyav(monkeypatch):
    """What the API and worker functions see in Lambda: no `av` module."""
    real_import = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av" or name.startswith("av."):
            raise ImportError("No module named 'av'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    return lambda: monkeypatch.setattr(builtins, "__import__", real_import)


def same_speakers(result: dict, reference: dict) -> None:
    assert result["num_speakers"] == reference["num_speakers"] == 3
    spoken = {sid: sum(s["end"] - s["start"] for s in result["segments"] if s["speaker_id"] == sid)
              for sid in ("speaker1", "speaker2", "speaker3")}
    expected = {sid: sum(s["end"] - s["start"] for s in reference["segments"] if s["speaker_id"] == sid)
                for sid in ("speaker1", "speaker2", "speaker3")}
    for sid in expected:  # the same voices, in the same order of appearance, for about as long
        assert abs(spoken[sid] - expected[sid]) < 1.0, (sid, spoken, expected)


@pytest.mark.parametrize("kind", ["m4a", "mp4", "webm", "flac-no-length", "amr", "wma", "wav-g723"])
def test_container_audio_goes_through_the_transcoder_and_gives_the_flac_speakers(
        transcode_stack, api_handler, worker_handler, transcode_handler, webhook_receiver, media, flac_result,
        monkeypatch, kind):
    stack = transcode_stack
    restore = without_pyav(monkeypatch)  # the API function: no PyAV, the job is accepted for transcoding
    request_id = f"{kind}-1"
    if kind == "mp4":  # a big Teams recording comes through the uploads route
        status, upload = stack.call_api("POST", "/audio/generic/api/v2/uploads", handler=api_handler)
        assert status == 200
        key = f"uploads/{stack.key.record.key_id}/{upload['upload_id']}"
        stack.s3.put_object(Bucket=stack.runtime.settings.bucket, Key=key, Body=media[kind].read_bytes())
        body = {"upload_id": upload["upload_id"]}
    else:
        body = {"content": base64.b64encode(media[kind].read_bytes()).decode()}
    status, reply = stack.call_api("POST", ASYNC, query={"webhook": webhook_receiver.url, "request_id": request_id},
                                   body=body, handler=api_handler)
    assert status == 200, reply

    assert stack.run_worker(worker_handler) == {"batchItemFailures": []}  # the worker: forwards, no engine run
    assert webhook_receiver.received == [] and stack.job_item(request_id)["status"] == "running"
    restore()

    event = receive(stack, stack.transcode_url)
    assert [json.loads(r["body"]) for r in event["Records"]] == [
        {"job_id": f"{stack.key.record.key_id}#{request_id}"}]
    assert run_transcoder(stack, transcode_handler, event, delete=False) == {"batchItemFailures": []}
    item = stack.job_item(request_id)
    assert item["audio_key"].endswith("/audio.transcoded.flac")
    flac = stack.s3.get_object(Bucket=stack.runtime.settings.bucket, Key=item["audio_key"])["Body"].read()
    assert flac[:4] == b"fLaC"
    # Redelivered (the function died before SQS deleted the message): no second transcoding, same state.
    run_transcoder(stack, transcode_handler, event)
    assert stack.job_item(request_id)["audio_key"] == item["audio_key"]

    event = stack.receive_sqs_event()  # two worker messages, one per transcoder delivery
    assert len(event["Records"]) == 2
    stack.run_worker(worker_handler, event)
    [hit] = webhook_receiver.received  # exactly one webhook
    assert verify_signature(stack.key.record.webhook_secret, hit.headers, hit.body)
    if kind in SPEECH_KINDS:  # a speech codec (AMR, G.723.1: 8 kHz) keeps the voices and turns, not every edge
        assert hit.json()["response"]["num_speakers"] == 3
        assert frame_agreement(hit.json()["response"], flac_result) > 0.85
    else:
        same_speakers(hit.json()["response"], flac_result)
    assert stack.job_item(request_id)["status"] == "done"


def test_ogg_opus_is_decoded_by_the_worker_itself(transcode_stack, api_handler, worker_handler, webhook_receiver,
                                                  media, flac_result, monkeypatch):
    stack = transcode_stack
    without_pyav(monkeypatch)  # libsndfile reads Ogg/Opus: no transcoding, no PyAV anywhere on its way
    status, _ = stack.call_api("POST", ASYNC, query={"webhook": webhook_receiver.url, "request_id": "opus-1"},
                               body={"content": base64.b64encode(media["ogg-opus"].read_bytes()).decode()},
                               handler=api_handler)
    assert status == 200
    assert stack.run_worker(worker_handler) == {"batchItemFailures": []}
    assert receive(stack, stack.transcode_url)["Records"] == []
    [hit] = webhook_receiver.received
    same_speakers(hit.json()["response"], flac_result)


def refused_audio(stack, media, case: str, monkeypatch) -> tuple[bytes, str, str]:
    """(audio, the failure code it must get, a word of its message) for each way container audio is refused."""
    if case == "broken":  # the header claims MP4, the rest is zeros
        data = media["m4a"].read_bytes()
        return data[:64] + bytes(len(data) - 64), "unsupported_audio", "MP4/M4A"
    if case == "empty":  # a call recorder stopped at once: the magic line and no frames
        return b"#!AMR\n", "empty_audio", "no samples"
    monkeypatch.setenv("DIARIZER_MAX_AUDIO_SECONDS", "10")  # the 31 s recording is over it once decoded
    get_settings.cache_clear()
    stack.runtime.settings = get_settings()
    return media["amr"].read_bytes(), "audio_too_long", "longer than 10 s"


@pytest.mark.parametrize("case", ["broken", "empty", "too_long"])
def test_refused_container_audio_fails_the_job_with_the_workers_own_code(
        transcode_stack, api_handler, worker_handler, transcode_handler, webhook_receiver, media, monkeypatch, case):
    """The transcoder gives each refusal the code the worker gives it for WAV (not `unsupported_audio` for all)."""
    stack = transcode_stack
    audio, code, words = refused_audio(stack, media, case, monkeypatch)
    restore = without_pyav(monkeypatch)
    status, _ = stack.call_api("POST", ASYNC, query={"webhook": webhook_receiver.url, "request_id": "refused-1"},
                               body={"content": base64.b64encode(audio).decode()}, handler=api_handler)
    assert status == 200  # the API function has no PyAV: it cannot tell before the transcoder tries
    stack.run_worker(worker_handler)
    restore()
    assert run_transcoder(stack, transcode_handler) == {"batchItemFailures": []}
    item = stack.job_item("refused-1")
    assert item["status"] == "failed" and item["error"]["code"] == code
    assert words in item["error"]["message"]
    [hit] = webhook_receiver.received
    assert hit.json()["error"]["code"] == code
    assert receive(stack, stack.queue_url)["Records"] == []  # nothing left for the worker


def test_transcoded_audio_that_still_needs_the_transcoder_fails_instead_of_looping(
        transcode_stack, api_handler, worker_handler, transcode_handler, webhook_receiver, media, monkeypatch):
    """Should the transcoder ever hand back audio the worker would forward again, the two functions must not
    send the job to each other forever (each time on a fresh message, so it would never be dead-lettered)."""
    stack = transcode_stack
    restore = without_pyav(monkeypatch)
    status, _ = stack.call_api("POST", ASYNC, query={"webhook": webhook_receiver.url, "request_id": "loop-1"},
                               body={"content": base64.b64encode(media["webm"].read_bytes()).decode()},
                               handler=api_handler)
    assert status == 200
    stack.run_worker(worker_handler)
    restore()
    assert run_transcoder(stack, transcode_handler) == {"batchItemFailures": []}
    item = stack.job_item("loop-1")
    stack.s3.put_object(Bucket=stack.runtime.settings.bucket, Key=item["audio_key"], Body=media["webm"].read_bytes())
    without_pyav(monkeypatch)
    assert stack.run_worker(worker_handler) == {"batchItemFailures": []}
    assert receive(stack, stack.transcode_url)["Records"] == []  # not forwarded again
    item = stack.job_item("loop-1")
    assert item["status"] == "failed" and item["error"]["code"] == "unsupported_audio"
    [hit] = webhook_receiver.received
    assert hit.json()["error"]["code"] == "unsupported_audio"


def test_without_a_transcoder_the_api_names_the_formats(stack, api_handler, media, monkeypatch):
    without_pyav(monkeypatch)
    status, answer = stack.call_api("POST", "/audio/generic/api/v2/sync/diarize",
                                    body={"content": base64.b64encode(media["webm"].read_bytes()).decode()},
                                    handler=api_handler)
    assert status == 400 and answer["error"]["code"] == "unsupported_audio"
    assert "diarizer[transcode]" in answer["error"]["message"]
    status, answer = stack.call_api("POST", "/audio/generic/api/v2/sync/diarize",
                                    body={"content": base64.b64encode(b"MThd" + bytes(4000)).decode()},
                                    handler=api_handler)
    assert status == 400 and "WAV, FLAC" in answer["error"]["message"] and "M4A/AAC" in answer["error"]["message"]


@pytest.mark.parametrize("kind", ["m4a", "amr"])
def test_batch_objects_in_container_formats_go_through_the_transcoder(transcode_stack, worker_handler,
                                                                       transcode_handler, media, flac_result,
                                                                       monkeypatch, kind):
    """incoming/ -> worker (forwards) -> TranscodeFunction (FLAC under jobs/batch/) -> worker -> results/, as API
    jobs go; each function without what it would not have on AWS (no PyAV in the worker)."""
    stack = transcode_stack
    bucket, key = stack.runtime.settings.bucket, f"incoming/calls/memo.{kind}"
    stack.s3.put_object(Bucket=bucket, Key=key, Body=media[kind].read_bytes())
    etag = stack.s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    record = {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps({"Records": [record]}))
    restore = without_pyav(monkeypatch)
    assert stack.run_worker(worker_handler) == {"batchItemFailures": []}  # forwarded, nothing written yet
    restore()
    assert stack.s3.list_objects_v2(Bucket=bucket, Prefix="results/").get("KeyCount") == 0
    event = receive(stack, stack.transcode_url)
    assert [json.loads(r["body"]) for r in event["Records"]] == [{"batch_object": {"key": key, "etag": etag}}]
    assert run_transcoder(stack, transcode_handler, event, delete=False) == {"batchItemFailures": []}
    run_transcoder(stack, transcode_handler, event)  # redelivered: the FLAC is found, not made again
    flacs = stack.s3.list_objects_v2(Bucket=bucket, Prefix="jobs/batch/")["Contents"]
    assert len(flacs) == 1 and flacs[0]["Key"].endswith(f"-{etag}.flac")
    restore = without_pyav(monkeypatch)
    assert stack.run_worker(worker_handler) == {"batchItemFailures": []}  # both copies: one result
    restore()
    result = json.loads(stack.s3.get_object(Bucket=bucket, Key=f"results/calls/memo.{kind}.json")["Body"].read())
    head = stack.s3.head_object(Bucket=bucket, Key=f"results/calls/memo.{kind}.json")
    assert head["Metadata"]["source-etag"] == etag
    if kind == "amr":  # 8 kHz: the same voices and turns, not every edge
        assert result["num_speakers"] == 3 and frame_agreement(result, flac_result) > 0.85
    else:
        same_speakers(result, flac_result)
    rttm = stack.s3.get_object(Bucket=bucket, Key=f"results/calls/memo.{kind}.rttm")["Body"].read().decode()
    assert rttm.count("SPEAKER calls_memo." + kind) == len(result["segments"])


@pytest.mark.parametrize("case", ["broken", "empty", "too_long"])
def test_a_batch_object_the_transcoder_refuses_gets_an_error_record(transcode_stack, worker_handler,
                                                                    transcode_handler, media, monkeypatch, case):
    stack = transcode_stack
    audio, code, words = refused_audio(stack, media, case, monkeypatch)
    bucket, key = stack.runtime.settings.bucket, "incoming/refused.m4a"
    stack.s3.put_object(Bucket=bucket, Key=key, Body=audio)
    record = {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps({"Records": [record]}))
    restore = without_pyav(monkeypatch)
    stack.run_worker(worker_handler)
    restore()
    assert run_transcoder(stack, transcode_handler) == {"batchItemFailures": []}
    stack.run_worker(worker_handler)  # the transcoder may not write under results/: the worker writes the record
    error = json.loads(stack.s3.get_object(Bucket=bucket, Key="results/refused.m4a.error.json")["Body"].read())
    assert error["source"] == key and error["error"]["code"] == code
    assert words in error["error"]["message"]
    assert stack.s3.list_objects_v2(Bucket=bucket, Prefix="results/")["KeyCount"] == 1
