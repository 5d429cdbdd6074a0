"""The official DeepAffects Python SDK (deepaffects 1.4.1), unchanged but for its host, against `diarize serve`.

Each async test sends the real two-speaker demo conversation and waits for the signed webhook.
"""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from serve_helpers import wait_for
from webhook_verify import verify_webhook

deepaffects = pytest.importorskip("deepaffects", reason="install with: pip install --no-deps deepaffects==1.4.1")
from deepaffects.rest import ApiException  # noqa: E402

JOB_TIMEOUT = 60.0  # a 29 s clip takes a few seconds on a shared 2-core machine


@pytest.fixture
def sdk(shared_server):
    """The SDK configured the way its README says, pointed at the local server."""
    deepaffects.configuration.host = shared_server.url
    deepaffects.configuration.api_key["apikey"] = shared_server.api_key
    deepaffects.configuration.api_client = None  # the SDK caches its client (and host) on first use
    yield deepaffects
    deepaffects.configuration.api_client = None


@pytest.fixture
def body(demo_audio_b64):
    return deepaffects.DiarizeAudio(encoding="FLAC", sample_rate=16000, language_code="en-US",
                                    content=demo_audio_b64, speakers=-1)


def assert_two_speaker_webhook(receiver, secret: str, request_id: str) -> dict:
    [hook] = wait_for(lambda: receiver.received, JOB_TIMEOUT, f"the webhook of {request_id}")
    payload = hook.json()
    assert payload["request_id"] == request_id
    assert payload["response"]["num_speakers"] == 2
    assert {s["speaker_id"] for s in payload["response"]["segments"]} == {"speaker1", "speaker2"}
    assert all(0 <= s["start"] < s["end"] <= 29.3 for s in payload["response"]["segments"])
    assert hook.headers["content-type"] == "application/json"
    assert verify_webhook(secret, hook.headers, hook.body)
    assert not verify_webhook(secret, hook.headers, hook.body + b" ")  # the signature covers the body
    return payload


def test_v2_async_through_the_sdk_delivers_a_signed_two_speaker_webhook(sdk, body, shared_server, webhook_receiver):
    reply = sdk.DiarizeApiV2().async_diarize_audio(body, webhook_receiver.url, request_id="sdk-v2-1")
    assert (reply.request_id, reply.api) == ("sdk-v2-1", "diarize")
    payload = assert_two_speaker_webhook(webhook_receiver, shared_server.webhook_secret, "sdk-v2-1")
    job = wait_for(lambda: (j := shared_server.job("sdk-v2-1")).get("webhook") and j, 10, "the delivery record")
    assert job["status"] == "done" and job["response"] == payload["response"]
    assert job["webhook"]["delivered"] is True


def test_v1_async_through_the_sdk(sdk, body, shared_server, webhook_receiver):
    reply = sdk.DiarizeApi().async_diarize_audio(body, webhook_receiver.url, request_id="sdk-v1-1")
    assert (reply.request_id, reply.api) == ("sdk-v1-1", "diarize")
    assert_two_speaker_webhook(webhook_receiver, shared_server.webhook_secret, "sdk-v1-1")


def test_v1_sync_through_the_sdk(sdk, body):
    api = sdk.DiarizeApi()
    segments = api.sync_diarize_audio(body)  # the SDK maps each segment onto its `Audio` model
    assert isinstance(segments, list) and len(segments) >= 2
    raw, status, _headers = api.sync_diarize_audio_with_http_info(body, _preload_content=False)  # raw JSON
    answer = json.loads(raw.data)
    assert status == 200 and len(answer) == len(segments)
    assert {s["speaker_id"] for s in answer} == {1, 2}  # v1 types speaker ids as integers


def test_request_id_is_generated_when_the_sdk_sends_none(sdk, body, webhook_receiver):
    reply = sdk.DiarizeApiV2().async_diarize_audio(body, webhook_receiver.url)
    assert len(reply.request_id) == 36  # a UUID
    [hook] = wait_for(lambda: webhook_receiver.received, JOB_TIMEOUT, "the webhook")
    assert hook.json()["request_id"] == reply.request_id


def test_wrong_or_missing_key_is_refused_through_the_sdk(sdk, body, webhook_receiver):
    sdk.configuration.api_key["apikey"] = "dk_not_a_key"
    with pytest.raises(ApiException) as refused:
        sdk.DiarizeApiV2().async_diarize_audio(body, webhook_receiver.url, request_id="bad-key")
    assert refused.value.status == 403
    assert json.loads(refused.value.body)["error"]["code"] == "invalid_api_key"
    del sdk.configuration.api_key["apikey"]
    with pytest.raises(ApiException) as missing:
        sdk.DiarizeApiV2().async_diarize_audio(body, webhook_receiver.url, request_id="no-key")
    assert missing.value.status == 401
    assert not webhook_receiver.received


def test_public_http_webhooks_are_refused_even_in_local_mode(shared_server, demo_audio_b64):
    status, answer = shared_server.request(
        "POST", "/audio/generic/api/v2/async/diarize", body={"content": demo_audio_b64, "encoding": "FLAC"},
        query={"webhook": "http://hooks.example.com/diar", "request_id": "refused-hook"})
    assert status == 400 and answer["error"]["code"] == "invalid_webhook"


def test_v2_sync_and_status_routes_over_plain_http(shared_server, demo_audio_b64):
    status, answer = shared_server.request("POST", "/audio/generic/api/v2/sync/diarize",
                                           body={"content": demo_audio_b64, "sampleRate": "16000", "vad": True})
    assert status == 200 and answer["num_speakers"] == 2
    status, missing = shared_server.request("GET", "/audio/generic/api/v2/async/diarize/never-submitted")
    assert status == 404 and missing["error"]["code"] == "job_not_found"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_readme_curl_example(shared_server, demo_audio_b64, webhook_receiver, tmp_path):
    (tmp_path / "body.json").write_text(json.dumps(
        {"content": demo_audio_b64, "sampleRate": 16000, "encoding": "FLAC", "languageCode": "en-US", "speakers": -1}))
    url = (f"{shared_server.url}/audio/generic/api/v2/async/diarize?apikey={shared_server.api_key}"
           f"&webhook={webhook_receiver.url}&request_id=curl-1")
    # The README's command, plus -sS (no progress meter) and a time limit.
    done = subprocess.run(["curl", "-sS", "--max-time", "60", "-X", "POST", url, "-H", "content-type: application/json",
                           "-d", "@body.json"], cwd=tmp_path, capture_output=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"request_id": "curl-1", "api": "diarize"}
    assert_two_speaker_webhook(webhook_receiver, shared_server.webhook_secret, "curl-1")
