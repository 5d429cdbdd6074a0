"""Runtime: both engine entry points step out of `diarize serve`'s one-at-a-time handler while they run."""
from __future__ import annotations

import contextlib
import dataclasses


class RecordingEngine:
    def __init__(self, inside: list):
        self.inside, self.seen = inside, []

    def diarize(self, audio, options, *, max_seconds):
        self.seen.append(("diarize", bool(self.inside)))

    def enroll(self, name, sources):
        self.seen.append(("enroll", bool(self.inside)))


def test_diarize_and_enroll_run_inside_around_engine(runtime):
    inside: list = []

    @contextlib.contextmanager
    def around():
        inside.append(True)
        try:
            yield
        finally:
            inside.pop()

    engine = RecordingEngine(inside)
    local = dataclasses.replace(runtime, around_engine=around, engine_factory=lambda: engine)
    local.diarize(b"audio", None, max_seconds=60)
    local.enroll(b"audio", "alice")
    assert engine.seen == [("diarize", True), ("enroll", True)]
    assert inside == []
