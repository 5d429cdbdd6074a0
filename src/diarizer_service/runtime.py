"""What handlers share per container: settings, backends, and the engine (loaded lazily, once)."""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Protocol

from diarizer_service.backends import Backends, create_backends
from diarizer_service.jobs import JobStore
from diarizer_service.settings import Settings, get_settings


class AudioInfo(Protocol):
    format: str
    duration: float
    length_known: bool  # False: the header's length is a claim; only decoding (`verify`) tells


class DiarizationResult(Protocol):
    duration: float

    def to_dict(self) -> dict: ...

    def to_rttm(self, file_id: str) -> str: ...


class Engine(Protocol):
    def diarize(self, audio: Any, options: Any, *, max_seconds: float) -> DiarizationResult: ...

    def enroll(self, name: str, sources: list) -> Any: ...


def default_probe(data: bytes) -> AudioInfo:
    from diarizer import probe_audio  # light: reads headers, no ONNX

    return probe_audio(data)


def default_verify(data: bytes, max_seconds: float) -> AudioInfo:
    """The length as decoded; AudioTooLongError as soon as it passes `max_seconds` (never decodes further)."""
    from diarizer.audio import check_decodes  # decodes every frame at its own rate: light, no resampling

    return check_decodes(data, max_seconds)


def default_engine_factory() -> Engine:
    from diarizer import Diarizer  # heavy: onnxruntime, scipy; only the worker and sync routes get here

    return Diarizer()


@dataclass
class Runtime:
    settings: Settings
    backends: Backends
    probe: Callable[[bytes], AudioInfo] = default_probe  # header only: fast, for the sync route and the worker
    # The whole body: the async route's inline audio, and any audio whose header does not give its length.
    verify: Callable[[bytes, float], AudioInfo] = default_verify
    engine_factory: Callable[[], Engine] = default_engine_factory
    # Entered around the engine's load and run: `diarize serve` lets other requests through its one-at-a-time
    # gateway meanwhile (local_server/gateway.py); nothing on Lambda.
    around_engine: Callable[[], ContextManager] = contextlib.nullcontext
    _engine: Engine | None = field(default=None, repr=False)
    _engine_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _diarize_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def jobs(self) -> JobStore:
        return JobStore(self.backends.jobs)

    def engine(self) -> Engine:
        """The engine, created on first use and reused for every later message/request in this container."""
        with self._engine_lock:
            if self._engine is None:
                self._engine = self.engine_factory()
            return self._engine

    def diarize(self, audio: bytes, options: Any, *, max_seconds: float) -> DiarizationResult:
        """One diarization at a time per engine (it is not safe to call concurrently, e.g. the local server).
        The engine stops decoding past `max_seconds` (AudioTooLongError), whatever the header said."""
        with self.around_engine():
            engine = self.engine()
            with self._diarize_lock:
                return engine.diarize(audio, options, max_seconds=max_seconds)

    def enroll(self, audio: bytes, name: str) -> Any:
        """A voiceprint of the one voice in `audio` (the engine's Voiceprint); same one-at-a-time rule, and
        like `diarize` it lets `diarize serve` answer other requests while the engine runs."""
        with self.around_engine():
            engine = self.engine()
            with self._diarize_lock:
                return engine.enroll(name, [audio])


_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        settings = get_settings()
        _runtime = Runtime(settings=settings, backends=create_backends(settings))
    return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    """Replace (or with None, forget) the process runtime: for tests and the local server."""
    global _runtime
    _runtime = runtime
