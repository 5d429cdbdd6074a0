"""Kaldi-compatible log-mel filterbank features in numpy (what CAM++ was trained on).

Matches kaldi-native-fbank / torchaudio.compliance.kaldi.fbank with the 3D-Speaker settings
(25 ms frames, 10 ms shift, 80 bins, dither 0, povey window, snip_edges) to ~1e-4; the test
suite checks it against kaldi-native-fbank.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000
FRAME_LENGTH = 400  # 25 ms
FRAME_SHIFT = 160  # 10 ms
FFT_SIZE = 512
NUM_MEL_BINS = 80
LOW_FREQ = 20.0
PREEMPHASIS = 0.97
_EPSILON = np.finfo(np.float32).eps


def num_frames(num_samples: int) -> int:
    """Frames Kaldi makes from `num_samples` with snip_edges=True."""
    return 0 if num_samples < FRAME_LENGTH else 1 + (num_samples - FRAME_LENGTH) // FRAME_SHIFT


@lru_cache(maxsize=1)
def _povey_window() -> np.ndarray:
    n = np.arange(FRAME_LENGTH)
    return ((0.5 - 0.5 * np.cos(2 * np.pi * n / (FRAME_LENGTH - 1))) ** 0.85).astype(np.float32)


def _mel(freq: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log(1.0 + freq / 700.0)


@lru_cache(maxsize=1)
def _mel_banks() -> np.ndarray:
    """(FFT_SIZE // 2 + 1, NUM_MEL_BINS) triangular filters on the mel scale, as Kaldi builds them."""
    nyquist = SAMPLE_RATE / 2
    fft_bin_width = SAMPLE_RATE / FFT_SIZE
    mel_low, mel_high = _mel(np.array(LOW_FREQ)), _mel(np.array(nyquist))
    delta = (mel_high - mel_low) / (NUM_MEL_BINS + 1)
    left = mel_low + np.arange(NUM_MEL_BINS) * delta
    center, right = left + delta, left + 2 * delta
    bin_mel = _mel(fft_bin_width * np.arange(FFT_SIZE // 2))[:, None]
    up = (bin_mel - left) / (center - left)
    down = (right - bin_mel) / (right - center)
    weights = np.maximum(0.0, np.minimum(up, down))
    # Kaldi ignores the Nyquist bin: a zero row keeps the shapes of the full rfft.
    return np.vstack([weights, np.zeros((1, NUM_MEL_BINS))]).astype(np.float32)


def fbank(samples: np.ndarray, chunk_frames: int = 6000) -> np.ndarray:
    """(num_frames, 80) float32 log-mel energies of 16 kHz mono samples at full scale 1.0.

    The samples stay at full scale 1.0 (not Kaldi's 16-bit scale): 3D-Speaker trained CAM++ on such
    input, and the log floor treats quiet frames differently at the two scales (which is why decoding raises
    quiet recordings to a working level, `audio.at_working_level`; peaks may then pass 1.0, which changes
    nothing here). Computed in chunks of frames so a long file never needs a (frames x 512) matrix at once.
    """
    total = num_frames(len(samples))
    out = np.empty((total, NUM_MEL_BINS), np.float32)
    window, banks = _povey_window(), _mel_banks()
    for first in range(0, total, chunk_frames):
        count = min(chunk_frames, total - first)
        start = first * FRAME_SHIFT
        span = np.asarray(samples[start : start + (count - 1) * FRAME_SHIFT + FRAME_LENGTH], np.float32)
        frames = np.lib.stride_tricks.sliding_window_view(span, FRAME_LENGTH)[::FRAME_SHIFT]
        frames = frames - frames.mean(axis=1, keepdims=True)  # DC removal, per frame
        emphasized = np.empty_like(frames)
        emphasized[:, 1:] = frames[:, 1:] - PREEMPHASIS * frames[:, :-1]
        emphasized[:, 0] = frames[:, 0] * (1.0 - PREEMPHASIS)
        spectrum = np.fft.rfft(emphasized * window, n=FFT_SIZE)
        power = spectrum.real**2 + spectrum.imag**2
        out[first : first + count] = np.log(np.maximum(power.astype(np.float32) @ banks, _EPSILON))
    return out
