"""M4A, MP4 (with video), WebM/Opus, Ogg/Opus, ADTS AAC behind an ID3 tag, camera files (AVCHD .mts, .mpg, .avi)
and the phone, dictaphone and call-recorder formats decode to the same 16 kHz mono signal as their FLAC source
(the same speakers: tests/acceptance/test_local_uploads_and_formats.py, tests/flow/test_transcode_flow.py);
broken or unknown files get a clear error naming the supported formats."""
from __future__ import annotations

import io
from pathlib import Path

import audio_factory as af
import numpy as np
import pytest
from media_factory import KINDS, SPEECH_KINDS, make_media

from diarizer import transcode
from diarizer.audio import SUPPORTED_FORMATS, decode, detect_format, probe_audio
from diarizer.types import AudioDecodeError, EmptyAudioError

REPO_ROOT = Path(__file__).resolve().parents[3]
THREE_SPEAKERS = REPO_ROOT / "demo" / "three-speakers.flac"
EXPECTED_FORMAT = {"m4a": "MP4/M4A", "mp4": "MP4/M4A", "webm": "WebM/Matroska", "ogg-opus": "OGG",  # Opus: libsndfile
                   "aac": "AAC", "mts": "MPEG-TS", "mpg": "MPEG-PS", "avi": "AVI"}


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("media")
    return {kind: make_media(THREE_SPEAKERS, kind, out) for kind in KINDS}


def aligned_correlation(source: np.ndarray, decoded: np.ndarray, most: int = 1600) -> float:
    """Correlation of the two signals once `decoded` is moved by the codec's delay (up to `most` samples either
    way, found to the sample: AAC's 1024 priming samples at 44.1 kHz are 371.5 at 16 kHz)."""
    lag = af.lag_behind(source, decoded, most)
    n = min(len(source), len(decoded)) - 2 * most
    return float(np.corrcoef(source[most : most + n], decoded[most + lag : most + lag + n])[0, 1])


@pytest.mark.parametrize("kind", list(KINDS))
def test_containers_probe_and_decode_like_the_source(media, kind):
    info = probe_audio(media[kind])
    assert info.format == EXPECTED_FORMAT[kind]
    assert info.channels == 2 and info.sample_rate in (44100, 48000)
    # a claim: bare ADTS has none (FFmpeg guesses from the bitrate), an AVI's is its video track's (whole seconds here)
    assert abs(info.duration - 31.64) < {"aac": 0.3, "avi": 0.4}.get(kind, 0.1)
    source, decoded = decode(THREE_SPEAKERS), decode(media[kind])
    assert abs(len(decoded) - len(source)) < 0.05 * 16000  # codec priming/padding only
    assert aligned_correlation(source, decoded) > 0.9  # lossy, but the same signal


@pytest.mark.parametrize("kind", list(KINDS))
def test_bytes_and_streams_work_as_well_as_paths(media, kind):
    data = media[kind].read_bytes()
    assert probe_audio(data).format == EXPECTED_FORMAT[kind]
    assert abs(len(decode(io.BytesIO(data))) / 16000 - 31.64) < 0.1


@pytest.mark.parametrize("kind, fmt, rate, channels, least_alike", [
    ("amr", "AMR", 8000, 1, 0.8),  # AMR-NB: 8 kHz speech codec, the top half of the band is gone
    ("wma", "WMA/ASF", 44100, 2, 0.85),
    ("caf", "CAF", 44100, 2, 0.99),  # ALAC: lossless
    ("wav-g723", "WAV (G.723.1)", 8000, 1, 0.8),  # a call recorder's 6.3 kbit/s speech codec
    ("wav-g722", "WAV (G.722)", 16000, 1, 0.9),
])
def test_phone_and_dictaphone_formats_decode_like_the_source(tmp_path, kind, fmt, rate, channels, least_alike):
    path = make_media(THREE_SPEAKERS, kind, tmp_path)
    info = probe_audio(path)
    assert (info.format, info.sample_rate, info.channels) == (fmt, rate, channels)
    assert not info.length_known  # a container's claim: the limits apply to what decodes
    source, decoded = decode(THREE_SPEAKERS), decode(path.read_bytes())
    assert abs(len(decoded) - len(source)) < 0.05 * 16000
    assert aligned_correlation(source, decoded) > least_alike
    assert set(SPEECH_KINDS) == {"amr", "wma", "caf", "wav-g723", "wav-g722"}
    if kind == "amr":  # written as phones write it: comfort-noise frames in the pauses
        assert amr_frame_types(path.read_bytes())[AMR_NB_SID] > 10


AMR_NB_SID, AMR_WB_SID, AMR_NO_DATA = 8, 9, 15
AMR_NB_FRAME_BYTES = {0: 12, 1: 13, 2: 15, 3: 17, 4: 19, 5: 20, 6: 26, 7: 31, 8: 5, 15: 0}


def amr_frame_types(data: bytes) -> dict[int, int]:
    """How many frames of each type an AMR-NB storage file holds (RFC 4867 §5.3: a header byte, then the frame)."""
    counts: dict[int, int] = {}
    at = len(b"#!AMR\n")
    while at < len(data):
        frame_type = (data[at] >> 3) & 0x0F
        counts[frame_type] = counts.get(frame_type, 0) + 1
        at += 1 + AMR_NB_FRAME_BYTES[frame_type]
    return counts


def test_amr_wb_pauses_decode_as_comfort_noise():
    """Wide-band AMR with discontinuous transmission: one SID frame then seven no-data frames, as a phone sends
    them through a pause; 20 ms each, so 8 s of (comfort-noise) audio, not an error."""
    sid = bytes([AMR_WB_SID << 3 | 0x04]) + bytes([0x5A, 0x13, 0x77, 0x01, 0x80])  # 40 bits of SID parameters
    pause = sid + bytes([AMR_NO_DATA << 3 | 0x04]) * 7
    data = b"#!AMR-WB\n" + pause * 50
    info = probe_audio(data)
    assert (info.format, info.sample_rate) == ("AMR", 16000)
    assert len(decode(data)) == 8 * 16000


def test_files_holding_no_audio_are_empty_not_corrupt(tmp_path):
    import av

    path = tmp_path / "empty.caf"
    with av.open(str(path), "w", format="caf") as container:
        container.add_stream("pcm_s16le", rate=44100, layout="mono")
        container.start_encoding()
    for data in (b"#!AMR\n", b"#!AMR-WB\n", path.read_bytes(), b""):
        with pytest.raises(EmptyAudioError):
            decode(data)


def test_only_the_real_magic_is_taken_for_amr_or_caf():
    """Text that starts like a magic ("caff", "#!AMR") is not sent to the transcoder as audio."""
    for text in (b"caffeine and more text", b"#!AMRish script\n", b"caff\x00\x02\x00\x00 version 2"):
        with pytest.raises(AudioDecodeError, match="not a recognised audio file"):
            detect_format(text)
    assert detect_format(b"caff\x00\x01\x00\x00desc") == "CAF"
    assert detect_format(b"#!AMR-WB\n\x04") == detect_format(b"#!AMR\n\x3c") == "AMR"


def test_an_id3_tag_names_the_audio_behind_it(media):
    """Taggers put ID3v2 before AAC and FLAC too: the format is the audio's, not the tag's (an ADTS stream
    behind one was refused as an MP3 libsndfile could not read)."""
    from media_factory import ID3_TAG

    adts = media["aac"].read_bytes()[len(ID3_TAG):]
    assert probe_audio(adts).format == probe_audio(ID3_TAG + adts).format == "AAC"
    flac = THREE_SPEAKERS.read_bytes()
    assert probe_audio(ID3_TAG + flac).format == "FLAC"
    assert np.array_equal(decode(ID3_TAG + flac), decode(flac))
    with pytest.raises(AudioDecodeError, match="MP3"):  # a tag before nothing known: libsndfile's own refusal
        decode(ID3_TAG + b"hello world" * 20)


def test_a_transport_stream_is_known_by_its_packets_not_one_byte(media):
    """0x47 starts every 188-byte packet (192 in AVCHD, after a timestamp); one "G" at the start is text."""
    packet = b"\x47" + bytes(187)
    assert detect_format(packet * 3) == "MPEG-TS"
    assert detect_format((bytes(4) + packet) * 3) == "MPEG-TS"
    assert detect_format(media["mts"].read_bytes()[:512]) == "MPEG-TS"
    with pytest.raises(AudioDecodeError, match="not a recognised audio file"):
        detect_format(b"Good morning, " * 40)


def test_truncated_container_is_a_clear_error(media):
    data = media["m4a"].read_bytes()
    with pytest.raises(AudioDecodeError, match="MP4/M4A"):
        decode(data[: len(data) // 3] if data.find(b"moov") > len(data) // 3 else data[:2000])


def test_header_only_webm_and_garbage_after_magic(media):
    with pytest.raises(AudioDecodeError):
        decode(b"\x1a\x45\xdf\xa3" + b"\x00" * 500)
    with pytest.raises(AudioDecodeError):
        probe_audio(b"\x00\x00\x00\x18ftypmp42" + b"\xff" * 1000)


def test_a_video_without_audio_is_refused(tmp_path):
    import av

    path = tmp_path / "silent-video.mp4"
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=5)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        for index in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            frame.pts = index
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
    with pytest.raises(AudioDecodeError, match="no audio track"):
        probe_audio(path)


def test_length_is_bounded_while_transcoding(media):
    with pytest.raises(AudioDecodeError, match="longer than 10 s"):
        with open(media["webm"], "rb") as source:
            transcode.transcode(source, "WebM/Matroska", io.BytesIO(), max_seconds=10)


def test_without_pyav_the_error_names_the_extra_and_ogg_opus_still_decodes(media, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av":
            raise ImportError("No module named 'av'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    with pytest.raises(transcode.TranscoderUnavailable, match=r"diarizer\[transcode\]"):
        probe_audio(media["m4a"])
    assert abs(len(decode(media["ogg-opus"])) / 16000 - 31.64) < 0.1


def test_unknown_formats_name_the_supported_ones():
    with pytest.raises(AudioDecodeError) as caught:
        detect_format(b"MThd\x00\x00\x00\x06" + b"\x00" * 30)
    assert SUPPORTED_FORMATS in str(caught.value) and "M4A" in SUPPORTED_FORMATS and "WebM" in SUPPORTED_FORMATS
    assert detect_format(b"\x00\x00\x00\x14ftypM4A ") == "MP4/M4A"


def test_a_container_claiming_an_absurd_rate_is_refused_before_decoding(tmp_path):
    """A 64 KB CAF of PCM whose header says 1 Hz: the resampler would turn each frame into thousands of times its
    samples in one call (1-3 GB of memory before the length check ever ran). Refused by the header, on every path."""
    import struct

    import av

    path = tmp_path / "pcm.caf"
    with av.open(str(path), "w", format="caf") as container:
        stream = container.add_stream("pcm_s16be", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 32000), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    data = bytearray(path.read_bytes())
    at = data.index(b"desc") + 12
    data[at:at + 8] = struct.pack(">d", 1.0)  # the description chunk's sample rate
    for attempt in (lambda: decode(bytes(data), max_seconds=10800),
                    lambda: transcode.transcode(io.BytesIO(bytes(data)), "CAF", io.BytesIO(), max_seconds=10800)):
        with pytest.raises(AudioDecodeError, match="sample rate of 1 Hz"):
            attempt()
