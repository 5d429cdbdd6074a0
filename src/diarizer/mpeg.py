"""The length of an MP3 from its frame headers, without decoding.

libsndfile (through mpg123) sizes an MP3 that has no Xing/Info header from the first frame's bitrate and
the file size, then stops reading at that estimate: a variable-bitrate file loses the rest silently, and a
large ID3 tag (cover art) inflates the estimate. Walking the frame headers gives the real count: each MPEG
audio frame says its own length and holds a fixed number of samples. Only layer III is walked (what
`audio.detect_format` accepts); anything else gives None, and libsndfile's figure stands.
"""
from __future__ import annotations

from typing import BinaryIO

# Layer III bitrates in kbit/s by index, for MPEG-1 and for MPEG-2/2.5 (index 0 is "free format").
_BITRATES = {
    1: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}  # by version bits
CHUNK_BYTES = 1 << 20  # read this much at a time: an hour of 128 kbit/s MP3 is 58 MB, never held whole


def _frame(header: bytes) -> tuple[int, int, int] | None:
    """(bytes, samples, sample rate) of the layer III frame starting with these 4 bytes, or None."""
    if header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version, layer = (header[1] >> 3) & 3, (header[1] >> 1) & 3
    bitrate_index, rate_index, padding = header[2] >> 4, (header[2] >> 2) & 3, (header[2] >> 1) & 1
    if version == 1 or layer != 1 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    mpeg1 = version == 3
    bitrate = _BITRATES[1 if mpeg1 else 2][bitrate_index] * 1000
    rate = _RATES[version][rate_index]
    size = (144 if mpeg1 else 72) * bitrate // rate + padding
    return size, 1152 if mpeg1 else 576, rate


def _id3v2_size(head: bytes) -> int:
    if len(head) < 10 or head[:3] != b"ID3":
        return 0
    body = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
    return 10 + body + (10 if head[5] & 0x10 else 0)  # footer flag


def count_frames(stream: BinaryIO) -> int | None:
    """Samples per channel in the layer III frames of `stream` (read from the start; the position is put
    back at 0), or None when the first frame is not one. Stops at the first byte that is not a frame
    header (an ID3v1/APE tag, garbage, a cut frame)."""
    stream.seek(0)
    stream.seek(_id3v2_size(stream.read(10)))
    data, pos = b"", 0

    def available(count: int) -> bool:  # at least `count` bytes from pos, reading on as needed
        nonlocal data, pos
        while len(data) - pos < count:
            more = stream.read(max(CHUNK_BYTES, count))
            if not more:
                return False
            data, pos = data[pos:] + more, 0
        return True

    samples, rate = 0, None
    while available(4):
        frame = _frame(data[pos : pos + 4])
        if frame is None or (rate is not None and frame[2] != rate) or not available(frame[0]):
            break
        size, count, rate = frame
        samples += count
        pos += size
    stream.seek(0)
    return samples if rate is not None else None
