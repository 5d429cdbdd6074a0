import json
import socket
import time

import pytest

from diarizer_service import webhooks
from diarizer_service.webhooks import deliver, generate_webhook_secret, sign, verify_signature

SECRET = generate_webhook_secret()


def deliver_to(url, payload=None, **overrides):
    sleeps = []
    options = dict(secret=SECRET, msg_id="msg_1", timeout=2, allow_local=True, attempts=3, backoff_seconds=0.5,
                   sleep=sleeps.append)
    options.update(overrides)
    return deliver(url, payload or {"request_id": "r1", "response": {"num_speakers": 0, "segments": []}},
                   **options), sleeps


def test_signature_round_trip_and_tampering():
    body = b'{"request_id":"r1"}'
    now = int(time.time())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now), "webhook-signature": sign(SECRET, "msg_1", now, body)}
    assert headers["webhook-signature"].startswith("v1,")
    assert verify_signature(SECRET, headers, body)
    assert not verify_signature(SECRET, headers, body + b" ")
    assert not verify_signature(generate_webhook_secret(), headers, body)
    assert not verify_signature(SECRET, {**headers, "webhook-id": "msg_2"}, body)
    old = now - 3600
    stale = {**headers, "webhook-timestamp": str(old), "webhook-signature": sign(SECRET, "msg_1", old, body)}
    assert not verify_signature(SECRET, stale, body)
    rotated = {**headers, "webhook-signature": "v1,bm90LWl0 " + headers["webhook-signature"]}
    assert verify_signature(SECRET, rotated, body)


def test_signature_matches_the_standard_webhooks_formula():
    import base64, hashlib, hmac
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    expected = base64.b64encode(hmac.new(b"k" * 32, b"id.123.body", hashlib.sha256).digest()).decode()
    assert sign(secret, "id", 123, b"body") == "v1," + expected


def test_delivers_signed_json(webhook_receiver):
    result, sleeps = deliver_to(webhook_receiver.url)
    assert result.delivered and result.attempts == 1 and result.status == 200 and sleeps == []
    [hit] = webhook_receiver.received
    assert hit.path == "/hook" and hit.headers["content-type"] == "application/json"
    assert hit.headers["webhook-id"] == "msg_1"
    assert verify_signature(SECRET, hit.headers, hit.body)
    assert hit.json()["request_id"] == "r1"


def test_retries_5xx_with_exponential_backoff(webhook_receiver):
    webhook_receiver.statuses = [500, 503]
    result, sleeps = deliver_to(webhook_receiver.url)
    assert result.delivered and result.attempts == 3
    assert sleeps == [0.5, 1.0]
    assert len(webhook_receiver.received) == 3
    assert len({hit.headers["webhook-id"] for hit in webhook_receiver.received}) == 1  # same id: receivers dedupe


def test_does_not_retry_4xx(webhook_receiver):
    webhook_receiver.statuses = [404]
    result, sleeps = deliver_to(webhook_receiver.url)
    assert not result.delivered and result.attempts == 1 and result.status == 404 and sleeps == []
    assert len(webhook_receiver.received) == 1


def test_gives_up_after_network_errors():
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result, sleeps = deliver_to(f"http://127.0.0.1:{port}/hook")
    assert not result.delivered and result.attempts == 3 and result.status is None
    assert "ConnectionRefused" in result.error and sleeps == [0.5, 1.0]


def test_rechecks_the_url_at_delivery_time(monkeypatch):
    # DNS now says private: refused without any connection attempt.
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port))])
    monkeypatch.setattr(webhooks, "_post_once", lambda *a, **k: pytest.fail("must not connect"))
    result, _ = deliver_to("https://hooks.example.com/x", allow_local=False)
    assert not result.delivered and result.error.startswith("refused")


def test_connects_to_the_checked_address_not_a_fresh_lookup(monkeypatch):
    answers = iter(["93.184.215.14", "10.0.0.7"])  # a rebinding DNS: public first, private afterwards
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))])
    connected = []

    def fake_create_connection(address, timeout=None, *args):
        connected.append(address)
        raise OSError("no network in tests")

    monkeypatch.setattr(socket, "create_connection", fake_create_connection)
    result, _ = deliver_to("https://hooks.example.com/x", allow_local=False, attempts=1)
    assert not result.delivered
    assert connected == [("93.184.215.14", 443)]


def test_payload_is_compact_json(webhook_receiver):
    deliver_to(webhook_receiver.url, {"a": 1, "b": [1, 2]})
    assert webhook_receiver.received[0].body == json.dumps({"a": 1, "b": [1, 2]}, separators=(",", ":")).encode()
