"""The identification bench's account of the speech no segment covers (bench/identification.py): how far above
the recording's background it is, measured on real samples."""
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "bench"))

import identification  # noqa: E402


def test_uncovered_speech_is_measured_against_the_recordings_background(tmp_path):
    rate = 16000
    rng = np.random.default_rng(7)
    samples = 0.001 * rng.standard_normal(10 * rate)  # background at about -60 dBFS
    loud, faint = slice(2 * rate, 4 * rate), slice(6 * rate, 8 * rate)
    samples[loud] += 0.3 * np.sin(2 * np.pi * 220 * np.arange(2 * rate) / rate)  # ~ -13 dBFS: ~47 dB above
    samples[faint] += 0.002 * np.sin(2 * np.pi * 220 * np.arange(2 * rate) / rate)  # ~3 dB above background
    sf.write(tmp_path / "conv.flac", samples, rate)
    data = {"enrolled": ["alice"], "files": [{
        "uri": "conv", "duration": 10.0,
        "reference": [("alice", 2.0, 4.0), ("alice", 6.0, 8.0), ("bob", 8.5, 9.5)],
        "segments": [("speaker1", 2.0, 4.0)],  # the faint stretch is missed; bob is not enrolled
    }]}
    levels = identification.uncovered_loudness(data, tmp_path)
    assert abs(len(levels["covered"]) * identification.FRAME - 2.0) < 0.05
    assert abs(len(levels["uncovered"]) * identification.FRAME - 2.0) < 0.05  # bob's frames are not counted
    assert 40 < np.median(levels["covered"]) < 55
    assert 1 < np.median(levels["uncovered"]) < 6
