"""The test-audio helpers build what they say they build."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for audio_factory

import audio_factory as af  # noqa: E402


def test_simple_signals_have_the_asked_length_and_level():
    assert af.silence(1.5).shape == (24000,) and not af.silence(1.5).any()
    t = af.tone(0.5, 1000.0, sr=8000, amplitude=0.25)
    assert t.dtype == np.float32 and len(t) == 4000 and np.max(np.abs(t)) == pytest.approx(0.25, abs=1e-3)
    n = af.noise(2.0, amplitude=0.1, seed=3)
    assert len(n) == 32000 and np.sqrt(np.mean(n**2)) == pytest.approx(0.1, rel=0.05)
    assert np.array_equal(n, af.noise(2.0, amplitude=0.1, seed=3))


@pytest.mark.parametrize("name", sorted(af.VARIANTS))
def test_variants_round_trip_through_soundfile(name):
    spec = af.VARIANTS[name]
    signal = af.tone(1.0, 440.0)
    data = af.variant(signal, name)
    info = sf.info(af.io.BytesIO(data))
    assert (info.samplerate, info.channels, info.subtype) == (spec.sr, spec.channels, spec.subtype)
    decoded, sr = af.decode(data)
    assert sr == spec.sr
    assert decoded.shape[0] == pytest.approx(spec.sr, abs=0.02 * spec.sr)  # one second, codec padding aside
    left = decoded[:, 0] if decoded.ndim == 2 else decoded
    back = af.resample(left, sr, 16000)[:16000]
    n = min(len(back), 16000)
    if not spec.lossy:  # lossless: the same waveform, up to quantisation and resampling
        tol = 0.02 if spec.subtype == "PCM_U8" else 5e-3 if spec.sr != 16000 else 1e-3
        assert np.max(np.abs(back[100 : n - 100] - signal[100 : n - 100])) < tol
    else:  # lossy codecs: the tone survives
        spectrum = np.abs(np.fft.rfft(back[:n]))
        assert abs(np.argmax(spectrum) * 16000 / n - 440) < 5


def test_write_and_write_variants(tmp_path):
    path = af.write(tmp_path / "x" / "a.flac", af.tone(0.3), 16000)
    assert sf.info(path).format == "FLAC" and sf.info(path).frames == 4800
    paths = af.write_variants(tmp_path, af.tone(0.3), names=["wav_8k", "mp3"])
    assert {p.name for p in paths.values()} == {"signal-wav_8k.wav", "signal-mp3.mp3"}
    assert sf.info(paths["wav_8k"]).samplerate == 8000


def test_stereo_keeps_the_signal_on_both_channels():
    stereo = af.to_stereo(af.tone(0.1))
    assert stereo.shape == (1600, 2) and np.allclose(stereo[:, 1], 0.8 * stereo[:, 0])


def test_corrupt_and_truncate():
    flac = af.encode(af.tone(1.0), format="FLAC")
    broken = af.corrupt(flac)
    assert len(broken) == len(flac) and broken != flac
    with pytest.raises(sf.LibsndfileError):
        af.decode(broken)
    damaged = af.corrupt(flac, keep_header=True)
    assert damaged[:256] == flac[:256] and damaged != flac
    assert af.corrupt(flac, seed=1) == af.corrupt(flac, seed=1)
    assert af.truncate(flac) == flac[: len(flac) // 2]
    assert af.truncate(flac, keep_bytes=10) == flac[:10]


def test_wav_header_claims_a_billion_samples_but_holds_a_few():
    data = af.wav_header_claiming(10**9, actual_samples=1600)
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE" and len(data) == 44 + 3200
    assert int.from_bytes(data[40:44], "little") == 2 * 10**9
    samples, sr = af.decode(data)  # libsndfile believes the file, not the header
    assert sr == 16000 and len(samples) == 1600
    with pytest.raises(ValueError):
        af.wav_header_claiming(3 * 10**9)


def test_nan_float_wav_holds_nan_and_inf():
    samples, sr = af.decode(af.nan_float_wav(1.0, nan_fraction=0.1, inf=True))
    assert sr == 16000 and len(samples) == 16000 and sf.info(af.io.BytesIO(af.nan_float_wav())).subtype == "FLOAT"
    assert np.isnan(samples).sum() == 1600 and np.isposinf(samples).sum() == 1 and np.isneginf(samples).sum() == 1


def test_rttm_round_trip(tmp_path):
    turns = [(0.5, 2.25, "A"), (2.75, 4.0, "B")]
    (tmp_path / "x.rttm").write_text(af.rttm("x", turns))
    assert af.read_rttm(tmp_path / "x.rttm") == turns


@pytest.mark.parametrize("name, speakers", [("two-speakers", {"A", "B"}), ("three-speakers", {"A", "B", "C"})])
def test_bundled_demo_recordings(name, speakers):
    info = sf.info(af.DEMO_DIR / f"{name}.flac")
    assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
    assert 20 <= info.duration <= 35 and (af.DEMO_DIR / f"{name}.flac").stat().st_size < 1_000_000
    samples, turns = af.demo_recording(name)
    assert {label for _, _, label in turns} == speakers
    assert all(0 <= s < e <= len(samples) / 16000 for s, e, _ in turns)
    speech = np.zeros(len(samples), bool)
    for s, e, _ in turns:
        speech[int(s * 16000) : int(e * 16000)] = True
    rms = lambda x: float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))  # noqa: E731
    assert rms(samples[speech]) > 30 * rms(samples[~speech]) > 0  # loud speech, faint noise, never digital silence


def _check_conversation(samples, turns, n_speakers, seconds):
    assert samples.dtype == np.float32 and len(samples) == int(seconds * 16000)
    assert len({label for _, _, label in turns}) == n_speakers
    previous_end = 0.0
    for start, end, _ in turns:
        assert previous_end <= start < end <= seconds - 0.2 + 1e-9
        assert 0.25 <= end - start <= 4.0 + 1e-9
        previous_end = end
    if n_speakers > 1:
        assert all(a != b for (_, _, a), (_, _, b) in zip(turns, turns[1:]))
    speech = np.zeros(len(samples), bool)
    for s, e, _ in turns:
        speech[round(s * 16000) : round(e * 16000)] = True
    assert not samples[~speech].any()  # silence outside the turns, unless snr_db
    assert np.abs(samples[speech]).max() > 0.01


@af.requires_shared_eval
@pytest.mark.parametrize("n_speakers", [1, 2, 4])
def test_conversation_from_pool(n_speakers):
    samples, turns = af.conversation_from_pool(af.LIBRI_POOL, n_speakers, seed=n_speakers, seconds=20)
    _check_conversation(samples, turns, n_speakers, 20)
    again, turns_again = af.conversation_from_pool(af.LIBRI_POOL, n_speakers, seed=n_speakers, seconds=20)
    assert turns == turns_again and np.array_equal(samples, again)
    other = af.conversation_from_pool(af.LIBRI_POOL, n_speakers, seed=n_speakers + 100, seconds=20)[1]
    assert other != turns


@af.requires_shared_eval
def test_conversation_from_pool_with_noise_and_limits():
    samples, turns = af.conversation_from_pool(af.LIBRI_POOL, 3, seed=7, seconds=15, snr_db=20)
    assert len(samples) == 15 * 16000 and samples[: int(turns[0][0] * 16000)].std() > 0
    with pytest.raises(ValueError):
        af.conversation_from_pool(af.LIBRI_POOL, 10_000, seed=0)


def test_conversation_from_a_pool_of_synthetic_speakers(tmp_path):
    """The same function on a tiny pool built here, so it is tested without ../shared too."""
    for i, freq in enumerate([220.0, 330.0, 550.0]):
        clip = np.concatenate([af.tone(3.0, freq, amplitude=0.3), af.silence(0.5), af.tone(3.0, freq)])
        af.write(tmp_path / f"spk{i}" / "utt.flac", clip, 16000)
    (tmp_path / "empty").mkdir()
    assert af.pool_speakers(tmp_path) == ["spk0", "spk1", "spk2"]
    samples, turns = af.conversation_from_pool(tmp_path, 3, seed=1, seconds=12)
    _check_conversation(samples, turns, 3, 12)
