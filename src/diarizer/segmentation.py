"""Local speaker segmentation with pyannote segmentation-3.0 (ONNX) on sliding 10 s windows.

The model answers, for every 16.875 ms frame of a window, which of up to 3 *local* speakers talk
(at most 2 at once), as log-probabilities over 7 "powerset" classes. Local means the labels are
arbitrary per window: clustering later tells which local speaker of which window is who.
"""
from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
WINDOW_SECONDS = 10.0
WINDOW_SAMPLES = int(WINDOW_SECONDS * SAMPLE_RATE)
FRAME_STEP = 0.016875  # seconds between output frames (270 samples)
FRAME_DURATION = 0.0619375  # receptive field of one output frame
LOCAL_SPEAKERS = 3
MIN_WINDOW_SAMPLES = 4000  # below 0.25 s the model has too little context to say anything

# Powerset classes -> which local speakers are active: none, 1, 2, 3, 1+2, 1+3, 2+3.
POWERSET = np.array(
    [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=np.float32
)


def window_starts(num_samples: int, step_seconds: float) -> list[int]:
    """Start samples of the windows covering the audio; the last one ends exactly at the end.

    Aligning the last window to the end (instead of zero-padding past it) keeps every frame the
    model sees real audio.
    """
    if num_samples <= WINDOW_SAMPLES:
        return [0]
    step = int(round(step_seconds * SAMPLE_RATE))
    last = num_samples - WINDOW_SAMPLES
    starts = list(range(0, last, step))
    if len(starts) > 1 and last - starts[-1] < step // 4:  # a near-copy of the last window adds cost only
        starts.pop()
    return starts + [last]


def frames_in(num_samples: int) -> int:
    """Output frames for an input of `num_samples` (589 for 10 s), from the model's strides."""
    # SincNet (251-tap conv, stride 10) + three max-pools of 3 + two 5-tap convs: 270 samples/frame.
    n = (num_samples - 251) // 10 + 1
    n = n // 3
    n = (n - 4) // 3
    n = (n - 4) // 3
    return max(n, 0)


# Powerset classes -> how many speakers talk (0, 1 or 2).
CARDINALITY = np.eye(3, dtype=np.float32)[POWERSET.sum(axis=1).astype(int)]  # (7, 3)


def hard_activity(probs: np.ndarray) -> np.ndarray:
    """(..., 7) class probabilities -> (..., 3) 0/1 local speakers of the most likely class."""
    return POWERSET[probs.argmax(axis=-1)]


def soft_activity(probs: np.ndarray) -> np.ndarray:
    """(..., 7) -> (..., 3) probability that each local speaker talks."""
    return probs @ POWERSET


def cardinality(probs: np.ndarray) -> np.ndarray:
    """(..., 7) -> (..., 3) probability that 0, 1 or 2 people talk."""
    return probs @ CARDINALITY


class Segmenter:
    def __init__(self, session):
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def probabilities(self, windows: np.ndarray) -> np.ndarray:
        """(batch, samples) audio -> (batch, frames, 7) powerset class probabilities."""
        log_probs = self.session.run(None, {self.input_name: windows[:, None, :].astype(np.float32)})[0]
        return np.exp(log_probs)

    def windows(self, samples: np.ndarray, starts: list[int]):
        """Yield (start, audio) per window; a file shorter than one window is one short window."""
        length = min(WINDOW_SAMPLES, len(samples))
        for start in starts:
            yield start, np.asarray(samples[start : start + length], dtype=np.float32)
