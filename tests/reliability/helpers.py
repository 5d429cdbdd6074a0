"""Helpers shared by the reliability tests (plain functions and classes; fixtures live in conftest.py)."""
from __future__ import annotations

import base64
import io
import ipaddress
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from acceptance.serve_helpers import DEMO_TWO_SPEAKERS
from loopback import LoopbackHTTPServer

ASYNC_V2 = "/audio/generic/api/v2/async/diarize"
SYNC_V2 = "/audio/generic/api/v2/sync/diarize"


def audio_body(audio: bytes, **extra) -> dict:
    return {"content": base64.b64encode(audio).decode(), **extra}


def sqs_messages_left(sqs, *queue_urls: str) -> int:
    """Messages still in these queues, visible or in flight (what must be 0 once a life has settled)."""
    total = 0
    for url in queue_urls:
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        total += int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])
    return total


def submit(stack, api_handler, webhook: str, request_id: str, audio: bytes) -> tuple[int, dict]:
    """POST the audio to the async route of the moto stack: (status, answer)."""
    return stack.call_api("POST", ASYNC_V2, query={"webhook": webhook, "request_id": request_id},
                          body=audio_body(audio), handler=api_handler)


def job_status(stack, api_handler, request_id: str) -> dict:
    """The job as the status route shows it (asserting a 200)."""
    status, job = stack.call_api("GET", f"{ASYNC_V2}/{request_id}", handler=api_handler)
    assert status == 200, job
    return job


def demo_clip(start: float, seconds: float) -> bytes:
    """A FLAC cut from demo/two-speakers.flac (both speakers talk within any 5 s or so)."""
    import soundfile as sf

    samples, rate = sf.read(DEMO_TWO_SPEAKERS, dtype="int16")
    part = samples[int(start * rate):int((start + seconds) * rate)]
    buffer = io.BytesIO()
    sf.write(buffer, part, rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


# --------------------------------------------------------------------------- network guard
class ConnectionGuard:
    """Records every outgoing connection attempt; any address that is not loopback fails the test."""

    def __init__(self):
        self.attempts: list[tuple] = []

    def check(self, address) -> None:
        self.attempts.append(address)
        host = address[0] if isinstance(address, tuple) else str(address)
        try:
            loopback = ipaddress.ip_address(str(host).split("%", 1)[0]).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            pytest.fail(f"a connection to {address!r} was attempted (must be refused before connecting)")


# --------------------------------------------------------------------------- a scriptable webhook receiver
class ScriptedReceiver(LoopbackHTTPServer):
    """An http.server on 127.0.0.1: each POST takes the next behaviour from `script` ("ok", "500", "slow:<s>"),
    then "ok"; records (monotonic time, headers, body) of every POST, and which answers were 2xx."""

    def __init__(self, script: list[str]):
        self.script = list(script)
        self.hits: list[tuple[float, dict, bytes]] = []
        self.ok_answers = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.hits.append((time.monotonic(), {k.lower(): v for k, v in self.headers.items()}, body))
                    action = receiver.script.pop(0) if receiver.script else "ok"
                if action.startswith("slow:"):
                    time.sleep(float(action[5:]))  # the sender has given up by now
                    action = "ok"
                status = 500 if action == "500" else 200
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    return
                if status == 200:
                    with receiver._lock:
                        receiver.ok_answers += 1

            def log_message(self, *args):
                pass

        super().__init__(Handler)


def closed_port_url() -> str:
    """An http://127.0.0.1 URL nobody listens on (bound, then closed: connection refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/hook"
