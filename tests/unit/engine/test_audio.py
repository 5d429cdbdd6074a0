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


@pytest.mark.parametrize("rate, level, writer, tagged", [
    (16000, 0.9, "libsndfile", False),  # 24 kbit/s: LAME has no room for its Xing/Info frame
    (8000, 0.9, "libsndfile", False),  # MPEG-2.5: the codec delay is 138 ms
    (44100, 0.99, "libsndfile", False),
    (16000, 0.0, "libsndfile", True),
    (16000, None, "ffmpeg", True),  # FFmpeg writes its own Info frame
])
def test_an_mp3_is_on_the_timeline_every_player_gives_it(speech, rate, level, writer, tagged):
    """Times are the file's as any player, editor or speech recogniser decodes it. A tagged MP3 starts where its
    source did. An untagged one plays the encoder's look-ahead and the decoder's delay first (1105 samples at
    its rate) in every decoder, and the engine keeps them, so the worker (libsndfile) and the transcoder
    (FFmpeg, which browsers also use) agree with each other and with what the timeline page plays."""
    import io

    from diarizer import transcode

    data = af.mp3(af.resample(speech, 16000, rate), rate, level, writer)
    source = af.resample(af.resample(speech, 16000, rate), rate, 16000)  # the band the MP3 can carry
    codec_delay = 0 if tagged else round(1105 * 16000 / rate)
    assert abs(af.lag_behind(source, audio.decode(data)) - codec_delay) <= 3
    transcoded = audio.decode(transcode.transcode_to_tempfile(io.BytesIO(data), "MP3"))
    assert abs(af.lag_behind(source, transcoded) - codec_delay) <= 3


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
        (b"\x00\x00\x00\x18ftypmp42" + bytes(100), "cannot read the MP4/M4A file: Invalid data"),
        (b"MThd\x00\x00\x00\x06" + bytes(100), "MIDI .* not supported; send WAV, FLAC"),
        (b"#!AMR\n" + bytes(100), "AMR"),  # a real AMR header over nothing: the transcoder's clear error
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "cannot decode"),
    ],
)
def test_non_audio_is_a_clear_error(data, message):
    with pytest.raises(AudioDecodeError, match=message):
        audio.decode(data)


def test_corrupt_audio_is_a_clear_error(speech):
    with pytest.raises(AudioDecodeError):
        audio.decode(af.corrupt(af.encode(speech, 16000, "FLAC")))


def test_truncated_flac_is_caught_by_the_full_check(speech):
    """A FLAC cut in half still announces all its frames, so the header-only probe accepts it; decoding loses
    sync mid-frame. check_decodes, which the async API runs on inline bodies, refuses it with the reason.
    (libsndfile sizes a cut PCM WAV from the bytes present: that is a shorter WAV, not a broken one.)"""
    data = af.truncate(af.encode(speech, 16000, "FLAC"), 0.5)
    assert probe_audio(data).duration == pytest.approx(len(speech) / 16000)
    with pytest.raises(AudioDecodeError, match="truncated"):
        audio.check_decodes(data)
    with pytest.raises(AudioDecodeError, match="corrupt or truncated"):
        audio.decode(data)


def test_the_full_check_accepts_whole_audio(speech):
    info = audio.check_decodes(af.encode(speech, 16000, "FLAC"))
    assert (info.format, info.sample_rate, info.frames) == ("FLAC", 16000, len(speech))


def _wav_with(rate: int | None = None, channels: int | None = None, seconds: float = 0.5) -> bytes:
    """A real PCM WAV whose fmt chunk is then edited to claim another rate or channel count."""
    import struct

    data = bytearray(af.encode(np.zeros(int(16000 * seconds), np.float32), 16000, "WAV"))
    if rate is not None:
        struct.pack_into("<I", data, 24, rate)
    if channels is not None:
        struct.pack_into("<H", data, 22, channels)
    return bytes(data)


@pytest.mark.parametrize("rate", [2_147_483_647, 10_000_000, 1000, 1])
def test_absurd_sample_rates_are_refused_before_any_allocation(rate):
    for read in (audio.probe_audio, audio.decode, audio.check_decodes):
        with pytest.raises(AudioDecodeError, match=f"sample rate of {rate} Hz"):
            read(_wav_with(rate=rate))


@pytest.mark.parametrize("channels", [33, 1000])
def test_absurd_channel_counts_are_refused(channels):
    with pytest.raises(AudioDecodeError, match="channels"):
        audio.probe_audio(_wav_with(channels=channels))


def test_a_header_claiming_more_than_a_day_is_refused():
    """libsndfile sizes PCM WAVs from the bytes present; compressed formats report what their header says."""
    with pytest.raises(AudioDecodeError, match="25 hours"):
        audio.check_header("FLAC", 16000, 1, 16000 * 25 * 3600)
    audio.check_header("FLAC", 16000, 1, 16000 * 23 * 3600)


@pytest.mark.parametrize("rate", [44101, 47999, 8001])
def test_odd_sample_rates_resample_quickly_and_keep_their_length(rate):
    """gcd(44101, 16000) = 1: an exact polyphase filter would have 880,000 taps. The bounded ratio keeps the
    cost of an ordinary rate and the length within 0.005 %."""
    import time

    data = _wav_with(rate=rate, seconds=4.0)  # 64,000 frames, now claimed at `rate`
    started = time.process_time()
    decoded = audio.decode(data)
    assert time.process_time() - started < 5.0  # minutes with the exact ratio
    assert len(decoded) == pytest.approx(64000 * 16000 / rate, rel=5e-5, abs=2)


def test_a_header_claiming_a_billion_samples_is_not_trusted():
    decoded = audio.decode(af.wav_header_claiming(10**9, actual_samples=1600))
    assert len(decoded) == 1600


def test_nan_and_inf_samples_become_silence():
    decoded = audio.decode(af.nan_float_wav(1.0, nan_fraction=0.3, inf=True))
    assert np.isfinite(decoded).all()


def test_missing_file_is_a_decode_error(tmp_path):
    with pytest.raises(AudioDecodeError, match="no such audio file"):
        audio.decode(tmp_path / "nope.wav")


def _loud_level(x: np.ndarray) -> float:
    """The 99th percentile of 25 ms frame levels (dBFS), computed directly."""
    frames = np.asarray(x[: len(x) // 400 * 400], np.float64).reshape(-1, 400)
    return float(np.percentile(10 * np.log10(np.maximum((frames**2).mean(axis=1), 1e-20)), 99))


def test_a_quiet_recording_is_raised_to_the_working_level(speech):
    quiet = speech * np.float32(10 ** (-45 / 20))
    decoded = audio.decode(af.encode(quiet, 16000, "WAV", "FLOAT"))
    assert _loud_level(speech) > audio.WORKING_LEVEL_DB + 5  # the demo itself sits above it ...
    assert _loud_level(decoded) == pytest.approx(audio.WORKING_LEVEL_DB, abs=0.3)  # ... 45 dB quieter, below
    gain = decoded / np.where(quiet == 0, np.nan, quiet)
    assert np.nanstd(gain) < 1e-4 * np.nanmean(gain)  # one gain for the whole recording, nothing else changed


def test_a_recording_at_a_normal_level_is_left_exactly_as_it_is(speech):
    pcm16 = np.round(speech * 32768) / 32768  # what a 16-bit FLAC stores (libsndfile reads it back / 32768)
    assert np.array_equal(audio.decode(af.encode(pcm16, 16000, "FLAC")), pcm16.astype(np.float32))
    samples = np.asarray(pcm16, np.float32)
    assert audio.at_working_level(samples) is samples  # no copy, no gain


def test_digital_silence_stays_silence_and_the_gain_is_capped():
    assert not audio.decode(af.encode(np.zeros(16000, np.float32), 16000, "WAV", "FLOAT")).any()
    faint = af.noise(2.0, amplitude=10 ** (-110 / 20), seed=3)  # far below any recording's noise floor
    raised = audio.at_working_level(faint)
    assert np.std(raised) / np.std(faint) == pytest.approx(10 ** (audio.MAX_GAIN_DB / 20), rel=1e-3)


def test_a_long_quiet_recording_is_raised_on_disk(monkeypatch, speech):
    data = af.encode(speech * np.float32(10 ** (-40 / 20)), 16000, "WAV", "FLOAT")
    in_memory = audio.decode(data)
    monkeypatch.setattr(audio, "SPILL_SECONDS", 1)
    spilled = audio.decode(data)
    assert isinstance(spilled, np.memmap) and not spilled.flags.writeable
    assert np.array_equal(np.asarray(spilled), in_memory)
    assert _loud_level(spilled) == pytest.approx(audio.WORKING_LEVEL_DB, abs=0.3)


def test_a_dc_offset_does_not_pass_for_loudness(speech):
    """Cheap recorders add a constant offset; both models remove it, so it must not keep a quiet voice quiet."""
    quiet = speech * np.float32(10 ** (-45 / 20))
    decoded = audio.decode(af.encode(quiet + np.float32(0.05), 16000, "WAV", "FLOAT"))
    assert _loud_level(decoded - decoded.mean()) == pytest.approx(audio.WORKING_LEVEL_DB, abs=0.5)


def test_a_polarity_inverted_stereo_pair_is_not_mixed_into_silence(speech):
    """A mis-wired balanced cable or a "wide stereo" effect leaves one channel the other's negative: their mean
    is digital silence, in which nobody would be found. Both decoders (libsndfile's formats here, FFmpeg's in
    the transcoder) then take the louder channel; channels that merely differ are still averaged."""
    import io

    from diarizer import transcode

    inverted = np.stack([speech, -speech], axis=1)
    for decoded in (audio.decode(af.encode(inverted, format="WAV", subtype="FLOAT")),
                    audio.decode(transcode.transcode_to_tempfile(io.BytesIO(af.encode(inverted, format="FLAC")), "FLAC"))):
        assert np.corrcoef(decoded, speech)[0, 1] > 0.999
        assert abs(20 * np.log10(np.std(decoded) / np.std(speech))) < 0.1
    assert np.allclose(audio.downmix(np.stack([speech, 0.8 * speech], axis=1)), 0.9 * speech)
    one_live = np.zeros((len(speech), 8), np.float32)
    one_live[:, 3] = speech
    assert np.allclose(audio.downmix(one_live), speech / 8)  # quieter, not cancelled: the working level raises it
