"""What libsndfile cannot be trusted to tell about a stream, read from its own framing without decoding.

- An MP3's length: libsndfile (through mpg123) sizes an MP3 without a Xing/Info header from the first
  frame's bitrate and the file size, then stops reading at that estimate, so a variable-bitrate file loses
  the rest silently and a large ID3 tag (cover art) inflates it. Each MPEG audio frame header says its own
  size and holds a fixed number of samples: walking them gives the real count. Only layer III is walked
  (what `audio.detect_format` accepts); anything else gives None and libsndfile's figure stands.
- Which codec a WAV holds: libsndfile reads PCM, float, G.711, the ADPCMs, GSM 6.10 and MP3 in a WAV, but
  refuses other codecs call recorders write (G.723.1, G.726, G.722), which FFmpeg decodes.
- How many logical streams an Ogg file chains (`cat a.ogg b.ogg`, internet radio recordings): libsndfile
  reads the first only, and may report its length as the whole file's.
- Whether an MP4/MOV's sample tables claim more samples than the file can hold: FFmpeg builds an index entry
  per claimed sample when it opens the file, so 991 bytes claiming 89 million one-byte samples took 1.1 GB.

The walks read in CHUNK_BYTES pieces; every function puts the stream back at 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

CHUNK_BYTES = 1 << 20  # an hour of 128 kbit/s MP3 is 58 MB: never held whole

# Layer III bitrates in kbit/s by index, for MPEG-1 and for MPEG-2/2.5 (index 0 is "free format").
_BITRATES = {
    1: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}  # by version bits


class _Reader:
    """Bytes of a stream from a moving position, read on in chunks as they are asked for."""

    def __init__(self, stream: BinaryIO, start: int):
        stream.seek(start)
        self.stream, self.data, self.pos, self.base = stream, b"", 0, start  # base: the stream offset of data[0]

    def has(self, count: int) -> bool:
        """At least `count` bytes from the current position (reading on as needed)."""
        while len(self.data) - self.pos < count:
            more = self.stream.read(max(CHUNK_BYTES, count))
            if not more:
                return False
            self.data, self.base, self.pos = self.data[self.pos :] + more, self.base + self.pos, 0
        return True

    @property
    def offset(self) -> int:
        """The current position in the stream."""
        return self.base + self.pos

    def peek(self, count: int) -> bytes:
        return self.data[self.pos : self.pos + count]


def _mp3_frame(header: bytes) -> tuple[int, int, int] | None:
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


def id3v2_size(head: bytes) -> int:
    """Bytes of the ID3v2 tag these first 10 bytes begin (header, body and footer), or 0 when there is none."""
    if len(head) < 10 or head[:3] != b"ID3":
        return 0
    body = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
    return 10 + body + (10 if head[5] & 0x10 else 0)  # footer flag


_TAIL_BYTES = 4096  # what may follow the last frame: an ID3v1 tag (128 bytes), a cut frame, an encoder's junk
_RESYNC_BYTES = 1 << 16  # how far past a bad frame the next one is looked for (mpg123 also gives up after a while)


@dataclass(frozen=True)
class Mp3Walk:
    samples: int | None  # per channel, in the layer III frames; None when the first frame is not one
    # False when the frames are not one clean run: the walk had to skip bytes that are not frames (a damaged
    # header, garbage, another recording spliced in), the channel mode changed, or it ended well before the end
    # of the file without a tag there. libsndfile's decoder stops early at such places, silently.
    regular: bool
    rate: int | None = None  # of the first frame, in Hz
    channels: int = 0  # of the first frame: 1 (mono) or 2


def mp3_walk(stream: BinaryIO) -> Mp3Walk:
    """Walk the layer III frames of `stream`. Past bytes that are not a frame, the walk finds the next frame as
    decoders do (`_resync`), so one bad byte cannot make a long file look short; it ends where no frame follows
    (an ID3v1/APE/Lyrics3 tag, a cut frame, the end)."""
    size = stream.seek(0, 2)
    stream.seek(0)
    reader = _Reader(stream, id3v2_size(stream.read(10)))
    samples, rate, mode, regular, first_mode = 0, None, None, True, None
    while reader.has(4):
        header = reader.peek(4)
        frame = _mp3_frame(header)
        if frame is None or (rate is not None and frame[2] != rate) or not reader.has(frame[0]):
            if rate is None or not _resync(reader, rate):
                break
            regular = False
            continue
        if header[3] >> 6 != mode:  # the channel mode (stereo, joint, dual, mono)
            regular = regular and (mode is None or (mode == 3) == (header[3] >> 6 == 3))  # mono <-> not mono
            mode = header[3] >> 6
            first_mode = mode if first_mode is None else first_mode
        size_bytes, count, rate = frame
        samples += count
        reader.pos += size_bytes
    ended = reader.offset
    stream.seek(max(ended, size - _TAIL_BYTES))
    tail = stream.read(_TAIL_BYTES)
    stream.seek(0)
    if rate is None:
        return Mp3Walk(None, True)
    tagged = any(tag in tail for tag in (b"APETAGEX", b"LYRICS200", b"LYRICSBEGIN"))
    channels = 1 if first_mode == 3 else 2
    return Mp3Walk(samples, regular and (size - ended <= _TAIL_BYTES or tagged), rate, channels)


def _resync(reader: _Reader, rate: int) -> bool:
    """Move `reader` to the next frame at `rate` after the current (bad) position: a frame header whose frame is
    followed by another header at the same rate, or by the end of the stream; a chance 0xFF in data seldom is.
    False (position unchanged) when none comes within _RESYNC_BYTES."""
    reader.has(_RESYNC_BYTES)
    window = reader.peek(_RESYNC_BYTES)
    at = window.find(b"\xff", 1)
    while at != -1 and at + 4 <= len(window):
        frame = _mp3_frame(window[at : at + 4])
        if frame is not None and frame[2] == rate:
            following = at + frame[0]  # offsets from the reader's position, which `has` may move in its buffer
            if reader.has(following + 4):
                header = reader.peek(following + 4)[following:]
                confirmed = (_mp3_frame(header) or (0, 0, 0))[2] == rate
            else:
                confirmed = reader.has(following) and not reader.has(following + 1)  # the last frame
            if confirmed:
                reader.pos += at
                return True
        at = window.find(b"\xff", at + 1)
    return False


_WAV_CHUNKS_READ = 64  # the fmt chunk comes first or nearly (after JUNK, bext, LIST): never a walk of the file
_EXTENSIBLE = 0xFFFE


def wav_codec(stream: BinaryIO) -> int | None:
    """The format tag of a RIFF/RIFX/RF64 WAVE stream's fmt chunk (an extensible one's sub-format), or None
    where there is no readable fmt chunk (libsndfile then names the fault)."""
    stream.seek(0)
    head = stream.read(12)
    order = "big" if head[:4] == b"RIFX" else "little"
    position = 12
    for _ in range(_WAV_CHUNKS_READ):
        stream.seek(position)
        chunk = stream.read(8)
        if len(chunk) < 8:
            break
        size = int.from_bytes(chunk[4:], order)
        if chunk[:4] == b"fmt ":
            body = stream.read(min(size, 40))
            if len(body) < 2:
                break
            tag = int.from_bytes(body[:2], order)
            if tag == _EXTENSIBLE and len(body) >= 26:
                tag = int.from_bytes(body[24:26], order)  # the sub-format GUID begins with the tag it stands for
            stream.seek(0)
            return tag
        position += 8 + size + (size & 1)  # chunks are padded to an even size
    stream.seek(0)
    return None


def ogg_streams(stream: BinaryIO) -> int:
    """How many logical streams begin in the Ogg pages of `stream` (pages flagged beginning-of-stream),
    up to the first byte that is not a page."""
    reader, streams = _Reader(stream, 0), 0
    while reader.has(27) and reader.peek(4) == b"OggS":
        header = reader.peek(27)
        streams += bool(header[5] & 0x02)
        segments = header[26]
        if not reader.has(27 + segments):
            break
        size = 27 + segments + sum(reader.peek(27 + segments)[27:])
        if not reader.has(size):
            break
        reader.pos += size
    stream.seek(0)
    return streams


# The boxes FFmpeg's MP4/MOV reader descends into (its mov_read_default): a sample table may sit in any of them.
_MP4_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"udta", b"mvex", b"moof", b"traf",
                   b"mfra", b"tref", b"wave"}
_MP4_DEPTH = 16  # deeper than FFmpeg goes (10)


def mp4_sample_tables_fit(stream: BinaryIO) -> bool:
    """False when an MP4/MOV's sample tables (stsz, stz2, and fragments' trun) claim more samples than the file
    can hold: FFmpeg builds an index entry per claimed sample as it opens the file. Each sample takes at least
    one byte of the file (a constant sample size: that many), so the claims of all tracks and fragments together
    must fit in its size, and a per-sample table in its box. A compressed movie header (cmov), which would hide
    its tables, is refused too. Boxes are walked by their headers (seeking, never reading a box whole); a
    malformed one ends its level's walk and is left for FFmpeg to refuse."""
    size = stream.seek(0, 2)
    claimed = _claimed_samples(stream, 0, size, 0)
    stream.seek(0)
    return claimed is not None and claimed <= size


def _claimed_samples(stream: BinaryIO, start: int, stop: int, depth: int) -> int | None:
    """Bytes the sample tables between `start` and `stop` claim at the least; None where one cannot hold its own
    claim or the header is compressed."""
    total, position = 0, start
    while position + 8 <= stop:
        stream.seek(position)
        head = stream.read(16)
        if len(head) < 8:
            break
        size, kind, header = int.from_bytes(head[:4], "big"), head[4:8], 8
        if size == 1 and len(head) == 16:  # a 64-bit size follows the type
            size, header = int.from_bytes(head[8:16], "big"), 16
        elif size == 0:  # to the end of the enclosing box
            size = stop - position
        if size < header:
            break
        end = min(position + size, stop)  # as FFmpeg does, a box ends with its parent at the latest
        body = end - position - header
        if kind == b"cmov":
            return None
        if kind in _MP4_CONTAINERS and depth < _MP4_DEPTH:
            inner = _claimed_samples(stream, position + header, end, depth + 1)
            if inner is None:
                return None
            total += inner
        elif kind in (b"stsz", b"stz2", b"trun"):
            stream.seek(position + header)
            fields = stream.read(12)
            if kind == b"trun" and len(fields) >= 8:  # version and flags, sample count; then per-sample fields
                flags, count = int.from_bytes(fields[1:4], "big"), int.from_bytes(fields[4:8], "big")
                per_sample = 4 * bin(flags & 0xF00).count("1")
                if per_sample and count * per_sample > body:
                    return None
                total += count
            elif kind != b"trun" and len(fields) == 12:  # version and flags, then stsz: size, count; stz2: 3
                # reserved bytes, field bits, count
                count = int.from_bytes(fields[8:12], "big")
                if kind == b"stsz":
                    constant = int.from_bytes(fields[4:8], "big")
                    if not constant and 4 * count > body - 12:
                        return None
                    total += constant * count if constant else count
                else:
                    if count * fields[7] > 8 * (body - 12):
                        return None
                    total += count
        position = end
    return total
