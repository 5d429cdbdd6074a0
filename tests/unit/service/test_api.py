import base64
import dataclasses
import json

import pytest

from diarizer_service import api
from diarizer_service.auth import create_key
from diarizer_service.errors import ApiError, BackendError
from diarizer_service.jobs import make_job_id


def body(audio: bytes, **extra) -> str:
    return json.dumps({"content": base64.b64encode(audio).decode(), **extra})


def submit(runtime, key, audio, query=None, **extra):
    query = {"webhook": "http://127.0.0.1:9/hook", "request_id": "r-1"} if query is None else query
    return api.submit_async(runtime, key, body(audio, **extra), False, query)


def api_error(fn, *args) -> ApiError:
    with pytest.raises(ApiError) as caught:
        fn(*args)
    return caught.value


def test_submit_stores_audio_job_and_message(runtime, key, wav_bytes):
    audio = wav_bytes(1.0)
    assert submit(runtime, key, audio, speakers=2) == {"request_id": "r-1", "api": "diarize"}
    job = runtime.jobs.get(make_job_id(key.key_id, "r-1"))
    assert job.status == "queued" and job.audio_key.startswith(f"jobs/{key.key_id}/r-1/audio-")  # one per attempt
    assert job.options["speakers"] == 2 and job.audio_format == "WAV" and job.audio_seconds == pytest.approx(1.0)
    assert runtime.backends.blobs.get(job.audio_key) == audio
    [message] = runtime.backends.queue.receive()
    assert json.loads(message.body) == {"job_id": job.job_id}


def test_same_request_id_twice_is_one_job(runtime, key, wav_bytes):
    first = submit(runtime, key, wav_bytes(1.0))
    assert submit(runtime, key, wav_bytes(1.0)) == first  # a retry of the same request
    assert len(runtime.backends.queue.receive(max_messages=10)) == 1
    assert runtime.jobs.get(make_job_id(key.key_id, "r-1")).audio_seconds == pytest.approx(1.0)


@pytest.mark.parametrize("change", ["audio", "speakers", "webhook"])
def test_a_request_id_used_again_for_another_request_is_a_409_not_a_silent_200(runtime, key, wav_bytes, change):
    """The DeepAffects sample code sends the constant request_id 'request_id_example': a second, different
    request under it must not be answered 200 and then dropped."""
    submit(runtime, key, wav_bytes(1.0), speakers=2)
    other = {"audio": (wav_bytes(2.0), None, {"speakers": 2}), "speakers": (wav_bytes(1.0), None, {"speakers": 3}),
             "webhook": (wav_bytes(1.0), {"webhook": "http://127.0.0.1:9/other", "request_id": "r-1"},
                         {"speakers": 2})}[change]
    error = api_error(lambda: submit(runtime, key, other[0], other[1], **other[2]))
    assert (error.status, error.code, error.field) == (409, "request_id_conflict", "request_id")
    assert "another request" in error.message
    job = runtime.jobs.get(make_job_id(key.key_id, "r-1"))
    assert job.options["speakers"] == 2 and job.audio_seconds == pytest.approx(1.0)  # the first stands
    assert len(runtime.backends.queue.receive(max_messages=10)) == 1


def test_a_retry_of_a_job_whose_message_was_never_sent_sends_it(runtime, key, wav_bytes, monkeypatch):
    """The first submit died between writing the job and sending its message (here: the send raised a
    BaseException, as a killed process would): the client's retry with the same request_id sends it."""
    class Killed(BaseException):
        pass

    def die(body):
        raise Killed
    with monkeypatch.context() as patched:
        patched.setattr(runtime.backends.queue, "send", die)
        with pytest.raises(Killed):
            submit(runtime, key, wav_bytes(1.0))
    job = runtime.jobs.get(make_job_id(key.key_id, "r-1"))
    assert job.status == "queued" and runtime.backends.queue.receive(max_messages=10) == []
    assert submit(runtime, key, wav_bytes(1.0)) == {"request_id": "r-1", "api": "diarize"}
    [message] = runtime.backends.queue.receive(max_messages=10)
    assert json.loads(message.body) == {"job_id": job.job_id}
    assert runtime.jobs.get(job.job_id).webhook_id == job.webhook_id  # the same job, not a new one
    assert submit(runtime, key, wav_bytes(1.0)) == {"request_id": "r-1", "api": "diarize"}  # now marked sent
    assert runtime.backends.queue.receive(max_messages=10) == []


def test_a_retry_after_the_job_started_sends_nothing(runtime, key, wav_bytes):
    submit(runtime, key, wav_bytes(1.0))
    [message] = runtime.backends.queue.receive(max_messages=10)
    assert runtime.jobs.start(runtime.jobs.get(make_job_id(key.key_id, "r-1")))
    assert submit(runtime, key, wav_bytes(1.0)) == {"request_id": "r-1", "api": "diarize"}
    runtime.backends.queue.delete(message.receipt_handle)
    assert runtime.backends.queue.receive(max_messages=10) == []


def test_generated_request_ids_are_uuid4(runtime, key, wav_bytes):
    reply = submit(runtime, key, wav_bytes(0.5), query={"webhook": "http://127.0.0.1:9/hook"})
    assert len(reply["request_id"]) == 36 and reply["request_id"][14] == "4"


def test_non_audio_empty_audio_and_too_long(runtime, key, wav_bytes):
    error = api_error(submit, runtime, key, b"this is plain text, not audio")
    assert (error.status, error.code, error.field) == (400, "unsupported_audio", "content")
    assert api_error(submit, runtime, key, wav_bytes(0.0)).code == "empty_audio"
    short_limit = dataclasses.replace(runtime, settings=dataclasses.replace(runtime.settings, max_audio_seconds=0.5))
    error = api_error(submit, short_limit, key, wav_bytes(1.0))
    assert (error.status, error.code) == (413, "audio_too_long")
    assert runtime.backends.queue.receive() == []


class Broken:
    def __init__(self, real, failing: str):
        self._real, self._failing = real, failing

    def __getattr__(self, name):
        if name == self._failing:
            def fail(*args, **kwargs):
                raise BackendError("simulated outage")
            return fail
        return getattr(self._real, name)


@pytest.mark.parametrize("part,method", [("blobs", "put"), ("jobs", "create"), ("queue", "send")])
def test_outage_is_503_and_leaves_nothing_half_made(runtime, key, wav_bytes, part, method):
    real = getattr(runtime.backends, part)
    setattr(runtime.backends, part, Broken(real, method))
    error = api_error(submit, runtime, key, wav_bytes(1.0))
    assert (error.status, error.code, error.retryable) == (503, "service_unavailable", True)
    assert error.to_body()["error"]["retryable"] is True
    setattr(runtime.backends, part, real)
    assert runtime.jobs.get(make_job_id(key.key_id, "r-1")) is None
    job_folder = runtime.backends.blobs.root / "jobs" / key.key_id / "r-1"  # the local store's files
    assert not (job_folder.exists() and any(job_folder.iterdir()))  # no audio left behind
    assert runtime.backends.queue.receive() == []
    assert submit(runtime, key, wav_bytes(1.0))["request_id"] == "r-1"  # a retry then works


def test_sync_returns_the_diarized_object(runtime, key, wav_bytes, fake_engine):
    diarized = api.diarize_sync(runtime, key, body(wav_bytes(2.0), speakers=3), False, {})
    assert diarized["num_speakers"] == 3 and diarized["segments"][0]["speaker_id"] == "speaker1"
    assert api.v1_segments(diarized)[0]["speaker_id"] == 1
    assert fake_engine.calls == 1


def test_sync_refuses_long_audio_pointing_to_async(runtime, key, wav_bytes, fake_engine):
    short = dataclasses.replace(runtime, settings=dataclasses.replace(runtime.settings, sync_max_seconds=1.0))
    error = api_error(api.diarize_sync, short, key, body(wav_bytes(2.0)), False, {})
    assert (error.status, error.code) == (413, "audio_too_long_for_sync")
    assert api.ASYNC_ROUTE in error.message and fake_engine.calls == 0


def test_status_is_private_to_the_key(runtime, key, wav_bytes):
    submit(runtime, key, wav_bytes(1.0))
    status = api.job_status(runtime, key, "r-1")
    assert status["status"] == "queued" and status["request_id"] == "r-1" and "response" not in status
    other = create_key(runtime.backends.keys, "other").record
    assert api_error(api.job_status, runtime, other, "r-1").status == 404
    assert api_error(api.job_status, runtime, key, "../r-1").status == 404


def test_uploads_need_s3(runtime, key):
    assert api_error(api.create_upload, runtime, key).status == 501


def test_unknown_upload_id(runtime, key):
    error = api_error(api.submit_async, runtime, key, json.dumps({"upload_id": "a" * 32}), False,
                      {"webhook": "http://127.0.0.1:9/hook"})
    assert (error.status, error.code, error.field) == (400, "upload_not_found", "upload_id")


def _wav_claiming_rate(wav: bytes, rate: int) -> bytes:
    import struct

    data = bytearray(wav)
    struct.pack_into("<I", data, 24, rate)
    return bytes(data)


@pytest.mark.parametrize("rate", [2_147_483_647, 1])
def test_an_absurd_sample_rate_is_a_400_on_both_routes(runtime, key, wav_bytes, rate):
    audio = _wav_claiming_rate(wav_bytes(0.5), rate)
    for call in (lambda: submit(runtime, key, audio),
                 lambda: api.diarize_sync(runtime, key, body(audio), False, None)):
        error = api_error(call)
        assert (error.status, error.code, error.field) == (400, "unsupported_audio", "content")
        assert f"{rate} Hz" in error.message
    assert runtime.backends.queue.receive() == []


def test_a_truncated_flac_is_refused_by_the_async_route_before_any_job(runtime, key):
    import audio_factory as af

    audio = af.truncate(af.encode(af.demo_recording()[0][: 16000 * 4], 16000, "FLAC"), 0.5)
    error = api_error(submit, runtime, key, audio)
    assert (error.status, error.code) == (400, "unsupported_audio") and "truncated" in error.message
    assert runtime.jobs.get(make_job_id(key.key_id, "r-1")) is None and runtime.backends.queue.receive() == []
