"""Fast service tests: the local backend in a temp dir, the real (light) probe, a fake engine."""
from __future__ import annotations

import dataclasses

import pytest

from diarizer_service.auth import create_key
from diarizer_service.backends.local import create_local_backends
from diarizer_service.runtime import Runtime, default_probe
from diarizer_service.settings import load_settings


@pytest.fixture
def settings(tmp_path):
    return load_settings({"DIARIZER_BACKEND": "local", "DIARIZER_DATA_DIR": str(tmp_path / "data")})


@pytest.fixture
def runtime(settings, fake_engine) -> Runtime:
    return Runtime(settings=settings, backends=create_local_backends(settings), probe=default_probe,
                   engine_factory=lambda: fake_engine)


@pytest.fixture
def deployed_runtime(runtime) -> Runtime:
    """Same storage, deployed-mode webhook rules (https only, public hosts only)."""
    return dataclasses.replace(runtime, settings=dataclasses.replace(runtime.settings, allow_local_webhooks=False))


@pytest.fixture
def new_key(runtime):
    return create_key(runtime.backends.keys, "unit test")


@pytest.fixture
def key(new_key):
    return new_key.record
