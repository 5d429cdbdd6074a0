"""A header's length is a claim: limits hold for what decodes, and nothing is silently cut short.

Real audio (the demo recording) in files whose headers under-state, over-state or omit their length: a
variable-bitrate MP3 without a Xing/Info header (libsndfile sizes it from the first bitrate and stops
there), an MP3 behind a large ID3 tag, a FLAC written with no length (as FFmpeg writes to a pipe), and a
WebM whose Duration says 5 s. PyAV (the transcode extra) is installed for these tests; `no_transcoder`
shows what a deployment without it answers.
"""
from __future__ import annotations

import audio_factory as af
import numpy as np
import pytest
from media_factory import make_media, webm_claiming

from diarizer import audio, transcode
from diarizer.types import AudioDecodeError, AudioTooLongError


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return af.demo_recording("two-speakers")[0]  # 29.2 s


@pytest.fixture
def no_transcoder(monkeypatch):
    monkeypatch.setattr(transcode, "available", lambda: False)


def seconds(samples: np.ndarray) -> float:
    return len(samples) / audio.SAMPLE_RATE


def test_a_variable_bitrate_mp3_without_length_header_is_decoded_whole(speech):
    data = af.mp3_without_length_header(speech[:32000], np.tile(speech, 2))
    true_seconds = 2 + 2 * seconds(speech)
    assert af.decode(data)[0].shape[0] < 0.2 * true_seconds * audio.SAMPLE_RATE  # what libsndfile alone gives
    assert audio.probe_audio(data).duration == pytest.approx(true_seconds, abs=0.3)
    assert audio.check_decodes(data).duration == pytest.approx(true_seconds, abs=0.3)
    assert seconds(audio.decode(data)) == pytest.approx(true_seconds, abs=0.3)


def test_without_the_transcoder_such_an_mp3_is_refused_not_cut(speech, no_transcoder):
    data = af.mp3_without_length_header(speech[:32000], np.tile(speech, 2))
    with pytest.raises(transcode.TranscoderUnavailable, match="changes bitrate"):
        audio.decode(data)
    assert audio.needs_transcoder(data)


def test_an_mp3_behind_a_large_tag_is_neither_truncated_nor_long(speech, no_transcoder):
    data = af.mp3_behind_large_tag(speech)
    info = audio.check_decodes(data)  # libsndfile's own estimate is twice the length: not "truncated"
    assert info.duration == pytest.approx(seconds(speech), abs=0.3)
    assert audio.probe_audio(data).duration == pytest.approx(seconds(speech), abs=0.3)
    assert not audio.needs_transcoder(data)


def test_a_flac_without_length_is_decoded_and_measured(speech):
    data = af.flac_without_length(speech)
    info = audio.probe_audio(data)
    assert (info.format, info.length_known) == ("FLAC", False)
    assert audio.check_decodes(data).frames == len(speech)
    assert np.abs(audio.decode(data) - speech).max() < 1e-3


def test_without_the_transcoder_a_flac_without_length_is_a_clear_error(speech, no_transcoder):
    with pytest.raises(transcode.TranscoderUnavailable, match="no length in its header"):
        audio.check_decodes(af.flac_without_length(speech))


def test_a_webm_claiming_5_s_cannot_smuggle_two_minutes_past_a_limit(speech, tmp_path):
    af.write(tmp_path / "long.wav", np.tile(speech, 5)[: 120 * audio.SAMPLE_RATE])
    data = webm_claiming(tmp_path / "long.wav", tmp_path, 5000.0)
    info = audio.probe_audio(data)
    assert info.duration == pytest.approx(5.0) and not info.length_known
    with pytest.raises(AudioTooLongError) as caught:
        audio.check_decodes(data, max_seconds=60)
    assert caught.value.limit_seconds == 60
    with pytest.raises(AudioTooLongError):
        audio.decode(data, max_seconds=60)
    assert seconds(audio.decode(data)) == pytest.approx(120, abs=0.1)  # no limit given: all of it


def test_decode_stops_at_the_limit_for_plain_files_too(speech):
    data = af.encode(speech, 16000, "FLAC")
    with pytest.raises(AudioTooLongError, match="longer than 10 s"):
        audio.decode(data, max_seconds=10)
    assert audio.check_decodes(data, max_seconds=30).frames == len(speech)


def test_a_track_whose_codec_ffmpeg_cannot_decode_is_a_clear_error(speech, tmp_path):
    af.write(tmp_path / "speech.wav", speech)
    data = make_media(tmp_path / "speech.wav", "webm", tmp_path).read_bytes()
    assert b"A_OPUS" in data
    broken = data.replace(b"A_OPUS", b"A_ZZZZ")
    for read in (audio.probe_audio, audio.decode):
        with pytest.raises(AudioDecodeError, match="codec that cannot be decoded"):
            read(broken)


def test_the_mp3_frame_walk_does_not_depend_on_how_the_file_is_read(speech, monkeypatch):
    """Read in 1 MB chunks: a frame across two chunks counts once; a cut last frame does not count."""
    import io

    from diarizer import scan

    data = af.mp3_without_length_header(speech[:32000], np.tile(speech, 2))
    whole = scan.mp3_walk(io.BytesIO(data)).samples
    monkeypatch.setattr(scan, "CHUNK_BYTES", 37)  # smaller than any frame
    assert scan.mp3_walk(io.BytesIO(data)).samples == whole
    assert scan.mp3_walk(io.BytesIO(data[:-1])).samples == whole - 576  # the cut last frame: 576 samples (MPEG-2)
    assert scan.mp3_walk(io.BytesIO(b"ID3" + bytes(200))).samples is None


@pytest.mark.parametrize("subtype", ["OPUS", "VORBIS"])
def test_chained_ogg_is_decoded_whole(subtype):
    """`cat a.ogg b.ogg`: libsndfile reads the first stream only (and may say that is all there is)."""
    import io

    import soundfile as sf

    from diarizer import scan

    def ogg(samples):
        out = io.BytesIO()
        sf.write(out, samples, 16000, format="OGG", subtype=subtype)
        return out.getvalue()

    noise = af.noise(2.0, seed=3)
    chained = ogg(noise) + ogg(af.noise(20.0, seed=4))  # Opus: libsndfile then claims 2 s and stops there
    assert scan.ogg_streams(io.BytesIO(chained)) == 2 and scan.ogg_streams(io.BytesIO(ogg(noise))) == 1
    assert audio.needs_transcoder(chained)
    assert seconds(audio.decode(chained)) == pytest.approx(22.0, abs=0.1)
    single = ogg(af.noise(20.0, seed=4))  # one stream: libsndfile's, and the scan must not disturb its reads
    assert not audio.needs_transcoder(single)
    assert audio.check_decodes(single).duration == pytest.approx(20.0, abs=0.1)


def test_the_wav_codec_is_read_from_the_fmt_chunk_wherever_it_sits(speech):
    """JUNK/LIST chunks before fmt (broadcast recorders), extensible WAVs (more than two channels, 24-bit) and
    big-endian RIFX all name their codec; PCM stays with libsndfile, a call recorder's codec goes to FFmpeg."""
    import io
    import struct

    import soundfile as sf

    from diarizer import scan

    def codec(data: bytes) -> int | None:
        return scan.wav_codec(io.BytesIO(data))

    pcm = af.encode(speech[:1600], format="WAV", subtype="PCM_16")
    assert codec(pcm) == 0x0001
    junk = b"JUNK" + struct.pack("<I", 27) + bytes(27) + b"\x00"  # an odd size, padded to even
    assert codec(pcm[:12] + junk + pcm[12:]) == 0x0001
    wide = io.BytesIO()
    sf.write(wide, np.zeros((1600, 3), np.float32), 16000, format="WAVEX", subtype="PCM_24")  # WAVE_FORMAT_EXTENSIBLE
    assert wide.getvalue()[20:22] == b"\xfe\xff" and codec(wide.getvalue()) == 0x0001
    rifx = b"RIFX" + struct.pack(">I", 36) + b"WAVE" + b"fmt " + struct.pack(">IHHIIHH", 16, 0x42, 1, 8000, 800, 24, 0)
    assert codec(rifx) == 0x0042
    assert codec(pcm[:21]) is None and codec(b"RIFF\x00\x00\x00\x00WAVE") is None  # cut inside the tag, or no fmt
    g723 = pcm[:20] + struct.pack("<H", 0x0042) + pcm[22:]
    assert audio.probe_audio(g723).format == "WAV (G.723.1)" and audio.needs_transcoder(g723)
    assert audio.probe_audio(pcm).format == "WAV" and not audio.needs_transcoder(pcm)
