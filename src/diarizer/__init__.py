"""diarizer: speaker diarization ("who spoke when") on a plain CPU with ONNX models.

AWS-free. Audio in, segments out::

    from diarizer import Diarizer, DiarizationOptions
    engine = Diarizer()                      # loads the ONNX models once
    result = engine.diarize("meeting.flac", DiarizationOptions(speakers=-1))
    result.to_dict()   # {"num_speakers": 2, "segments": [{"speaker_id": "speaker1", "start": 0.5, "end": 3.2}, ...]}
"""
from diarizer.types import (
    AudioDecodeError,
    AudioTooLongError,
    Diarization,
    DiarizationError,
    DiarizationOptions,
    EnrollmentError,
    InvalidOptionsError,
    Segment,
    SpeakerMatch,
    Voiceprint,
)

__all__ = [
    "AudioDecodeError",
    "AudioTooLongError",
    "Diarization",
    "DiarizationError",
    "DiarizationOptions",
    "Diarizer",
    "EnrollmentError",
    "InvalidOptionsError",
    "Segment",
    "SpeakerMatch",
    "Voiceprint",
    "probe_audio",
]


def __getattr__(name: str):
    # Lazy: importing the types must not load onnxruntime/scipy (the API function stays light).
    if name == "Diarizer":
        from diarizer.pipeline import Diarizer

        return Diarizer
    if name == "probe_audio":
        from diarizer.audio import probe_audio

        return probe_audio
    raise AttributeError(name)
