"""Fixtures for the acceptance tests: real `diarize serve` subprocesses, always killed in teardown."""
from __future__ import annotations

import base64
import secrets
from pathlib import Path

import pytest
from serve_helpers import DEMO_TWO_SPEAKERS, LocalServer


def new_api_key() -> str:
    return "dk_test_" + secrets.token_urlsafe(16)


@pytest.fixture
def start_server(tmp_path):
    """start_server(data_dir=None, *args, api_key=...) -> a running LocalServer; all of them are killed in teardown.

    Every server of a test gets the same key (and data dir) unless told otherwise; api_key=None lets the server
    create one; `env` adds environment variables (e.g. DIARIZER_MAX_RECEIVE_COUNT)."""
    started: list[LocalServer] = []
    api_key = new_api_key()

    def start(data_dir: Path | None = None, *extra_args: str, api_key: str | None = api_key,
              env: dict | None = None) -> LocalServer:
        server = LocalServer(data_dir or tmp_path / "data", tmp_path / f"serve-{len(started)}.log", api_key,
                             list(extra_args), env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One server for a module's tests that only submit and read (start-up and engine load paid once)."""
    tmp = tmp_path_factory.mktemp("serve")
    server = LocalServer(tmp / "data", tmp / "serve.log", new_api_key(), [])
    yield server
    server.kill()


@pytest.fixture(scope="session")
def demo_audio_b64() -> str:
    return base64.b64encode(DEMO_TWO_SPEAKERS.read_bytes()).decode()


@pytest.fixture(scope="session")
def long_audio_b64() -> str:
    """The demo conversation three times over (88 s, FLAC): a job that surely still runs a moment later."""
    import io

    import numpy as np
    import soundfile as sf

    samples, rate = sf.read(DEMO_TWO_SPEAKERS, dtype="int16")
    buffer = io.BytesIO()
    sf.write(buffer, np.tile(samples, 3), rate, format="FLAC", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode()
