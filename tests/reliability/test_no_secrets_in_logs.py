"""No secret in any log: the API key, the webhook signing secret and the audio (a distinctive chunk of its
base64) never appear in the powertools JSON logs of the API and worker handlers over a full flow, errors
included, nor in `diarize serve` output after its start-up banner (which shows the webhook secret once, on
purpose: the key holder needs it to check signatures)."""
from __future__ import annotations

import base64
import io
import json

import numpy as np

import audio_factory
from acceptance.serve_helpers import wait_for
from reliability.helpers import ASYNC_V2, SYNC_V2, audio_body, closed_port_url


def distinctive_audio(seconds: float = 2.0, seed: int = 7) -> bytes:
    """Noise: its base64 has no long runs, so any 48-character slice is unique to it."""
    return audio_factory.encode(audio_factory.noise(seconds, amplitude=0.3, seed=seed).astype(np.float32))


def needles(api_key: str, secret: str, audio_b64: str) -> dict[str, str]:
    middle = len(audio_b64) // 2
    return {"api key": api_key, "api key tail": api_key[-16:], "webhook secret": secret,
            "webhook secret bytes": secret.removeprefix("whsec_")[:24], "audio base64": audio_b64[middle:middle + 48],
            "audio base64 start": audio_b64[44:92]}


def assert_clean(text: str, found: dict[str, str]) -> None:
    leaks = [name for name, needle in found.items() if needle in text]
    assert leaks == [], f"leaked into the logs: {leaks}"


def test_handler_logs_over_a_full_flow_hold_no_key_secret_or_audio(stack, api_handler, worker_handler,
                                                                   webhook_receiver, monkeypatch, capsys, caplog,
                                                                   no_webhook_backoff):
    from diarizer_service.observability import logger
    monkeypatch.setenv("POWERTOOLS_LOGGER_LOG_EVENT", "true")  # even when someone turns event logging on
    previous_level = logger.log_level
    logger.setLevel("DEBUG")
    stream = io.StringIO()
    monkeypatch.setattr(logger.registered_handler, "stream", stream)
    audio = distinctive_audio()
    audio_b64 = base64.b64encode(audio).decode()
    key = stack.key
    try:
        webhook = webhook_receiver.url
        stack.call_api("POST", ASYNC_V2, query={"webhook": webhook, "request_id": "ok-1"}, body=audio_body(audio),
                       handler=api_handler)
        stack.call_api("POST", ASYNC_V2, query={"webhook": closed_port_url(), "request_id": "down-1"},
                       body=audio_body(audio), handler=api_handler)
        stack.call_api("POST", ASYNC_V2, query={"webhook": webhook, "request_id": "bad-audio"},
                       body={"content": base64.b64encode(audio[:44] + b"\x00garbage" * 50).decode()},
                       handler=api_handler)
        stack.call_api("POST", SYNC_V2, body=audio_body(audio), handler=api_handler)
        stack.call_api("POST", SYNC_V2, body={"content": audio_b64[:-3] + "%%%"}, handler=api_handler)
        stack.call_api("POST", SYNC_V2, body=audio_body(audio), api_key=key.api_key + "x", handler=api_handler)
        stack.call_api("POST", SYNC_V2, body=audio_body(audio), api_key=None, handler=api_handler,
                       headers={"x-api-key": key.api_key})
        stack.call_api("GET", f"{ASYNC_V2}/ok-1", handler=api_handler)
        stack.run_worker(worker_handler)
        stack.call_api("GET", f"{ASYNC_V2}/ok-1", handler=api_handler)
    finally:
        logger.setLevel(previous_level)
    captured = capsys.readouterr()
    text = stream.getvalue() + captured.out + captured.err + caplog.text
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    assert any(line.get("message") == "job done" for line in lines)  # the worker really logged
    assert any(line.get("message") == "webhook delivery failed" for line in lines)
    assert key.record.key_id in text and webhook_receiver.received
    assert_clean(text, needles(key.api_key, key.record.webhook_secret, audio_b64))


def test_serve_output_after_start_up_holds_no_key_secret_or_audio(start_server, webhook_receiver):
    server = start_server("--log-level", "DEBUG")
    audio = distinctive_audio(seed=11)
    audio_b64 = base64.b64encode(audio).decode()
    server.submit(audio_b64, webhook_receiver.url, "logged-1")
    server.request("POST", SYNC_V2, body={"content": audio_b64})
    server.request("POST", SYNC_V2, body={"content": audio_b64[:-3] + "%%%"})
    server.request("POST", ASYNC_V2, body={"content": audio_b64},
                   query={"webhook": closed_port_url(), "request_id": "down-1"})
    server.request("POST", SYNC_V2, body={"content": audio_b64}, query={"apikey": server.api_key + "x"})
    server.request("GET", f"{ASYNC_V2}/logged-1", headers={"x-api-key": server.api_key}, with_key=False)
    wait_for(lambda: webhook_receiver.received, 60, "the webhook")
    wait_for(lambda: "webhook" in server.job("down-1"), 60, "the failed delivery to be recorded")
    assert server.terminate() == 0
    log = server.log()
    banner, _, after = log.partition("listening on")
    assert after and "POST /audio/generic/api/v2/async/diarize" in after  # the access log really ran
    assert server.api_key not in log  # given with --api-key: never printed, not even at start-up
    assert_clean(after, needles(server.api_key, server.webhook_secret, audio_b64))
