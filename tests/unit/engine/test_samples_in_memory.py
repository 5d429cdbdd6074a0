"""`Diarizer.diarize_samples` with the arrays callers hold: soundfile's (frames, channels), torchaudio's
(channels, frames), integer PCM, other rates, a few NaN or inf samples. Each gave a silently wrong answer (no
speakers, or times 2.76x too long) or a foreign exception before (found by fuzzing the library, fourteenth
session)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import resample_poly

import audio_factory as af
from diarizer import AudioDecodeError

RATE = 16000


@pytest.fixture(scope="module")
def clip():
    samples, _ = af.demo_recording("two-speakers")
    return samples[: 10 * RATE].astype(np.float32)


@pytest.fixture(scope="module")
def expected(engine, clip):
    result = engine.diarize_samples(clip)
    assert result.num_speakers == 2 and abs(result.duration - 10.0) < 1e-6
    return result


def turns(result):
    return [(s.speaker_id, round(s.start, 1), round(s.end, 1)) for s in result.segments]


@pytest.mark.parametrize("layout", ["frames-channels", "channels-frames", "one-channel-first", "int16", "nan-inf"])
def test_every_layout_gives_the_mono_answer(engine, clip, expected, layout):
    array = {
        "frames-channels": lambda: np.stack([clip, clip], axis=1),  # soundfile.read of a stereo file
        "channels-frames": lambda: np.stack([clip, clip]),  # torchaudio.load
        "one-channel-first": lambda: clip[None, :],
        "int16": lambda: np.round(clip * 32767).astype(np.int16),
        "nan-inf": lambda: np.concatenate([clip[:5000], [np.nan] * 1000, [np.inf], clip[6001:]]).astype(np.float32),
    }[layout]()
    result = engine.diarize_samples(array)
    assert abs(result.duration - 10.0) < 1e-6
    assert turns(result) == turns(expected)


def test_another_rate_is_resampled_so_times_stay_true(engine, clip, expected):
    at_44k = resample_poly(clip, 441, 160).astype(np.float32)
    result = engine.diarize_samples(at_44k, sample_rate=44100)
    assert abs(result.duration - 10.0) < 1e-3
    assert [s.speaker_id for s in result.segments] == [s.speaker_id for s in expected.segments]
    assert max(abs(a.start - b.start) + abs(a.end - b.end) for a, b in zip(result.segments, expected.segments)) < 0.1


@pytest.mark.parametrize("array, rate", [
    (np.zeros((3, 3, 3)), RATE), (np.array(["a", "b"]), RATE), (np.zeros((100_000, 100)), RATE),
    (np.zeros(RATE), 1), (np.zeros(RATE), 44100.5), (np.zeros(RATE), True),
])
def test_what_is_not_audio_is_the_packages_own_error(engine, array, rate):
    with pytest.raises(AudioDecodeError):
        engine.diarize_samples(array, sample_rate=rate)


@pytest.mark.parametrize("shape", [(2, 0), (16000, 0), (20, 2)])
def test_no_channels_is_an_error_and_a_tiny_stereo_clip_is_frames(engine, shape):
    if shape[1] == 0:
        with pytest.raises(AudioDecodeError):
            engine.diarize_samples(np.zeros(shape, np.float32))
    else:  # 20 frames of 2 channels, not 2 frames of 20 channels
        assert engine.diarize_samples(np.zeros(shape, np.float32)).duration == 20 / RATE
