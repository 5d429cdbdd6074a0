"""Decoding: every format/rate/channel layout to 16 kHz mono; broken input gives a clear error."""
from math import gcd

import numpy as np
import pytest
from scipy.signal import resample_poly

import audio_factory as af
from diarizer import AudioDecodeError, probe_audio
from diarizer import audio


@pytest.fixture(scope="module")
def speech():
    return af.demo_recording()[0][: 16000 * 4]


@pytest.mark.parametrize("name", af.VARIANTS)
def test_every_variant_decodes_to_16k_mono(speech, name):
    data = af.variant(speech, name)
    decoded = audio.decode(data)
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    assert abs(len(decoded) / 16000 - 4.0) < 0.1  # MP3 adds a little encoder padding
    assert np.isfinite(decoded).all() and np.abs(decoded).max() <= 1.0
    assert np.abs(decoded).max() > 0.05  # real signal, not silence


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_blockwise_resampling_equals_resampling_at_once(rate, monkeypatch):
    monkeypatch.setattr(audio, "BLOCK_SECONDS", 1)  # many blocks, many seams
    x = af.noise(5.3, sr=rate, amplitude=0.2, seed=rate)
    decoded = audio.decode(af.encode(x, rate, "WAV", "FLOAT"))
    g = gcd(rate, 16000)
    whole = resample_poly(x, 16000 // g, rate // g).astype(np.float32)
    assert len(decoded) == len(whole)
    assert np.abs(decoded - whole).max() < 1e-5


def test_long_audio_spills_to_a_memory_mapped_file(monkeypatch, speech):
    data = af.encode(speech, 16000, "FLAC")
    in_memory = audio.decode(data)
    monkeypatch.setattr(audio, "SPILL_SECONDS", 1)
    spilled = audio.decode(data)
    assert isinstance(spilled, np.memmap)
    assert np.array_equal(np.asarray(spilled), in_memory)


def test_the_format_comes_from_the_bytes_not_the_name(tmp_path, speech):
    path = tmp_path / "really-flac.mp3"
    path.write_bytes(af.encode(speech, 16000, "FLAC"))
    assert probe_audio(path).format == "FLAC"
    assert len(audio.decode(path)) == len(speech)


def test_probe_reads_the_header_only(speech):
    info = probe_audio(af.variant(speech, "wav_44k"))
    assert (info.format, info.sample_rate, info.channels) == ("WAV", 44100, 1)
    assert abs(info.duration - 4.0) < 0.01


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"this is plain text, not audio at all", "not a recognised audio file"),
        (b"\x00\x00\x00\x18ftypmp42" + bytes(100), "not supported"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "cannot decode"),
    ],
)
def test_non_audio_is_a_clear_error(data, message):
    with pytest.raises(AudioDecodeError, match=message):
        audio.decode(data)


def test_corrupt_audio_is_a_clear_error(speech):
    with pytest.raises(AudioDecodeError):
        audio.decode(af.corrupt(af.encode(speech, 16000, "FLAC")))


def test_truncated_audio_decodes_what_is_there_or_fails_cleanly(speech):
    data = af.truncate(af.encode(speech, 16000, "FLAC"), 0.5)
    try:
        decoded = audio.decode(data)
    except AudioDecodeError:
        return
    assert 0 < len(decoded) < len(speech)


def test_a_header_claiming_a_billion_samples_is_not_trusted():
    decoded = audio.decode(af.wav_header_claiming(10**9, actual_samples=1600))
    assert len(decoded) == 1600


def test_nan_and_inf_samples_become_silence():
    decoded = audio.decode(af.nan_float_wav(1.0, nan_fraction=0.3, inf=True))
    assert np.isfinite(decoded).all()


def test_missing_file_is_a_decode_error(tmp_path):
    with pytest.raises(AudioDecodeError, match="no such audio file"):
        audio.decode(tmp_path / "nope.wav")
