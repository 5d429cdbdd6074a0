"""Damaged and hostile files that fuzzing the decoders found (thirteenth session): each now decodes whole or gets
the engine's own error, never a bare Python exception (a 500 in the service), a huge allocation, or, worst,
a silently empty or shortened result (a diarization of nothing, reported as a success)."""
from __future__ import annotations

import io
from fractions import Fraction

import audio_factory as af
import numpy as np
import pytest

from diarizer import scan
from diarizer.audio import check_decodes, decode, needs_transcoder, probe_audio
from diarizer.types import AudioDecodeError, EmptyAudioError

RATE = 16000


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    samples, _ = af.demo_recording("two-speakers")
    return samples[: 6 * RATE]


def encoded(samples: np.ndarray, rate: int, container: str, codec: str, options: dict | None = None) -> bytes:
    """`samples` (16 kHz mono) encoded with PyAV at `rate` into `container`."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container, options=options or {}) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=rate)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, np.float32)[None, :], format="flt",
                                           layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, 0, Fraction(1, RATE)
        for chunk in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(chunk):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def seconds(samples: np.ndarray) -> float:
    return len(samples) / RATE


# ---- the transcoder (PyAV) --------------------------------------------------------------------------------------

def test_an_adts_stream_that_changes_rate_midway_decodes_whole(speech):
    # Two AAC recordings cut together (44.1 then 48 kHz): PyAV's resampler refused the second part's frames with
    # a bare ValueError ("Frame does not match AudioResampler setup").
    first, second = speech[: 3 * RATE], speech[3 * RATE :]
    joined = encoded(first, 44100, "adts", "aac") + encoded(second, 48000, "adts", "aac")
    samples = decode(joined)
    assert abs(seconds(samples) - 6.0) < 0.15
    lag = af.lag_behind(first, samples[: 3 * RATE], 1600)
    assert np.corrcoef(first[1600 : 2 * RATE], samples[1600 + lag : 2 * RATE + lag])[0, 1] > 0.9
    assert np.sqrt(np.mean(samples[4 * RATE : 5 * RATE] ** 2)) > 0.01  # the second part is there, not silence


def test_pyavs_index_error_on_an_interleaved_chained_ogg_is_a_decode_error(speech):
    # A chained Ogg whose second stream begins (with a new serial) and is followed by a page of the first: PyAV's
    # demuxer raised IndexError.
    data = af.encode(speech[:RATE], RATE, "OGG", "VORBIS")
    pages = ogg_pages(data)
    renamed = bytearray(pages[0])
    renamed[14:18] = (0xDEADBEEF).to_bytes(4, "little")
    damaged = pages[0] + pages[1] + pages[-1] + with_ogg_crc(bytes(renamed)) + pages[-1]
    assert scan.ogg_streams(io.BytesIO(damaged)) == 2  # so it takes the transcoder, as chained files do
    with pytest.raises(AudioDecodeError, match="OGG"):
        decode(damaged)
    with pytest.raises(AudioDecodeError, match="OGG"):
        check_decodes(damaged)


def ogg_pages(data: bytes) -> list[bytes]:
    pages, position = [], 0
    while data[position : position + 4] == b"OggS":
        segments = data[position + 26]
        size = 27 + segments + sum(data[position + 27 : position + 27 + segments])
        pages.append(data[position : position + size])
        position += size
    return pages


def with_ogg_crc(page: bytes) -> bytes:
    """The page with its CRC (polynomial 0x04C11DB7, not reflected, over the page with the field zeroed)."""
    page = bytearray(page)
    page[22:26] = bytes(4)
    crc = 0
    for byte in page:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
    page[22:26] = crc.to_bytes(4, "little")
    return bytes(page)


def stsz_boxes(data: bytes) -> list[int]:
    """Offsets of the stsz boxes' size fields in an MP4 (found by their type; test files have a few)."""
    found, at = [], data.find(b"stsz")
    while at != -1:
        found.append(at - 4)
        at = data.find(b"stsz", at + 1)
    return found


def test_an_mp4_whose_sample_table_claims_millions_of_samples_is_refused_before_ffmpeg_indexes_them(speech):
    # 991 bytes claiming 89 million one-byte samples made FFmpeg build an index of 1.1 GB inside av.open.
    data = bytearray(encoded(speech[:RATE], 44100, "mp4", "aac"))
    (box,) = stsz_boxes(bytes(data))
    data[box + 12 : box + 20] = (1).to_bytes(4, "big") + (0x05555554).to_bytes(4, "big")  # constant size, count
    for read in (probe_audio, check_decodes, decode):
        with pytest.raises(AudioDecodeError, match="sample table"):
            read(bytes(data))


@pytest.mark.parametrize("container, codec, options", [
    ("mp4", "aac", None), ("mov", "aac", None), ("mov", "pcm_s16le", None), ("ipod", "aac", None),
    ("mp4", "aac", {"movflags": "frag_keyframe+empty_moov"}),  # fragmented: the moov's tables are empty
])
def test_real_mp4_and_mov_files_fit_their_sample_tables(speech, container, codec, options):
    data = encoded(speech[: 2 * RATE], 44100, container, codec, options)
    assert scan.mp4_sample_tables_fit(io.BytesIO(data))
    assert abs(seconds(decode(data)) - 2.0) < 0.1


# ---- MP3: what libsndfile believes and the frame walk -----------------------------------------------------------

def mp3_with_info_frame(samples: np.ndarray) -> bytearray:
    data = bytearray(af.mp3(samples, writer="ffmpeg"))  # FFmpeg writes an Info frame with the frame count
    assert b"Info" in data[:400] or b"Xing" in data[:400]
    return data


@pytest.mark.parametrize("claimed_frames", [1, 2, 10])
def test_an_mp3_whose_info_frame_understates_its_frames_decodes_whole(speech, claimed_frames):
    # libsndfile believed the count: with 2 it decoded nothing (0 samples, no error: an empty diarization), with
    # 10 a quarter of a second of six. With 1 it refused to open the file ("File does not exist"): the transcoder
    # now reads it by its frames.
    data = mp3_with_info_frame(speech)
    tag = max(data.find(b"Info", 0, 400), data.find(b"Xing", 0, 400))
    assert int.from_bytes(data[tag + 4 : tag + 8], "big") & 1  # the frame-count field is present
    data[tag + 8 : tag + 12] = claimed_frames.to_bytes(4, "big")
    assert needs_transcoder(bytes(data))
    probed = probe_audio(bytes(data))
    assert (probed.sample_rate, probed.channels, probed.length_known) == (RATE, 1, False)
    assert abs(probed.duration - 6.0) < 0.15
    assert abs(seconds(decode(bytes(data))) - 6.0) < 0.15
    assert abs(check_decodes(bytes(data)).duration - 6.0) < 0.15


def test_a_damaged_frame_header_does_not_end_the_mp3_frame_walk(speech):
    # One byte of the second frame's header made the walk stop there: the file looked 36 ms long (the length
    # the sync route's limit and the job record use) while it decodes to six seconds.
    data = bytearray(af.mp3(speech, writer="libsndfile", level=0.9))  # no Info frame: the walk gives the length
    first = scan._mp3_frame(bytes(data[:4]))[0]
    data[first + 1] = 0xFB  # MPEG-1 in a 16 kHz (MPEG-2) stream
    walked = scan.mp3_walk(io.BytesIO(bytes(data))).samples
    assert abs(walked / RATE - 6.0) < 0.2
    assert abs(probe_audio(bytes(data)).duration - 6.0) < 0.2
    assert abs(seconds(decode(bytes(data))) - 6.0) < 0.25


def test_the_frame_walk_still_ends_at_a_trailing_tag(speech):
    data = af.mp3(speech, writer="libsndfile", level=0.9)
    clean = scan.mp3_walk(io.BytesIO(data)).samples
    id3v1 = b"TAG" + b"\xff\xfb\x90\x00" * 31 + b"\x00"  # 128 bytes, with frame-like bytes inside
    assert scan.mp3_walk(io.BytesIO(data + id3v1)).samples == clean
    assert scan.mp3_walk(io.BytesIO(data + bytes(5000))).samples == clean


# ---- libsndfile's formats: a body that does not hold what the header says ---------------------------------------

def test_a_flac_whose_audio_a_metadata_block_swallows_is_an_error_not_silence(speech):
    data = bytearray(af.encode(speech[:RATE], RATE, "FLAC"))
    assert data[:4] == b"fLaC" and not data[4] & 0x80  # STREAMINFO, then more blocks
    second = 4 + 4 + int.from_bytes(data[5:8], "big")
    # the last metadata block's header damaged: "not the last", a length that runs over the audio frames
    data[second : second + 4] = bytes([0x00]) + (2 * len(data)).to_bytes(3, "big")
    for read in (check_decodes, decode):
        with pytest.raises(AudioDecodeError, match="truncated"):
            read(bytes(data))


@pytest.mark.parametrize("fmt", ["WAV", "AIFF", "AU", "FLAC"])
def test_a_file_with_a_valid_header_and_no_frames_is_empty_audio(fmt):
    data = af.encode(np.zeros(0, np.float32), RATE, fmt, "PCM_16")
    for read in (check_decodes, decode):
        with pytest.raises(EmptyAudioError):
            read(data)


def test_a_short_file_still_decodes(speech):
    # the empty check must not catch a file of a few samples
    assert len(decode(af.encode(speech[:40], RATE, "WAV", "PCM_16"))) == 40


# ---- found by the second round, after the fixes above -------------------------------------------------------------

def box(kind: bytes, *children: bytes) -> bytes:
    payload = b"".join(children)
    return (8 + len(payload)).to_bytes(4, "big") + kind + payload


def huge_stsz() -> bytes:
    return box(b"stsz", bytes(4), (1).to_bytes(4, "big"), (0x05555554).to_bytes(4, "big"))


FTYP = box(b"ftyp", b"M4A ", bytes(4), b"M4A mp42isom")


@pytest.mark.parametrize("layout", ["udta", "nested", "cmov", "trun", "many_tracks"])
def test_sample_tables_hidden_where_ffmpeg_still_reads_them_are_refused(layout):
    # Each took FFmpeg 0.5-2.4 GB past the first version of the check, which walked moov/trak/.../stbl only.
    if layout == "udta":  # a table in the track's user data
        moov = box(b"moov", box(b"trak", box(b"udta", huge_stsz())))
    elif layout == "nested":  # sample-table boxes inside sample-table boxes, deeper than the walk went
        inner = huge_stsz()
        for _ in range(8):
            inner = box(b"stbl", inner)
        moov = box(b"moov", box(b"trak", box(b"mdia", box(b"minf", inner))))
    elif layout == "cmov":  # a compressed movie header, which hides its tables from any walk
        moov = box(b"moov", box(b"cmov", box(b"dcom", b"zlib"), box(b"cmvd", bytes(40))))
    elif layout == "trun":  # a fragment claiming 67 million samples with no per-sample fields
        moov = box(b"moov") + box(b"moof", box(b"traf", box(b"trun", (1).to_bytes(4, "big"),
                                                               (0x4000000).to_bytes(4, "big"), bytes(4))))
    else:  # 300 tracks, each claiming half the file: every table fits alone, together 150 times over
        track = box(b"trak", box(b"mdia", box(b"minf", box(b"stbl", box(
            b"stsz", bytes(4), (1).to_bytes(4, "big"), (8000).to_bytes(4, "big"))))))
        moov = box(b"moov", *[track] * 300)
    data = FTYP + moov + box(b"mdat", bytes(200))
    assert not scan.mp4_sample_tables_fit(io.BytesIO(data))
    with pytest.raises(AudioDecodeError, match="sample tables"):
        probe_audio(data)


def without_id3(data: bytes) -> bytes:
    """An MP3's frames (its Info frame included) without the ID3 tag libsndfile writes before them.
    (audio_factory's mp3_frames_only also drops the Info frame, but on a 2 s file it cuts inside the LAME tag.)"""
    return data[scan.id3v2_size(data[:10]):]


@pytest.mark.parametrize("splice", ["channels", "rate"])
def test_an_mp3_spliced_from_recordings_of_another_mode_or_rate_decodes_whole(speech, splice):
    # libsndfile's decoder stopped at the first frame of the other mode or rate: 2 s of 8, silently
    part = speech[: 2 * RATE]
    if splice == "channels":
        other = af.encode(np.stack([part, part], axis=1), RATE, "MP3", "MPEG_LAYER_III")
    else:
        other = af.encode(af.resample(part, RATE, 22050), 22050, "MP3", "MPEG_LAYER_III")
    first = af.encode(part, RATE, "MP3", "MPEG_LAYER_III")
    data = without_id3(first) + without_id3(other) + without_id3(first)
    assert not scan.mp3_walk(io.BytesIO(data)).regular
    assert abs(seconds(decode(data)) - 6.0) < 0.3
    assert abs(check_decodes(data).duration - 6.0) < 0.3
    assert not probe_audio(data).length_known


def test_garbage_between_the_frames_of_a_tagged_mp3_is_not_the_end_of_it(speech):
    # 417 bytes of junk after the first audio frame of an MP3 with an Info frame: libsndfile decoded 1 ms
    data = mp3_with_info_frame(speech)
    info_start = data.find(b"\xff", 0)
    after_info = info_start + scan._mp3_frame(bytes(data[info_start : info_start + 4]))[0]
    after_first = after_info + scan._mp3_frame(bytes(data[after_info : after_info + 4]))[0]
    damaged = bytes(data[:after_first]) + bytes(range(1, 256)) + bytes(162) + bytes(data[after_first:])
    assert not scan.mp3_walk(io.BytesIO(damaged)).regular
    assert abs(seconds(decode(damaged)) - 6.0) < 0.3


def test_a_damaged_first_mp3_frame_is_never_a_silently_short_result(speech):
    data = bytearray(af.mp3(speech, writer="libsndfile", level=0.9))
    data[2] = 0x1C  # the first frame's rate bits: a reserved value, so the file does not begin with a frame
    assert scan.mp3_walk(io.BytesIO(bytes(data))).samples is None
    with pytest.raises(AudioDecodeError, match="MP3"):
        decode(bytes(data))
