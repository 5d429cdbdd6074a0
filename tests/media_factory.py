"""Real M4A, MP4 (with a video track), WebM/Opus and Ogg/Opus files made from a WAV/FLAC with PyAV's encoders
(FFmpeg's own aac, libopus and mpeg4), the way phones, Zoom/Teams and browsers write them; and the speech formats of
call recorders and dictaphones (AMR-NB at 8 kHz mono with DTX, WMA, CAF with ALAC, WAVs holding G.723.1 or G.722) in
`SPEECH_KINDS`."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf

# name -> (container format, file suffix, audio codec, rate, with a video track)
KINDS = {
    "m4a": ("mp4", ".m4a", "aac", 44100, False),
    "mp4": ("mp4", ".mp4", "aac", 48000, True),
    "webm": ("webm", ".webm", "libopus", 48000, False),
    "ogg-opus": ("ogg", ".opus", "libopus", 48000, False),
    "aac": ("adts", ".aac", "aac", 44100, False),  # bare ADTS frames behind an ID3 tag, as HLS segments carry them
    # cameras: AVCHD's transport stream with AC-3 (.mts, 192-byte packets), a DVD-style program stream, an AVI
    "mts": ("mpegts", ".mts", "ac3", 48000, True),
    "mpg": ("mpeg", ".mpg", "mp2", 48000, True),
    "avi": ("avi", ".avi", "libmp3lame", 44100, True),
}
CONTAINER_OPTIONS = {"mts": {"mpegts_m2ts_mode": "1"}}
VIDEO = {"mts": ("mpeg2video", 25), "mpg": ("mpeg2video", 25)}  # (codec, frames per second); else MPEG-4 at 5
# name -> (container format, file suffix, audio codec, rate, layout): what phones and dictaphones write
SPEECH_KINDS = {
    "amr": ("amr", ".amr", "libopencore_amrnb", 8000, "mono"),
    "wma": ("asf", ".wma", "wmav2", 44100, "stereo"),
    "caf": ("caf", ".caf", "alac", 44100, "stereo"),
    # call-centre recorders' WAVs: G.723.1 (6.3 kbit/s) and wideband G.722, codecs libsndfile does not read
    "wav-g723": ("wav", ".wav", "g723_1", 8000, "mono"),
    "wav-g722": ("wav", ".wav", "g722", 16000, "mono"),
}
# Phones' call recorders stop sending speech frames in pauses (discontinuous transmission): comfort-noise (SID)
# and no-data frames, which FFmpeg's own AMR decoder refuses ("Not yet implemented in FFmpeg").
CODEC_OPTIONS = {"amr": {"dtx": "1"}}
BIT_RATES = {"wav-g723": 6300}  # G.723.1 has two rates; the others take 64 kbit/s or their nearest mode


def make_media(source: Path, kind: str, out_dir: Path) -> Path:
    """Encode `source` (mono or stereo, any rate) into the `kind` container; returns the new file's path."""
    import av

    if kind in SPEECH_KINDS:
        container_format, suffix, codec, rate, layout = SPEECH_KINDS[kind]
        with_video = False
    else:
        container_format, suffix, codec, rate, with_video = KINDS[kind]
        layout = "stereo"
    samples, source_rate = sf.read(source, dtype="float32", always_2d=True)
    samples = samples.mean(axis=1)
    # stereo, as most recorders write it (the decoder must downmix); AMR is mono only
    planes = np.stack([samples, samples]) if layout == "stereo" else samples[None, :]
    out_path = out_dir / f"{source.stem}-{kind}{suffix}"
    with av.open(str(out_path), "w", format=container_format, options=CONTAINER_OPTIONS.get(kind, {})) as container:
        audio = container.add_stream(codec, rate=rate, layout=layout, options=CODEC_OPTIONS.get(kind, {}))
        video = None
        video_codec, fps = VIDEO.get(kind, ("mpeg4", 5))
        if with_video:
            video = container.add_stream(video_codec, rate=fps)
            video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        if kind in SPEECH_KINDS:
            audio.bit_rate = BIT_RATES.get(kind, 64000)  # wmav2 will not open without one; AMR-NB takes its nearest mode
        # speech codecs take fixed-size frames (AMR: 160 samples)
        frame_size = (audio.codec_context.frame_size or None) if kind in SPEECH_KINDS else None
        resampler = av.AudioResampler(format=audio.codec_context.format.name, layout=layout, rate=rate,
                                      frame_size=frame_size)
        block = source_rate  # one second at a time
        for start in range(0, planes.shape[1], block):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planes[:, start:start + block]), format="fltp",
                                               layout=layout)
            frame.sample_rate = source_rate
            frame.pts, frame.time_base = start, Fraction(1, source_rate)
            for chunk in resampler.resample(frame):
                for packet in audio.encode(chunk):
                    container.mux(packet)
        for chunk in resampler.resample(None):
            for packet in audio.encode(chunk):
                container.mux(packet)
        for packet in audio.encode(None):
            container.mux(packet)
        if video is not None:
            seconds = int(np.ceil(len(samples) / source_rate))
            for index in range(seconds * fps):
                picture = av.VideoFrame.from_ndarray(np.full((48, 64, 3), index % 255, np.uint8), format="rgb24")
                picture.pts = index
                for packet in video.encode(picture):
                    container.mux(packet)
            for packet in video.encode(None):
                container.mux(packet)
    if kind == "aac":
        out_path.write_bytes(ID3_TAG + out_path.read_bytes())
    return out_path


# An ID3v2.4 tag holding one text frame (TIT2 "call"), padded to 128 bytes as taggers leave room to grow.
_TIT2 = b"TIT2" + (6).to_bytes(4, "big") + b"\x00\x00" + b"\x03call\x00"
ID3_TAG = b"ID3\x04\x00\x00" + bytes([0, 0, 1, 0]) + (_TIT2 + b"\x00" * 128)[:128]


def webm_claiming(source: Path, out_dir: Path, claimed_ms: float) -> bytes:
    """A WebM of `source` whose Segment Info Duration element is rewritten to claim `claimed_ms` (anyone can
    write any length into a container's metadata)."""
    import struct

    data = bytearray(make_media(source, "webm", out_dir).read_bytes())
    at = data.find(b"\x44\x89")  # the Duration element, in TimecodeScale units (1 ms by default)
    size = data[at + 2] & 0x0F
    data[at + 3 : at + 3 + size] = struct.pack(">f" if size == 4 else ">d", claimed_ms)
    return bytes(data)


def frame_agreement(result: dict, reference: dict) -> float:
    """Share of the reference's speech (10 ms frames, per speaker) that `result` gives to the same voice, speakers
    paired one-to-one by overlap: how alike two diarizations are whatever their labels' order. A narrow-band
    recording (AMR at 8 kHz) moves a voice's first appearance and a few edges, not its turns."""
    from scipy.optimize import linear_sum_assignment

    def grid(answer: dict) -> np.ndarray:
        ids = sorted({s["speaker_id"] for s in answer["segments"]})
        end = max((s["end"] for s in answer["segments"]), default=0.0)
        frames = np.zeros((max(len(ids), 1), int(end * 100) + 1), bool)
        for s in answer["segments"]:
            frames[ids.index(s["speaker_id"]), int(s["start"] * 100):int(s["end"] * 100)] = True
        return frames

    a, b = grid(reference), grid(result)
    n = max(a.shape[1], b.shape[1])
    a, b = np.pad(a, ((0, 0), (0, n - a.shape[1]))), np.pad(b, ((0, 0), (0, n - b.shape[1])))
    overlap = a.astype(int) @ b.T.astype(int)
    rows, cols = linear_sum_assignment(-overlap)
    return float(overlap[rows, cols].sum() / max(a.sum(), 1))
