"""Deployed-mode SSRF and key isolation on the real handlers (moto), with a guard that fails the test on any
connection attempt to a non-loopback address: unsafe webhooks must be refused before anything is dialled.
"""
from __future__ import annotations

import dataclasses
import socket

import pytest

from diarizer_service.auth import create_key, revoke_key
from reliability.helpers import ASYNC_V2, audio_body

UNSAFE_WEBHOOKS = [
    "http://127.0.0.1:8080/hook", "https://127.0.0.1/hook", "https://169.254.169.254/latest/meta-data/iam/",
    "https://10.0.0.1/hook", "https://[::1]/hook", "https://[::ffff:169.254.169.254]/", "https://0x7f.1/hook",
    "https://metadata.attacker.example/hook",  # a DNS name that resolves to 169.254.169.254
    "https://intranet.attacker.example/hook",  # ... to 10.0.0.1
    "https://mixed.attacker.example/hook",  # ... to a public address and a private one
    "http://hooks.public.example/hook",  # plain http to a public host (deployed mode: https only)
    "ftp://hooks.public.example/hook", "file:///etc/passwd", "gopher://127.0.0.1:6379/_INFO",
    "javascript:alert(1)", "https://user:pass@hooks.public.example/hook",
]
FAKE_DNS = {"metadata.attacker.example": ["169.254.169.254"], "intranet.attacker.example": ["10.0.0.1"],
            "mixed.attacker.example": ["93.184.215.14", "192.168.1.10"], "hooks.public.example": ["93.184.215.14"]}


@pytest.fixture
def deployed(stack, monkeypatch, connection_guard):
    """The stack with deployed-mode webhook rules, a fake DNS, and the connection guard on."""
    stack.runtime.settings = dataclasses.replace(stack.runtime.settings, allow_local_webhooks=False)
    lookups: list[str] = []

    real_getaddrinfo = socket.getaddrinfo

    def fake_getaddrinfo(host, port, *args, **kwargs):
        lookups.append(host)
        if host not in FAKE_DNS:  # numeric spellings (0x7f.1) as the real resolver reads them, without DNS
            try:
                return real_getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
            except socket.gaierror:
                raise socket.gaierror(socket.EAI_NONAME, "unknown name (test DNS)") from None
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in FAKE_DNS[host]]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    stack.dns_lookups = lookups
    return stack


@pytest.mark.parametrize("webhook", UNSAFE_WEBHOOKS)
def test_unsafe_webhooks_are_refused_before_any_connection(deployed, api_handler, wav_bytes, connection_guard,
                                                           webhook):
    status, answer = deployed.call_api("POST", ASYNC_V2, query={"webhook": webhook, "request_id": "ssrf"},
                                       body=audio_body(wav_bytes(0.5)), handler=api_handler)
    assert (status, answer["error"]["code"], answer["error"]["field"]) == (400, "invalid_webhook", "webhook")
    if "0x7f" in webhook or "attacker" in webhook:  # refused for where it points, not for failing to resolve
        assert "non-public address" in answer["error"]["message"], answer
    assert connection_guard.attempts == []  # nothing was dialled (the guard fails the test on a private one)
    assert deployed.job_item("ssrf") is None and deployed.receive_sqs_event()["Records"] == []
    if "attacker" not in webhook and "public" not in webhook and "0x7f" not in webhook:
        assert deployed.dns_lookups == []  # IP literals and bad schemes are refused without even a lookup


def test_dns_rebinding_between_submit_and_delivery_is_refused_at_delivery(deployed, api_handler, worker_handler,
                                                                          wav_bytes, connection_guard, fake_engine):
    """Accepted while the name was public; at delivery it resolves to the metadata address: no POST is made,
    the refusal is recorded, and the result stays readable from the status route."""
    status, _ = deployed.call_api("POST", ASYNC_V2, query={"webhook": "https://hooks.public.example/h",
                                                          "request_id": "rebind"},
                                  body=audio_body(wav_bytes(1.0)), handler=api_handler)
    assert status == 200
    FAKE_DNS["hooks.public.example"] = ["169.254.169.254"]
    try:
        assert deployed.run_worker(worker_handler) == {"batchItemFailures": []}
    finally:
        FAKE_DNS["hooks.public.example"] = ["93.184.215.14"]
    assert connection_guard.attempts == []
    status, job = deployed.call_api("GET", f"{ASYNC_V2}/rebind", handler=api_handler)
    assert job["status"] == "done" and job["response"] == fake_engine.results[-1]
    assert job["webhook"]["delivered"] is False and "non-public" in job["webhook"]["error"]


# ------------------------------------------------------------------------------------------ keys
def test_one_key_cannot_reach_another_keys_job_by_any_spelling(stack, api_handler, worker_handler, webhook_receiver,
                                                              wav_bytes):
    stack.call_api("POST", ASYNC_V2, query={"webhook": webhook_receiver.url, "request_id": "secret-job"},
                   body=audio_body(wav_bytes(1.0)), handler=api_handler)
    stack.run_worker(worker_handler)
    victim = stack.key.record.key_id
    other = create_key(stack.runtime.backends.keys, "attacker")
    for spelling in ("secret-job", f"{victim}#secret-job", f"{victim}%23secret-job", f"../{victim}/secret-job"):
        status, answer = stack.call_api("GET", f"{ASYNC_V2}/{spelling}", api_key=other.api_key, handler=api_handler)
        assert status == 404 and answer["error"]["code"] in ("job_not_found", "route_not_found"), spelling
        assert "response" not in answer and "secret-job" not in str(answer)
    # and re-submitting the same request_id under the other key is the other key's own new job, not a peek
    status, _ = stack.call_api("POST", ASYNC_V2, query={"webhook": webhook_receiver.url, "request_id": "secret-job"},
                               body=audio_body(wav_bytes(0.5)), api_key=other.api_key, handler=api_handler)
    assert status == 200
    status, job = stack.call_api("GET", f"{ASYNC_V2}/secret-job", api_key=other.api_key, handler=api_handler)
    assert job["status"] == "queued" and "response" not in job


def test_a_revoked_key_loses_access_to_its_own_jobs_at_once(stack, api_handler, webhook_receiver, wav_bytes):
    stack.call_api("POST", ASYNC_V2, query={"webhook": webhook_receiver.url, "request_id": "mine"},
                   body=audio_body(wav_bytes(0.5)), handler=api_handler)
    assert stack.call_api("GET", f"{ASYNC_V2}/mine", handler=api_handler)[0] == 200
    revoke_key(stack.runtime.backends.keys, stack.key.record.key_id)
    status, answer = stack.call_api("GET", f"{ASYNC_V2}/mine", handler=api_handler)
    assert (status, answer["error"]["code"]) == (403, "invalid_api_key")
    for near_miss in (stack.key.api_key.upper(), stack.key.api_key + " ", stack.key.api_key[:-1]):
        status, answer = stack.call_api("GET", f"{ASYNC_V2}/mine", api_key=near_miss, handler=api_handler)
        assert status == 403
