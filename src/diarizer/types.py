"""The engine's public data types: what goes in (options) and what comes out (a diarization)."""
from __future__ import annotations

from dataclasses import dataclass, field


class DiarizationError(Exception):
    """Base class for every error the engine raises on purpose."""


class AudioDecodeError(DiarizationError, ValueError):
    """The bytes are not audio we can decode (corrupt, truncated, unknown format)."""


class InvalidOptionsError(DiarizationError, ValueError):
    """Speaker-count options that contradict each other."""


@dataclass(frozen=True)
class DiarizationOptions:
    """How to diarize one recording.

    speakers: exact number of speakers, or -1 to estimate it.
    min_speakers / max_speakers: bounds for the estimate (ignored when `speakers` is given).
    merge_adjacent: join consecutive turns of the same speaker (the client's `vad` flag).
    exclusive: at most one speaker at a time (overlapping speech goes to the most likely speaker).
    """

    speakers: int = -1
    min_speakers: int | None = None
    max_speakers: int | None = None
    merge_adjacent: bool = True
    exclusive: bool = False

    def __post_init__(self) -> None:
        if self.speakers != -1 and self.speakers < 1:
            raise InvalidOptionsError("speakers must be -1 (estimate) or a positive integer")
        for name in ("min_speakers", "max_speakers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InvalidOptionsError(f"{name} must be a positive integer")
        if self.min_speakers and self.max_speakers and self.min_speakers > self.max_speakers:
            raise InvalidOptionsError("min_speakers is larger than max_speakers")


@dataclass(frozen=True)
class Segment:
    speaker_id: str  # "speaker1", "speaker2", ... numbered by first appearance
    start: float  # seconds
    end: float  # seconds

    def to_dict(self) -> dict:
        return {"speaker_id": self.speaker_id, "start": round(self.start, 3), "end": round(self.end, 3)}


@dataclass(frozen=True)
class Diarization:
    """The result: the contract's Diarized object plus the audio duration."""

    segments: list[Segment] = field(default_factory=list)
    duration: float = 0.0

    @property
    def num_speakers(self) -> int:
        return len({s.speaker_id for s in self.segments})

    def to_dict(self) -> dict:
        """The contract's Diarized object: {"num_speakers", "segments": [{speaker_id, start, end}]}."""
        return {"num_speakers": self.num_speakers, "segments": [s.to_dict() for s in self.segments]}

    def to_rttm(self, file_id: str) -> str:
        lines = [
            f"SPEAKER {file_id} 1 {s.start:.3f} {s.end - s.start:.3f} <NA> <NA> {s.speaker_id} <NA> <NA>\n"
            for s in self.segments
        ]
        return "".join(lines)
