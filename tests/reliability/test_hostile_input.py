"""Hostile input against a real `diarize serve` (HTTP on 127.0.0.1, the deployed handlers, the real engine):
every request gets a clear JSON answer (4xx with a machine code, or a sane result), and the server keeps serving.
The list with the expected answers is docs/security.md.
"""
from __future__ import annotations

import base64
import io
import json
import time
import urllib.parse

import numpy as np
import pytest
import soundfile as sf

import audio_factory
from acceptance.serve_helpers import wait_for
from reliability.helpers import ASYNC_V2, SYNC_V2, demo_clip

SYNC_V1 = "/audio/generic/api/v1/sync/diarize"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def flac_silence(seconds: float) -> bytes:
    """Digital silence as FLAC: about 2.8 kB per minute, so 3 hours is a ~0.5 MB request."""
    buffer = io.BytesIO()
    with sf.SoundFile(buffer, "w", samplerate=16000, channels=1, format="FLAC", subtype="PCM_16") as out:
        block = np.zeros(16000 * 60, dtype="int16")
        whole, rest = divmod(int(seconds * 16000), len(block))
        for _ in range(whole):
            out.write(block)
        out.write(block[:rest])
    return buffer.getvalue()


def zero_sample_wav() -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(0, dtype="int16"), 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def raw_post(server, path: str, body: bytes, query: dict | None = None) -> tuple[int, object]:
    return server.request("POST", path, body=body, query=query)


@pytest.fixture
def still_serving(hostile_server):
    """After each test: the process is alive and answers a normal request with JSON."""
    yield hostile_server
    assert hostile_server.process.poll() is None, hostile_server.log()[-3000:]
    status, answer = hostile_server.request("GET", f"{ASYNC_V2}/never-submitted")
    assert (status, answer["error"]["code"]) == (404, "job_not_found")


def assert_error(status_answer, status: int, code: str, field: str | None = None) -> dict:
    got_status, answer = status_answer
    assert got_status == status, answer
    assert isinstance(answer, dict) and set(answer) == {"error"}, answer
    error = answer["error"]
    assert error["code"] == code and isinstance(error["message"], str) and len(error["message"]) > 10
    if field is not None:
        assert error.get("field") == field
    return error


# ------------------------------------------------------------------------------------ bodies and types
@pytest.mark.parametrize("body,code,field", [
    (b'{"content": "UklGRiQAAABXQVZF', "invalid_json", None),  # cut off mid-string
    (b"\x80\x81\xfe{garbage}", "invalid_json", None),  # not UTF-8, not JSON
    (b"[1, 2, 3]", "invalid_json", None),
    (b'{"a":' * 2000 + b"1" + b"}" * 2000, "invalid_json", None),  # object-nesting bomb
    (b'{"content": ' + b"[" * 5000 + b"]" * 5000 + b"}", "invalid_json", None),  # array-nesting bomb
    (json.dumps({f"k{i}": i for i in range(100_000)}).encode(), "missing_field", "content"),  # a wide body
    (json.dumps({"content": 12345}).encode(), "invalid_field", "content"),
    (json.dumps({"content": b64(b"RIFF"), "speakers": [2]}).encode(), "invalid_field", "speakers"),
    (json.dumps({"content": b64(b"RIFF"), "sampleRate": True}).encode(), "invalid_field", "sampleRate"),
    (json.dumps({"content": b64(b"RIFF"), "webhook": {"url": "x"}}).encode(), "invalid_field", "webhook"),
    (json.dumps({"content": b64(b"RIFF"), "request_id": {"$ne": None}}).encode(), "invalid_field", "request_id"),
], ids=["broken-json", "binary-garbage", "array-body", "object-bomb", "array-bomb", "wide-body", "content-number",
        "speakers-list", "samplerate-bool", "webhook-object", "request-id-object"])
def test_broken_json_wrong_types_and_bombs_are_400(still_serving, webhook_receiver, body, code, field):
    started = time.monotonic()
    answer = raw_post(still_serving, ASYNC_V2, body, {"webhook": webhook_receiver.url} if field != "webhook" else None)
    assert_error(answer, 400, code, field)
    assert time.monotonic() - started < 5  # refused cheaply


def test_a_body_over_the_limit_is_413_without_being_parsed(still_serving):
    body = json.dumps({"content": "A" * (6 * 1024 * 1024)}).encode()  # over 6 MB, under the gateway's 7 MB
    assert_error(raw_post(still_serving, SYNC_V2, body), 413, "body_too_large")  # the handler's own limit


# ------------------------------------------------------------------------------------ audio
@pytest.mark.parametrize("audio,code", [
    (b"\x89PNG\r\n\x1a\n" + bytes(2000), "unsupported_audio"),
    (b"%PDF-1.7\n" + b"x" * 2000, "unsupported_audio"),
    (audio_factory.truncate(demo_clip(0, 5), keep_bytes=60), "unsupported_audio"),  # header only
    (audio_factory.corrupt(demo_clip(0, 5), seed=3), "unsupported_audio"),  # header destroyed too
    (zero_sample_wav(), "empty_audio"),
], ids=["png", "pdf", "flac-header-only", "corrupt-flac", "wav-with-no-samples"])
def test_non_audio_and_empty_audio_are_400_on_sync_and_async(still_serving, webhook_receiver, audio, code):
    assert_error(raw_post(still_serving, SYNC_V2, json.dumps({"content": b64(audio)}).encode()), 400, code, "content")
    assert_error(raw_post(still_serving, ASYNC_V2, json.dumps({"content": b64(audio)}).encode(),
                          {"webhook": webhook_receiver.url}), 400, code, "content")


def test_truncated_audio_is_400_on_sync_and_async(still_serving, webhook_receiver):
    """The header is intact and announces 5 s, so a header probe accepts it; the async route decodes an inline
    body whole before accepting it (the client hears now, not from a failure webhook), and no job is made."""
    audio = audio_factory.truncate(demo_clip(0, 5), fraction=0.5)
    assert_error(raw_post(still_serving, SYNC_V2, json.dumps({"content": b64(audio)}).encode()),
                 400, "unsupported_audio", "content")
    error = assert_error(raw_post(still_serving, ASYNC_V2, json.dumps({"content": b64(audio)}).encode(),
                                  {"webhook": webhook_receiver.url, "request_id": "truncated-1"}),
                         400, "unsupported_audio", "content")
    assert "truncated" in error["message"]
    assert still_serving.request("GET", f"{ASYNC_V2}/truncated-1")[0] == 404


def wav_claiming_rate(rate: int) -> bytes:
    """0.5 s of tone whose fmt chunk claims `rate` Hz (and a matching byte rate)."""
    import struct

    data = bytearray(audio_factory.encode(np.full(8000, 0.1, np.float32), 16000, "WAV"))
    struct.pack_into("<II", data, 24, rate, (rate * 2) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.parametrize("rate", [2_147_483_647, 4_000_000, 1])
def test_an_absurd_sample_rate_is_400_on_sync_and_async_never_a_500(still_serving, webhook_receiver, rate):
    """Before: 2,147,483,647 Hz made the sync route's resampler ask for hundreds of GB (500 internal_error)
    and the async route accept a job that failed three times in the worker."""
    audio = wav_claiming_rate(rate)
    started = time.monotonic()
    for path, query in ((SYNC_V2, None), (ASYNC_V2, {"webhook": webhook_receiver.url})):
        error = assert_error(raw_post(still_serving, path, json.dumps({"content": b64(audio)}).encode(), query),
                             400, "unsupported_audio", "content")
        assert f"sample rate of {rate} Hz" in error["message"]
    assert time.monotonic() - started < 10


def test_a_wav_header_claiming_a_billion_samples_gets_a_sane_answer_quickly(still_serving):
    audio = audio_factory.wav_header_claiming(10**9, actual_samples=1600)
    started = time.monotonic()
    status, answer = raw_post(still_serving, SYNC_V2, json.dumps({"content": b64(audio)}).encode())
    assert status == 200 and answer == {"num_speakers": 0, "segments": []}  # 0.1 s of tone: nobody speaks
    assert time.monotonic() - started < 10  # the claimed 17 h were never allocated or decoded


@pytest.mark.parametrize("inf", [False, True], ids=["nan", "nan-and-inf"])
def test_nan_filled_float_wav_gets_a_sane_json_answer(still_serving, inf):
    audio = audio_factory.nan_float_wav(2.0, nan_fraction=0.5, inf=inf)
    status, answer = still_serving.request("POST", SYNC_V1, body={"content": b64(audio)})
    assert status == 200 and answer == []  # v1 shape; no NaN reached the JSON (it would not parse)


def test_three_hours_of_silence_is_accepted_within_limits_and_413_beyond_them(still_serving):
    three_hours = flac_silence(3 * 3600)
    assert len(three_hours) < 1_000_000
    assert_error(raw_post(still_serving, SYNC_V2, json.dumps({"content": b64(three_hours)}).encode()),
                 413, "audio_too_long_for_sync", "content")
    longer = flac_silence(3 * 3600 + 1)
    assert_error(raw_post(still_serving, ASYNC_V2, json.dumps({"content": b64(longer)}).encode(),
                          {"webhook": "http://127.0.0.1:9/hook"}), 413, "audio_too_long", "content")


def test_minutes_of_silence_give_an_empty_result_not_an_error(still_serving, webhook_receiver):
    """A sane result for silence through the real engine (4 min: seconds of work, not the 3 h above)."""
    still_serving.submit(b64(flac_silence(240)), webhook_receiver.url, "silence-4min")
    [hook] = wait_for(lambda: webhook_receiver.received, 60, "the silence webhook")
    assert hook.json() == {"request_id": "silence-4min", "response": {"num_speakers": 0, "segments": []}}


# ------------------------------------------------------------------------------------ ids and paths
@pytest.mark.parametrize("request_id", ["ünïcødé", "a\u202eb", "zero\u200bwidth", "😀", "../../etc/passwd",
                                        "..", "a/../../b", "%2e%2e%2f", "a\\..\\b", "x" * 129])
def test_hostile_request_ids_are_400_and_create_nothing(still_serving, webhook_receiver, request_id):
    before = sorted(p.relative_to(still_serving.data_dir) for p in still_serving.data_dir.rglob("*"))
    answer = raw_post(still_serving, ASYNC_V2, json.dumps({"content": b64(demo_clip(0, 2))}).encode(),
                      {"webhook": webhook_receiver.url, "request_id": request_id})
    assert_error(answer, 400, "invalid_field", "request_id")
    after = sorted(p.relative_to(still_serving.data_dir) for p in still_serving.data_dir.rglob("*"))
    assert [p for p in after if p not in before and "blobs" in p.parts] == []


@pytest.mark.parametrize("path_part", ["..%2F..%2Fdiarizer.sqlite3", "%2e%2e", "%C3%BC", "..%5C..%5Cx",
                                       "a%00b", "x" * 200])
def test_the_status_route_answers_404_for_traversal_and_unicode_ids(still_serving, path_part):
    status, answer = still_serving.request("GET", f"{ASYNC_V2}/{path_part}")
    assert status == 404 and answer["error"]["code"] in ("job_not_found", "route_not_found")


def test_a_percent_encoded_request_id_in_the_status_path_is_the_same_job(still_serving, webhook_receiver):
    """The local server passes the path on encoded, as API Gateway's REST APIs do; the handler decodes it."""
    body = json.dumps({"content": b64(demo_clip(0.0, 3.0)), "encoding": "flac", "sampleRate": 16000,
                       "languageCode": "en-US"}).encode()
    status, _ = raw_post(still_serving, ASYNC_V2, body, {"webhook": webhook_receiver.url, "request_id": "call:7"})
    assert status == 200
    for path_part in ("call:7", "call%3A7", "call%3a%37"):
        status, job = still_serving.request("GET", f"{ASYNC_V2}/{path_part}")
        assert (status, job["request_id"]) == (200, "call:7"), path_part


def test_upload_id_traversal_is_refused(still_serving, webhook_receiver):
    body = json.dumps({"upload_id": "../../jobs/someone/else/audio"}).encode()
    assert_error(raw_post(still_serving, ASYNC_V2, body, {"webhook": webhook_receiver.url}),
                 400, "invalid_field", "upload_id")


# ------------------------------------------------------------------------------------ keys
@pytest.mark.parametrize("query,headers,status,code", [
    ({}, {}, 401, "missing_api_key"),
    ({"apikey": ""}, {}, 401, "missing_api_key"),
    ({"apikey": "dk_00000000_" + "x" * 43}, {}, 403, "invalid_api_key"),
    ({"apikey": "' OR 1=1 --"}, {}, 403, "invalid_api_key"),
    ({"apikey": "k" * 5000}, {}, 403, "invalid_api_key"),
    ({}, {"Authorization": "Bearer whatever"}, 401, "missing_api_key"),
], ids=["none", "empty", "unknown", "sql-ish", "5000-chars", "bearer-not-accepted"])
def test_wrong_and_missing_keys(still_serving, query, headers, status, code):
    url_query = urllib.parse.urlencode(query)
    got = still_serving.request("GET", f"{ASYNC_V2}/anything" + (f"?{url_query}" if url_query else ""),
                                headers=headers, with_key=False)
    assert_error(got, status, code)
