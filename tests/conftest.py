"""Shared test fixtures. pytest puts this folder on sys.path, so tests can `import audio_factory`.

The environment defaults below are set before any test module imports powertools or boto3: tracing off,
a metrics namespace, and fake AWS credentials so that no test can ever reach a real AWS account.
"""
from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from loopback import LoopbackHTTPServer

for _name, _value in {
    "POWERTOOLS_SERVICE_NAME": "diarizer",
    "POWERTOOLS_METRICS_NAMESPACE": "DiarizerTests",
    "POWERTOOLS_TRACE_DISABLED": "true",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}.items():
    os.environ[_name] = _value
for _name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
    os.environ.pop(_name, None)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_EVAL = REPO_ROOT.parent / "shared" / "eval"


# --------------------------------------------------------------------------- CI: nothing may be skipped
# A user's clone may skip what needs ../shared/eval (not part of the repository), network or a CPython 3.12;
# under CI=true every test must run, so a skip is turned into a failure that says what was missing.
CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _fail_skip(report, when: str) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true ({when}), which must run every test; missing: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped and not hasattr(report, "wasxfail"):
        _fail_skip(report, report.when)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped:  # a module-level importorskip
        _fail_skip(report, "collection")


@pytest.fixture(scope="session")
def libri_pool() -> Path:
    """../shared/eval/pool/libri (one folder per LibriSpeech speaker); skips when absent (a user's clone)."""
    pool = SHARED_EVAL / "pool" / "libri"
    if not pool.is_dir():
        pytest.skip("../shared/eval is not present (it is not part of the repository)")
    return pool


@pytest.fixture(scope="session")
def demo_two_speakers() -> bytes:
    """The committed two-speaker demo recording (FLAC bytes)."""
    return (REPO_ROOT / "demo" / "two-speakers.flac").read_bytes()


# --------------------------------------------------------------------------- Lambda events


@dataclass
class FakeLambdaContext:
    function_name: str = "test-function"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:test-function"
    aws_request_id: str = "00000000-0000-4000-8000-000000000000"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 60_000


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    return FakeLambdaContext()


def make_api_event(method: str, path: str, *, query: dict | None = None, headers: dict | None = None,
                   body: str | dict | None = None, path_parameters: dict | None = None) -> dict:
    """An API Gateway REST proxy (v1 payload) event, shaped like `sam local generate-event apigateway aws-proxy`."""
    if isinstance(body, dict):
        body = json.dumps(body)
    headers = {"Content-Type": "application/json", **(headers or {})}
    return {
        "resource": path, "path": path, "httpMethod": method, "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": query or None,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": path_parameters, "stageVariables": None, "body": body, "isBase64Encoded": False,
        "requestContext": {"resourcePath": path, "httpMethod": method, "path": f"/Prod{path}", "stage": "Prod",
                           "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef", "accountId": "123456789012",
                           "identity": {"sourceIp": "127.0.0.1", "userAgent": "pytest"}},
    }


@pytest.fixture
def api_event():
    return make_api_event


# --------------------------------------------------------------------------- a fake engine for fast tests


class FakeEngine:
    """Stands in for diarizer.Diarizer in fast tests: decodes with the real probe, splits the audio into
    alternating turns of `speakers` (2 when -1). Counts calls; can be told to fail transiently. `results` keeps
    what each call returned (as dicts), so a test checks the service passed the engine's answer through for the
    audio it sent, not the fake's constant speaker count."""

    def __init__(self):
        self.calls = 0
        self.fail_with: Exception | None = None
        self.results: list[dict] = []

    def diarize(self, audio, options, *, max_seconds):
        from diarizer import probe_audio
        from diarizer.audio import check_decodes
        from diarizer.types import Diarization, Segment

        check_decodes(audio, max_seconds)  # as the engine's decoding: AudioTooLongError before any model runs
        self.calls += 1
        if self.fail_with is not None:
            raise self.fail_with
        duration = probe_audio(audio).duration
        n = 2 if options.speakers == -1 else options.speakers
        turns = max(n, 4)
        step = duration / turns
        segments = [Segment(f"speaker{i % n + 1}", i * step, (i + 1) * step) for i in range(turns)]
        result = Diarization(segments, duration)
        self.results.append(result.to_dict())
        return result


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture(scope="session")
def wav_bytes():
    """make(seconds) -> a 16 kHz mono 16-bit WAV of a quiet tone (real, decodable audio)."""
    import numpy as np
    import soundfile as sf

    def make(seconds: float = 1.0, rate: int = 16000) -> bytes:
        t = np.arange(int(seconds * rate)) / rate
        buffer = io.BytesIO()
        sf.write(buffer, (0.3 * np.sin(2 * np.pi * 220 * t)).astype("float32"), rate, format="WAV", subtype="PCM_16")
        return buffer.getvalue()

    return make


# --------------------------------------------------------------------------- a real webhook receiver


@dataclass
class ReceivedWebhook:
    path: str
    headers: dict  # lower-cased names
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


class WebhookReceiver(LoopbackHTTPServer):
    """An http.server on 127.0.0.1 in a thread; records every POST; answers `statuses` in turn (then 200), each
    after `delay` seconds, and notes when each answer went out (`answered_at`, time.monotonic())."""

    def __init__(self):
        self.received: list[ReceivedWebhook] = []
        self.statuses: list[int] = []
        self.delay = 0.0
        self.answered_at: list[float] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.received.append(ReceivedWebhook(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                time.sleep(receiver.delay)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                receiver.answered_at.append(time.monotonic())

            def log_message(self, *args):  # keep test output clean
                pass

        super().__init__(Handler)


@pytest.fixture
def webhook_receiver():
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()
