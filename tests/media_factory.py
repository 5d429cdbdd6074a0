"""Real M4A, MP4 (with a video track), WebM/Opus and Ogg/Opus files made from a WAV/FLAC with PyAV's encoders
(FFmpeg's own aac, libopus and mpeg4), the way phones, Zoom/Teams and browsers write them."""
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
}


def make_media(source: Path, kind: str, out_dir: Path) -> Path:
    """Encode `source` (mono or stereo, any rate) into the `kind` container; returns the new file's path."""
    import av

    container_format, suffix, codec, rate, with_video = KINDS[kind]
    samples, source_rate = sf.read(source, dtype="float32", always_2d=True)
    samples = samples.mean(axis=1)
    stereo = np.stack([samples, samples])  # stereo, as recorders write it: the decoder must downmix
    out_path = out_dir / f"{source.stem}-{kind}{suffix}"
    with av.open(str(out_path), "w", format=container_format) as container:
        audio = container.add_stream(codec, rate=rate, layout="stereo")
        video = None
        if with_video:
            video = container.add_stream("mpeg4", rate=5)
            video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        resampler = av.AudioResampler(format=audio.codec_context.format.name, layout="stereo", rate=rate)
        block = source_rate  # one second at a time
        for start in range(0, stereo.shape[1], block):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(stereo[:, start:start + block]), format="fltp",
                                               layout="stereo")
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
            for index in range(seconds * 5):
                picture = av.VideoFrame.from_ndarray(np.full((48, 64, 3), index % 255, np.uint8), format="rgb24")
                picture.pts = index
                for packet in video.encode(picture):
                    container.mux(packet)
            for packet in video.encode(None):
                container.mux(packet)
    return out_path


def webm_claiming(source: Path, out_dir: Path, claimed_ms: float) -> bytes:
    """A WebM of `source` whose Segment Info Duration element is rewritten to claim `claimed_ms` (anyone can
    write any length into a container's metadata)."""
    import struct

    data = bytearray(make_media(source, "webm", out_dir).read_bytes())
    at = data.find(b"\x44\x89")  # the Duration element, in TimecodeScale units (1 ms by default)
    size = data[at + 2] & 0x0F
    data[at + 3 : at + 3 + size] = struct.pack(">f" if size == 4 else ">d", claimed_ms)
    return bytes(data)
