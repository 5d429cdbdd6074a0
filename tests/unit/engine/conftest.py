import pytest


@pytest.fixture(scope="session")
def engine():
    """One engine (ONNX sessions) for the whole session: loading it per test would dominate."""
    from diarizer import Diarizer

    return Diarizer()
