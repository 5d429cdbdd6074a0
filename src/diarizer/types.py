"""The engine's public data types: what goes in (options) and what comes out (a diarization)."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field


class DiarizationError(Exception):
    """Base class for every error the engine raises on purpose."""


class AudioDecodeError(DiarizationError, ValueError):
    """The bytes are not audio we can decode (corrupt, truncated, unknown format)."""


class EmptyAudioError(AudioDecodeError):
    """A well-formed file that holds no audio samples (a recording stopped at once, a zero-length AMR)."""


class AudioTooLongError(AudioDecodeError):
    """More audio than the caller allows (`limit_seconds`), counted as decoded: a header's length is only a
    claim (an MP3's is an estimate, a streamed FLAC's unknown, a WebM's writable by anyone)."""

    def __init__(self, message: str, limit_seconds: float):
        super().__init__(message)
        self.limit_seconds = limit_seconds


class InvalidOptionsError(DiarizationError, ValueError):
    """Speaker-count options that contradict each other."""


class EnrollmentError(DiarizationError, ValueError):
    """Audio that cannot become a voiceprint; `code` says why ("too_little_speech", "several_voices")."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, eq=False)
class Voiceprint:
    """One enrolled voice: a name and the unit-length mean CAM++ embedding of its speech.

    Biometric data: keep it out of logs and reprs (the embedding is hidden from `repr`).
    """

    name: str
    embedding: tuple[float, ...] = field(repr=False)
    seconds: float = 0.0  # speech it was computed from


@dataclass(frozen=True)
class DiarizationOptions:
    """How to diarize one recording.

    speakers: exact number of speakers, or -1 to estimate it.
    min_speakers / max_speakers: bounds for the estimate (ignored when `speakers` is given).
    merge_adjacent: join consecutive turns of the same speaker (the client's `vad` flag).
    exclusive: at most one speaker at a time (overlapping speech goes to the most likely speaker).
    identify: name the speakers whose voice matches one of `voiceprints` (see identify.py).
    confidence: give every segment a calibrated probability that its speaker is right.
    """

    speakers: int = -1
    min_speakers: int | None = None
    max_speakers: int | None = None
    merge_adjacent: bool = True
    exclusive: bool = False
    identify: bool = False
    voiceprints: tuple[Voiceprint, ...] = field(default=(), compare=False, repr=False)
    confidence: bool = False

    def __post_init__(self) -> None:
        if not _whole(self.speakers) or (self.speakers != -1 and self.speakers < 1):
            raise InvalidOptionsError("speakers must be -1 (estimate) or a positive integer")
        for name in ("min_speakers", "max_speakers"):
            value = getattr(self, name)
            if value is not None and (not _whole(value) or value < 1):
                raise InvalidOptionsError(f"{name} must be a positive integer")
        for voiceprint in self.voiceprints:
            embedding = getattr(voiceprint, "embedding", None)
            if not isinstance(voiceprint, Voiceprint) or not hasattr(embedding, "__iter__") or not all(
                    isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) for x in embedding):
                raise InvalidOptionsError("voiceprints must be Voiceprint objects with finite numbers (as "
                                          "Diarizer.enroll or VoiceprintFile.load make them)")
        if self.min_speakers and self.max_speakers and self.min_speakers > self.max_speakers:
            raise InvalidOptionsError("min_speakers is larger than max_speakers")


def _whole(value) -> bool:
    """An integer (numpy's too), not a bool, a float or a string: 2.5 speakers was accepted, "2" raised TypeError."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class Segment:
    speaker_id: str  # "speaker1", "speaker2", ... numbered by first appearance
    start: float  # seconds
    end: float  # seconds
    speaker_name: str | None = None  # the enrolled name of this speaker (identification only)
    confidence: float | None = None  # P(this segment's speaker is right), when asked for

    def to_dict(self, named: bool = False) -> dict:
        out = {"speaker_id": self.speaker_id, "start": round(float(self.start), 3), "end": round(float(self.end), 3)}
        if named:
            out["speaker_name"] = self.speaker_name
        if self.confidence is not None:
            out["confidence"] = round(float(self.confidence), 3)
        return out


@dataclass(frozen=True)
class SpeakerMatch:
    """A diarized speaker and the voiceprint it was matched to (name None: nobody enrolled sounds like it)."""

    speaker_id: str
    name: str | None
    match: float | None  # cosine similarity to the matched voiceprint

    def to_dict(self) -> dict:
        return {"speaker_id": self.speaker_id, "name": self.name,
                "match": None if self.match is None else round(self.match, 3)}


@dataclass(frozen=True)
class Diarization:
    """The result: the contract's Diarized object plus the audio duration."""

    segments: list[Segment] = field(default_factory=list)
    duration: float = 0.0
    speakers: list[SpeakerMatch] | None = None  # set by identification only

    @property
    def num_speakers(self) -> int:
        return len({s.speaker_id for s in self.segments})

    def to_dict(self) -> dict:
        """The contract's Diarized object: {"num_speakers", "segments": [{speaker_id, start, end}]}.

        Identification adds `speaker_name` to each segment and a `speakers` list; confidence adds
        `confidence` to each segment. Without them the object is exactly the contract's.
        """
        named = self.speakers is not None
        out = {"num_speakers": self.num_speakers, "segments": [s.to_dict(named) for s in self.segments]}
        if named:
            out["speakers"] = [s.to_dict() for s in self.speakers]
        return out

    def to_rttm(self, file_id: str) -> str:
        file_id = "_".join(file_id.split()) or "audio"  # RTTM fields are space separated: one token
        lines = [
            f"SPEAKER {file_id} 1 {s.start:.3f} {s.end - s.start:.3f} <NA> <NA> {s.speaker_id} <NA> <NA>\n"
            for s in self.segments
        ]
        return "".join(lines)
