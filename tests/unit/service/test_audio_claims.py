"""The service's length limits hold for what decodes, not for what a header claims.

Local runtime with the real probe and PyAV (as `diarize serve` with the transcode extra), a fake engine.
"""
from __future__ import annotations

import base64
import dataclasses
import json

import audio_factory as af
import numpy as np
import pytest
from media_factory import webm_claiming

from diarizer_service import api
from diarizer_service.errors import ApiError
from diarizer_service.jobs import make_job_id
from diarizer_service.worker import Worker


@pytest.fixture(scope="module")
def two_minutes_claiming_five_seconds(tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("claims")
    speech = af.demo_recording("two-speakers")[0]
    af.write(folder / "long.wav", np.tile(speech, 5)[: 120 * 16000])
    return webm_claiming(folder / "long.wav", folder, 5000.0)


def body(audio: bytes) -> str:
    return json.dumps({"content": base64.b64encode(audio).decode()})


def refused(fn, *args) -> ApiError:
    with pytest.raises(ApiError) as caught:
        fn(*args)
    return caught.value


def test_sync_refuses_two_minutes_that_claim_five_seconds(runtime, key, fake_engine, two_minutes_claiming_five_seconds):
    error = refused(api.diarize_sync, runtime, key, body(two_minutes_claiming_five_seconds), False, {})
    assert (error.status, error.code) == (413, "audio_too_long_for_sync")
    assert fake_engine.calls == 0


def test_async_limit_holds_for_the_decoded_length(runtime, key, two_minutes_claiming_five_seconds):
    short = dataclasses.replace(runtime, settings=dataclasses.replace(runtime.settings, max_audio_seconds=60))
    error = refused(api.submit_async, short, key, body(two_minutes_claiming_five_seconds), False,
                    {"webhook": "http://127.0.0.1:9/hook", "request_id": "r-1"})
    assert (error.status, error.code) == (413, "audio_too_long")
    assert runtime.backends.queue.receive() == []


def test_async_records_the_decoded_length_of_a_flac_without_one(runtime, key):
    speech = af.demo_recording("two-speakers")[0]
    api.submit_async(runtime, key, body(af.flac_without_length(speech)), False,
                     {"webhook": "http://127.0.0.1:9/hook", "request_id": "r-1"})
    job = runtime.jobs.get(make_job_id(key.key_id, "r-1"))
    assert job.audio_format == "FLAC" and job.audio_seconds == pytest.approx(len(speech) / 16000)


def test_the_worker_fails_a_job_whose_audio_decodes_past_the_limit(runtime, key, fake_engine,
                                                                    two_minutes_claiming_five_seconds):
    """The upload route stores audio the API never decoded: the worker's decoding stops at the limit too (once:
    not a count first and the diarization's decoding after it)."""
    api.submit_async(runtime, key, body(af.encode(np.zeros(16000, np.float32))), False,
                     {"webhook": "http://127.0.0.1:9/hook", "request_id": "r-1"})
    [message] = runtime.backends.queue.receive()
    job = runtime.jobs.get(json.loads(message.body)["job_id"])
    runtime.backends.blobs.put(job.audio_key, two_minutes_claiming_five_seconds)
    def counted_twice(audio, max_seconds):
        raise AssertionError("the worker decodes once: the engine's decoding enforces the limit")

    short = dataclasses.replace(runtime, settings=dataclasses.replace(runtime.settings, max_audio_seconds=60),
                                verify=counted_twice)
    Worker(short).handle_message(message.body, receive_count=1)
    failed = runtime.jobs.get(job.job_id)
    assert failed.status == "failed" and failed.error["code"] == "audio_too_long"
    assert fake_engine.calls == 0
