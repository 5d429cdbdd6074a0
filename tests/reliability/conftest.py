"""Fixtures for the reliability tests: the moto stack and handlers of tests/flow, the local `diarize serve`
subprocess of tests/acceptance (always killed in teardown), a local-backend runtime, and a network guard.

tests/ is on sys.path (pyproject `pythonpath`), so the shared fixtures are imported from their modules, not
copied; tests/conftest.py's fixtures (fake_engine, wav_bytes, webhook_receiver, ...) are visible as usual.
"""
from __future__ import annotations

import secrets
import socket

import pytest

from acceptance.serve_helpers import LocalServer
from flow.conftest import api_handler, due_now, no_webhook_backoff, stack, transcode_handler, worker_handler  # noqa: F401
from reliability.helpers import ConnectionGuard, ScriptedReceiver


# --------------------------------------------------------------------------- `diarize serve` subprocesses
@pytest.fixture
def start_server(tmp_path):
    """start_server(*args, env=None) -> a running LocalServer on one data dir and key; killed in teardown."""
    started: list[LocalServer] = []
    api_key = "dk_rel_" + secrets.token_urlsafe(16)

    def start(*extra_args: str, env: dict | None = None) -> LocalServer:
        server = LocalServer(tmp_path / "data", tmp_path / f"serve-{len(started)}.log", api_key, list(extra_args),
                             env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory):
    """One server for the hostile-input module (start-up and engine load paid once); killed at module end."""
    tmp = tmp_path_factory.mktemp("hostile")
    server = LocalServer(tmp / "data", tmp / "serve.log", "dk_rel_" + secrets.token_urlsafe(16), [])
    yield server
    server.kill()


# --------------------------------------------------------------------------- fixtures over helpers
@pytest.fixture
def connection_guard(monkeypatch) -> ConnectionGuard:
    """socket.create_connection and socket.connect fail the test for any non-loopback address."""
    guard = ConnectionGuard()
    real_create, real_connect = socket.create_connection, socket.socket.connect

    def create_connection(address, *args, **kwargs):
        guard.check(address)
        return real_create(address, *args, **kwargs)

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            guard.check(address)
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return guard


@pytest.fixture
def scripted_receiver():
    made: list[ScriptedReceiver] = []

    def make(script: list[str]) -> ScriptedReceiver:
        made.append(ScriptedReceiver(script))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


@pytest.fixture
def local_runtime(tmp_path, fake_engine):
    """A local-backend (files + sqlite) runtime with a fake engine, for concurrency tests without moto."""
    from diarizer_service.backends.local import create_local_backends
    from diarizer_service.runtime import Runtime, default_probe
    from diarizer_service.settings import load_settings

    settings = load_settings({"DIARIZER_BACKEND": "local", "DIARIZER_DATA_DIR": str(tmp_path / "data")})
    return Runtime(settings=settings, backends=create_local_backends(settings), probe=default_probe,
                   engine_factory=lambda: fake_engine)
