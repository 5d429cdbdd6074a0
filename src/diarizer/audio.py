"""Decoding: any WAV/FLAC/OGG/MP3 (any rate, any channel count, 8-bit to float) to 16 kHz mono float32;
M4A/AAC, MP4/MOV and WebM go through `diarizer.transcode` (PyAV, an optional extra) first (Ogg/Opus is
libsndfile's, like Ogg/Vorbis).

The container is detected from the bytes, never from a file name or a client's `encoding` hint.
Decoding runs block by block (downmix + resample per block), so a 3-hour 48 kHz stereo file never
sits in memory at its source rate; past `SPILL_SECONDS` the 16 kHz samples go to a temporary file
that is memory-mapped, so memory stays bounded whatever the length. A recording made far below full
scale is raised to a working level on the way (`at_working_level`).
"""
from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import soundfile as sf

from diarizer import scan
from diarizer.types import AudioDecodeError, AudioTooLongError, EmptyAudioError, InvalidOptionsError

SAMPLE_RATE = 16000
BLOCK_SECONDS = 30  # decode granularity
SPILL_SECONDS = 20 * 60  # longer audio is kept in a memory-mapped temp file

# What a header may claim. Checked before anything is allocated or resampled: a WAV claiming 2,147,483,647 Hz
# or 65,535 channels must be a clear error, not a resampler asking for hundreds of GB.
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 768000
MAX_CHANNELS = 32
MAX_SECONDS = 24 * 3600  # longer than any service limit (3 h by default); decoding stops past it
BLOCK_SAMPLES = BLOCK_SECONDS * 48000 * 2  # samples per read across all channels: 11 MB of float32
# The resampling ratio is kept to a fraction with a denominator this small: an odd rate such as 44,101 Hz
# (gcd 1 with 16 kHz) would otherwise need a polyphase filter of 880,000 taps per block and burn minutes
# of CPU. The approximation moves timestamps by under 0.005 % (0.5 s in 3 hours), and only for such odd rates.
MAX_RATIO_DENOMINATOR = 10000

# A quiet recording is raised so that its loud moments (the 99th percentile of its 25 ms frame levels) reach
# this level. Far below full scale both models drift from what they give on the same recording at a normal
# level: segmentation-3.0's input normalisation has a variance floor, and CAM++'s log-mel features a floor
# at float32 epsilon (tuning part, conversations 20-40 dB quieter than the suite's: about 1 DER point worse;
# 45 dB quieter: 3.7 points and a speaker lost; BENCHMARKS.md "Quiet recordings"). Every other
# recording of the evaluation suite sits above it and is left exactly as it is.
WORKING_LEVEL_DB = -25.0
LEVEL_PERCENTILE = 99.0
MAX_GAIN_DB = 50.0  # digital near-silence is not raised into loud noise
MIN_GAIN_DB = 1.0  # closer than this to the working level: left alone (the same array, no copy)
_LEVEL_FRAME = 400  # 25 ms at 16 kHz
_LEVEL_BINS = np.arange(-200.0, 20.05, 0.1)  # dBFS histogram edges: bounded memory for any length
CANCELLED_DB = -20.0  # a downmix this far under unrelated channels' has cancelled them (see `downmix`)

AudioSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]

# Magic numbers of the containers we decode, and of common ones we do not (for a clear error).
_SUPPORTED_MAGIC = (
    (0, b"RIFF", 8, b"WAVE", "WAV"),
    (0, b"RIFX", 8, b"WAVE", "WAV"),
    (0, b"RF64", 8, b"WAVE", "WAV"),
    (0, b"fLaC", None, None, "FLAC"),
    (0, b"OggS", None, None, "OGG"),
    (0, b"ID3", None, None, "MP3"),
    (0, b"FORM", 8, b"AIFF", "AIFF"),
    (0, b"FORM", 8, b"AIFC", "AIFF"),
    (0, b".snd", None, None, "AU"),
)
# Containers libsndfile cannot read: decoded through diarizer.transcode (PyAV, an optional extra).
_TRANSCODED_MAGIC = (
    (4, b"ftyp", "MP4/M4A"),
    (4, b"moov", "MOV"),
    (4, b"wide", "MOV"),
    (0, b"\x1a\x45\xdf\xa3", "WebM/Matroska"),
    (0, b"\xff\xf1", "AAC"),
    (0, b"\xff\xf9", "AAC"),
    # phones' call and voice recorders: the storage format's magic line, narrow- and wide-band (RFC 4867 §5)
    (0, b"#!AMR\n", "AMR"),
    (0, b"#!AMR-WB\n", "AMR"),
    (0, b"0&\xb2u\x8ef\xcf\x11", "WMA/ASF"),  # Windows voice recorders and dictaphones (the ASF header GUID)
    (0, b"caff\x00\x01\x00\x00", "CAF"),  # Apple Core Audio files: "caff", version 1, flags 0
    # camcorders and older cameras: AVI (a RIFF form like WAVE), MPEG program streams (DVD, .mpg)
    (8, b"AVI ", "AVI"),
    (0, b"\x00\x00\x01\xba", "MPEG-PS"),
)
_TS_PACKET = 188  # MPEG transport stream packets (.ts: broadcast, HLS); AVCHD's .mts/.m2ts put 4 bytes before each
HEAD_BYTES = 256  # how much of the start names the format: two transport-stream packets' sync bytes
TRANSCODED_FORMATS = frozenset(name for _, _, name in _TRANSCODED_MAGIC) | {"MPEG-TS"}  # (the last by its packets)
# WAV codecs (format tags) libsndfile decodes; a WAV holding another goes through the transcoder, named by its codec.
_SNDFILE_WAV_CODECS = frozenset({
    0x0001, 0x0003,  # PCM, IEEE float
    0x0006, 0x0007,  # G.711 A-law, mu-law
    0x0002, 0x0011, 0x0038, 0x0040,  # Microsoft, IMA, NMS VBX and G.721 ADPCM
    0x0031, 0x0055,  # GSM 6.10, MPEG layer III
})
_WAV_CODEC_NAMES = {0x0014: "G.723 ADPCM", 0x0042: "G.723.1", 0x0045: "G.726", 0x0064: "G.726", 0x0083: "G.729",
                    0x0133: "G.729", 0x028F: "G.722", 0x0020: "Yamaha ADPCM", 0x00FF: "AAC", 0x1610: "AAC"}
_UNSUPPORTED_MAGIC = (
    (0, b"MThd", "MIDI (notes, not a recording)"),
)
SUPPORTED_FORMATS = "WAV, FLAC, OGG (Vorbis, Opus), MP3, AIFF, AU, M4A/AAC, MP4/MOV, WebM, AMR, WMA, CAF, AVI, MPEG-TS or MPEG-PS"


# What libsndfile reports as the length of a stream whose header gives none (a FLAC written to a pipe has
# total_samples = 0, chained Ogg): "unknown", not 213 million years.
_UNKNOWN_FRAMES = 2**63 - 1
# Samples an MP3's frames hold beyond the length its Xing/Info header gives: that frame itself, the encoder's
# delay and its end padding (at most 3,328 seen from LAME and FFmpeg at 8-48 kHz); more means the header
# under-states the file.
_MP3_UNCOUNTED_SAMPLES = 6 * 1152


@dataclass(frozen=True)
class AudioInfo:
    format: str  # "WAV", "FLAC", "OGG", "MP3", ...
    sample_rate: int
    channels: int
    frames: int  # as the header says (0 when it says nothing); a lying header is caught when decoding
    duration: float  # seconds, from the header
    # False when the header's length is only a claim nobody checked: none at all (streamed FLAC, chained
    # Ogg) or a container's metadata (M4A, WebM: anyone can write 5 s on three hours). Limits must then
    # be enforced on the decoded length (`check_decodes`, `decode(max_seconds=...)`).
    length_known: bool = True


def detect_format(head: bytes) -> str:
    """Name the container from its first bytes; raise AudioDecodeError for anything else."""
    for offset, magic, offset2, magic2, name in _SUPPORTED_MAGIC:
        if head[offset : offset + len(magic)] == magic and (
            magic2 is None or head[offset2 : offset2 + len(magic2)] == magic2
        ):
            return name
    # Bare MPEG audio frames: an 11-bit frame sync, layer III.
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0 and (head[1] & 0x06) == 0x02:
        return "MP3"
    for offset, magic, name in _TRANSCODED_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    for lead in (0, 4):  # the sync byte (0x47) of two packets in a row: plain, or AVCHD's with a timestamp before each
        size = _TS_PACKET + lead
        if len(head) > lead + size and head[lead] == head[lead + size] == 0x47:
            return "MPEG-TS"
    for offset, magic, name in _UNSUPPORTED_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            raise AudioDecodeError(f"{name} audio is not supported; send {SUPPORTED_FORMATS}")
    if not head:
        raise EmptyAudioError("the audio is empty (0 bytes)")
    raise AudioDecodeError(f"the data is not a recognised audio file (expected {SUPPORTED_FORMATS})")


def _stream(source: AudioSource) -> tuple[BinaryIO, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        stream: BinaryIO = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            if path.exists():  # a folder, or a pipe (`diarize <(curl ...)`), which the decoders cannot seek in
                raise AudioDecodeError(f"not a regular file: {path} (a folder or a pipe? save the audio to a file)")
            raise AudioDecodeError(f"no such audio file: {path}")
        stream = open(path, "rb")  # noqa: SIM115 (closed with the SoundFile)
    elif callable(getattr(source, "read", None)):
        seekable = getattr(source, "seekable", None)
        if not callable(getattr(source, "seek", None)) or callable(seekable) and not seekable():
            # a pipe, an HTTP body: the walks and libsndfile seek
            raise AudioDecodeError("the audio stream cannot seek: pass its bytes or a file path")
        stream = source
        stream.seek(0)  # a file object read before (by this function too) is read from its start
    else:
        raise AudioDecodeError(f"audio must be a file path, bytes or a binary file, not {type(source).__name__} "
                               "(arrays of samples: Diarizer.diarize_samples)")
    head = stream.read(HEAD_BYTES)
    fmt = detect_format(head)
    if head[:3] == b"ID3":
        fmt = _after_id3(stream, head) or fmt
    if fmt == "WAV":
        codec = scan.wav_codec(stream)
        if codec is not None and codec not in _SNDFILE_WAV_CODECS:
            fmt = f"WAV ({_WAV_CODEC_NAMES.get(codec, f'codec 0x{codec:04X}')})"
    stream.seek(0)
    return stream, fmt


def transcoded(fmt: str) -> bool:
    """True for the formats only the transcoder decodes: the containers libsndfile cannot read, and WAVs holding
    a codec it lacks (named "WAV (G.729)" and so on)."""
    return fmt in TRANSCODED_FORMATS or fmt.startswith("WAV (")


def _after_id3(stream: BinaryIO, head: bytes) -> str | None:
    """The format of the audio behind an ID3v2 tag, which taggers also put before AAC (ADTS: HLS segments,
    phone recorders) and FLAC; None where those bytes name nothing (padding before the first MP3 frame)."""
    stream.seek(scan.id3v2_size(head))
    try:
        return detect_format(stream.read(HEAD_BYTES))
    except AudioDecodeError:
        return None


def open_source(source: AudioSource) -> tuple[BinaryIO, str]:
    """The source as a seekable binary stream, and its format name (from the bytes)."""
    return _stream(source)


def _open(source: AudioSource, max_seconds: float = MAX_SECONDS) -> tuple[sf.SoundFile, str, int | None]:
    """An open SoundFile, the format, and the true length in frames where it is known before decoding (None:
    only decoding can tell). What libsndfile cannot decode whole goes through the transcoder first, which
    stops past `max_seconds`."""
    stream, fmt = _stream(source)
    why = None
    if not transcoded(fmt):
        handle, frames, why, _ = _sndfile(stream, fmt)
        if why is None:
            return handle, fmt, frames
        if handle is not None:
            handle.close()
    handle = sf.SoundFile(_transcoded(stream, fmt, max_seconds, why))
    return handle, fmt, handle.frames


def _sndfile(stream: BinaryIO, fmt: str) -> tuple[sf.SoundFile | None, int | None, str | None, scan.Mp3Walk | None]:
    """libsndfile's handle on the stream (None for an MP3 it cannot open but whose frames are sound), the true
    length in frames where known, why libsndfile would not decode it whole (None when it will), and an MP3's
    frame walk (None for other formats)."""
    # Scanned before libsndfile opens the stream: it keeps its own idea of the stream's position.
    walk = scan.mp3_walk(stream) if fmt == "MP3" else None
    ogg_chained = fmt == "OGG" and scan.ogg_streams(stream) > 1
    try:
        handle = sf.SoundFile(stream)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        if walk is not None and walk.samples and walk.regular:
            # libsndfile refuses some MP3s whose frames are sound (an Info header counting one frame: "File does
            # not exist"); FFmpeg reads them by their frames.
            check_header(fmt, walk.rate, walk.channels, walk.samples)
            return None, walk.samples, "is one the decoder here cannot open, though its frames look sound", walk
        raise AudioDecodeError(f"cannot decode the {fmt} audio: {_reason(err)}") from err
    why = None
    if fmt == "MP3":
        # An MP3's length is its walked frames. libsndfile sizes one without a Xing/Info header from the first
        # frame's bitrate and stops reading there: a variable bitrate would silently lose the rest. It also
        # believes a Xing/Info header's frame count, so a header that under-states it (or that it cannot read:
        # the length is then "unknown" and it decodes nothing) would cut the audio short just as silently.
        # And it stops at the first damaged or foreign frame, where FFmpeg's decoder carries on.
        frames = walk.samples
        if _header_frames(handle) is None or (frames is not None and frames > handle.frames + _MP3_UNCOUNTED_SAMPLES):
            why = ("has a length header (Xing/Info) that does not match its frames, or changes bitrate without one, "
                   "so the decoder here would stop early")
        elif not walk.regular:
            why = "has damaged or foreign frames, where the decoder here would stop early"
    else:
        frames = _header_frames(handle)
        if frames is None:  # libsndfile seeks for the length and fails (a FLAC written to a pipe)
            why = "has no length in its header (written to a pipe?), which the decoder here cannot read"
        elif ogg_chained:
            why = "chains several Ogg streams, and the decoder here would read only the first"
    try:
        check_header(fmt, handle.samplerate, handle.channels, frames or 0)
    except AudioDecodeError:
        handle.close()
        raise
    return handle, frames, why, walk


def _transcoded(stream: BinaryIO, fmt: str, max_seconds: float, why: str | None = None) -> BinaryIO:
    """The audio as 16 kHz mono WAV from the transcoder (PyAV); without it, TranscoderUnavailable (a 4xx,
    and the service's cue to send the job to its TranscodeFunction)."""
    from diarizer import transcode

    if why and not transcode.available():
        raise transcode.TranscoderUnavailable(f"this {fmt} {why}: re-encode it, send WAV/FLAC, or "
                                              f"decode it with the transcoder ({transcode.INSTALL_HINT})")
    return transcode.transcode_to_tempfile(stream, fmt, max_seconds=min(max_seconds, transcode.MAX_SECONDS))


def needs_transcoder(source: AudioSource) -> bool:
    """True where only the transcoder decodes this audio whole: M4A/MP4/WebM, and the FLAC and MP3 files
    libsndfile would fail on or cut short (see `_sndfile`). Raises AudioDecodeError for non-audio."""
    stream, fmt = _stream(source)
    if transcoded(fmt):
        return True
    handle, _, why, _ = _sndfile(stream, fmt)
    if handle is not None:
        handle.close()
    return why is not None


def _header_frames(handle: sf.SoundFile) -> int | None:
    """The length libsndfile read from the header, or None where the header gives none."""
    return None if handle.frames >= _UNKNOWN_FRAMES or handle.frames < 0 else handle.frames


def check_header(fmt: str, sample_rate: int, channels: int, frames: int) -> None:
    """Refuse header claims outside what any real recording has, before any allocation."""
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioDecodeError(f"the {fmt} header claims a sample rate of {sample_rate} Hz; accepted: "
                               f"{MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz")
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioDecodeError(f"the {fmt} header claims {channels} channels; accepted: 1 to {MAX_CHANNELS}")
    if frames > MAX_SECONDS * sample_rate:
        raise AudioDecodeError(f"the {fmt} header claims {frames / sample_rate / 3600:.0f} hours of audio; "
                               f"accepted: up to {MAX_SECONDS // 3600} hours")


def _reason(err: Exception) -> str:
    text = str(err)
    return text.split(": ", 1)[-1] if "Error opening" in text else text


def probe_audio(source: AudioSource) -> AudioInfo:
    """Read only the header (an MP3's frame headers): format, rate, channels, duration. Where the length is
    not known without decoding, `length_known` is False. Raises AudioDecodeError."""
    stream, fmt = _stream(source)
    if transcoded(fmt):
        from diarizer import transcode

        rate, channels, duration = transcode.probe(stream, fmt)
        check_header(fmt, rate, channels or 1, int(duration * rate))
        return AudioInfo(fmt, rate, channels, int(duration * rate), duration, length_known=False)
    handle, frames, why, walk = _sndfile(stream, fmt)  # never transcodes: the caller's limit is not known here
    if handle is None:  # an MP3 only the transcoder opens: its frames tell what it holds
        return AudioInfo(fmt, walk.rate, walk.channels, frames, frames / walk.rate, length_known=False)
    with handle:
        known = why is None and frames is not None
        frames = frames or 0
        return AudioInfo(fmt, handle.samplerate, handle.channels, frames, frames / handle.samplerate, known)


def _limit(max_seconds: float) -> float:
    """The decoding limit asked for, at most MAX_SECONDS; InvalidOptionsError for one that is no limit (NaN, 0)."""
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) or not max_seconds > 0:
        raise InvalidOptionsError(f"max_seconds must be a positive number of seconds, not {max_seconds!r}")
    return min(max_seconds, MAX_SECONDS)


def _too_long(fmt: str, max_seconds: float) -> AudioTooLongError:
    return AudioTooLongError(f"the {fmt} audio is longer than {max_seconds:g} s", max_seconds)


def check_decodes(source: AudioSource, max_seconds: float = MAX_SECONDS) -> AudioInfo:
    """Decode the whole stream at its own rate (no resampling, one block in memory) and discard the samples:
    catches a truncated or corrupt body that a header-only probe accepts, and measures the real length.
    Returns the AudioInfo of what decodes (`length_known`); AudioTooLongError past `max_seconds`."""
    max_seconds = _limit(max_seconds)
    handle, fmt, frames = _open(source, max_seconds)
    with handle:
        block_frames = max(1, BLOCK_SAMPLES // handle.channels)
        limit = int(max_seconds * handle.samplerate)
        decoded = 0
        try:
            while True:
                count = len(handle.read(block_frames, dtype="float32", always_2d=True))
                decoded += count
                if decoded > limit:
                    raise _too_long(fmt, max_seconds)
                if count < block_frames:
                    break
        except (sf.LibsndfileError, RuntimeError) as err:
            raise AudioDecodeError(f"the {fmt} audio is corrupt or truncated: {_reason(err)}") from err
        rate, channels = handle.samplerate, handle.channels
    _check_complete(fmt, frames, decoded)
    return AudioInfo(fmt, rate, channels, decoded, decoded / rate)


def _check_complete(fmt: str, frames: int | None, decoded: int) -> None:
    """After decoding `decoded` frames: no audio at all is EmptyAudioError, and a header's exact length that the
    body does not fill is a cut or corrupt file. An MP3 has no such header: its walked frames include a Xing/Info
    frame and the encoder's padding, which decode to nothing: only a decoder that stops well short is an error."""
    if frames and fmt != "MP3" and decoded < frames:
        raise AudioDecodeError(f"the {fmt} audio is truncated: {decoded} of the {frames} frames its header "
                               "announces")
    if frames and fmt == "MP3" and decoded + _MP3_UNCOUNTED_SAMPLES < frames:
        raise AudioDecodeError(f"the {fmt} audio stopped decoding after {decoded} of the {frames} samples its "
                               "frames hold")
    if decoded == 0:
        raise EmptyAudioError(f"the {fmt} file contains no audio samples")


class _BlockResampler:
    """Polyphase resampling of a stream, block by block, without seams between blocks.

    Each block is resampled with `context` input samples from its neighbours on both sides and the
    matching output is cut out, so the result equals resampling the whole signal at once (up to the
    filter's ends). Block starts stay on multiples of `down`, which keeps the output grid aligned.
    """

    def __init__(self, source_rate: int, target_rate: int = SAMPLE_RATE):
        ratio = Fraction(target_rate, source_rate).limit_denominator(MAX_RATIO_DENOMINATOR)
        self.up, self.down = ratio.numerator, ratio.denominator
        taps_half = 10 * max(self.up, self.down) // self.up + 1  # resample_poly's default half-width
        self.context = self.down * (-(-max(taps_half, 64) // self.down))
        self._pending = np.zeros(0, np.float32)  # input not yet resampled
        self._history = np.zeros(0, np.float32)  # last `context` samples already resampled

    def push(self, block: np.ndarray, final: bool = False) -> np.ndarray:
        if self.up == self.down:
            return block
        from scipy.signal import resample_poly

        data = np.concatenate([self._pending, block])
        if final:
            ready, self._pending = data, np.zeros(0, np.float32)
        else:
            usable = max(len(data) - self.context, 0) // self.down * self.down
            ready, self._pending = data[:usable], data[usable:]
        if not len(ready):
            return np.zeros(0, np.float32)
        lookahead = self._pending[: self.context] if not final else np.zeros(0, np.float32)
        padded = np.concatenate([self._history, ready, lookahead])
        out = resample_poly(padded, self.up, self.down).astype(np.float32)
        skip = len(self._history) * self.up // self.down
        keep = -(-len(ready) * self.up // self.down) if final else len(ready) * self.up // self.down
        self._history = ready[-self.context :] if len(ready) >= self.context else np.concatenate(
            [self._history, ready]
        )[-self.context :]
        return out[skip : skip + keep]


class _SampleSink:
    """Collects 16 kHz blocks; spills to a memory-mapped temp file past SPILL_SECONDS."""

    def __init__(self) -> None:
        self._blocks: list[np.ndarray] = []
        self._count = 0
        self._file = None

    def add(self, block: np.ndarray) -> None:
        if not len(block):
            return
        self._count += len(block)
        if self._file is None and self._count > SPILL_SECONDS * SAMPLE_RATE:
            self._file = tempfile.TemporaryFile(prefix="diarizer-audio-")
            for old in self._blocks:
                self._file.write(old.tobytes())
            self._blocks = []
        if self._file is not None:
            self._file.write(block.astype(np.float32).tobytes())
        else:
            self._blocks.append(block.astype(np.float32))

    def result(self, gain: float = 1.0) -> np.ndarray:
        """All samples, times `gain` (in place: a spilled file is scaled block by block on disk)."""
        if self._file is None:
            samples = np.concatenate(self._blocks) if self._blocks else np.zeros(0, np.float32)
            if gain != 1.0:
                samples *= np.float32(gain)
            return samples
        self._file.flush()
        if gain != 1.0:
            writable = np.memmap(self._file, dtype=np.float32, mode="r+", shape=(self._count,))
            for first in range(0, self._count, BLOCK_SECONDS * SAMPLE_RATE):
                writable[first : first + BLOCK_SECONDS * SAMPLE_RATE] *= np.float32(gain)
            writable.flush()
            del writable
        # The mapping keeps the (already unlinked) file alive until the array is dropped.
        return np.memmap(self._file, dtype=np.float32, mode="r", shape=(self._count,))


class LevelMeter:
    """The level of a recording's loud moments, fed block by block: a histogram of 25 ms frame levels."""

    def __init__(self) -> None:
        self.counts = np.zeros(len(_LEVEL_BINS) - 1, np.int64)

    def add(self, block: np.ndarray) -> None:
        frames = np.asarray(block[: len(block) // _LEVEL_FRAME * _LEVEL_FRAME], np.float32).reshape(-1, _LEVEL_FRAME)
        frames = frames - frames.mean(axis=1, keepdims=True)  # a recorder's DC offset is not loudness (both models remove it)
        power = np.einsum("ij,ij->i", frames, frames) / _LEVEL_FRAME
        levels = 10 * np.log10(np.maximum(power, 1e-20))
        self.counts += np.histogram(np.clip(levels, _LEVEL_BINS[0], _LEVEL_BINS[-1] - 0.01), _LEVEL_BINS)[0]

    def gain(self) -> float:
        """Linear gain that brings the loud moments up to WORKING_LEVEL_DB; 1.0 when they are there already
        (or within MIN_GAIN_DB of it, or there is no audio)."""
        total = int(self.counts.sum())
        if not total:
            return 1.0
        loud = _LEVEL_BINS[1 + int(np.searchsorted(np.cumsum(self.counts), LEVEL_PERCENTILE / 100 * total))]
        raise_by = min(WORKING_LEVEL_DB - float(loud), MAX_GAIN_DB)
        return float(10 ** (raise_by / 20)) if raise_by >= MIN_GAIN_DB else 1.0


def at_working_level(samples: np.ndarray) -> np.ndarray:
    """`samples` raised to the working level (a new array), or `samples` itself when it is there already,
    which is always the case for `decode`'s output."""
    meter = LevelMeter()
    for first in range(0, len(samples), BLOCK_SECONDS * SAMPLE_RATE):
        meter.add(samples[first : first + BLOCK_SECONDS * SAMPLE_RATE])
    gain = meter.gain()
    return samples if gain == 1.0 else (np.asarray(samples, np.float32) * np.float32(gain))


def downmix(block: np.ndarray) -> np.ndarray:
    """(frames, channels) -> (frames,) float32: the channels' mean, unless the mean cancels what the channels
    hold, as it does when one channel is a polarity-inverted copy of another (a mis-wired balanced cable, a
    "wide stereo" effect): then the loudest channel alone. The mean of such a file is digital silence, and
    nobody would be found in it.

    Cancelled means the mean keeps under CANCELLED_DB of the power it would have if the channels were
    unrelated (1/channels² of their summed power): channels that merely differ, or one live channel among
    silent ones, keep at least that much."""
    if block.shape[1] == 1:
        return block[:, 0]
    mono = block.mean(axis=1)
    power = np.einsum("ij,ij->j", block, block, dtype=np.float64)
    unrelated = power.sum() / block.shape[1] ** 2
    if unrelated > 0 and float(np.dot(mono, mono)) < unrelated * 10 ** (CANCELLED_DB / 10):
        return np.ascontiguousarray(block[:, int(np.argmax(power))])
    return mono


def from_array(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """An array a caller holds (soundfile's (frames, channels), torchaudio's (channels, frames), integer PCM, any
    rate) as what `decode` returns: 16 kHz mono float32 without NaN or inf, raised to the working level. Without
    this, a (channels, frames) array was read as 1 or 2 samples, a 44.1 kHz one gave times 2.76x too long, and one
    NaN sample emptied the whole result, all silently. Raises AudioDecodeError for what is not audio."""
    array = np.asarray(samples)
    if array.dtype.kind not in "iuf" or array.ndim not in (1, 2):
        raise AudioDecodeError(f"samples must be a 1-D (frames) or 2-D (frames, channels) array of numbers; got "
                               f"{array.ndim}-D {array.dtype}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or not (
            MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE):
        raise AudioDecodeError(f"sample_rate must be an integer from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz")
    if array.ndim == 2:
        if array.shape[0] <= MAX_CHANNELS < array.shape[1]:
            array = array.T  # (channels, frames): only channels can be that few (33 frames are 2 ms)
        if not 1 <= array.shape[1] <= MAX_CHANNELS:
            raise AudioDecodeError(f"samples of shape {samples.shape}: which side is the channels? Pass (frames,) "
                                   f"or (frames, channels) with at most {MAX_CHANNELS} channels")
    if array.dtype.kind in "iu":  # PCM at its full scale, as a decoder gives it
        bits = array.dtype.itemsize * 8
        middle = 2 ** (bits - 1) if array.dtype.kind == "u" else 0
        array = (array.astype(np.float64) - middle) / 2 ** (bits - 1)
    array = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    mono = downmix(array) if array.ndim == 2 else array
    mono = _BlockResampler(int(sample_rate)).push(np.ascontiguousarray(mono), final=True)
    return at_working_level(mono)


def decode(source: AudioSource, max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """Decode to 16 kHz mono float32 in [-1, 1], a quiet recording then raised to the working level (see
    `at_working_level`; its peaks may pass 1.0). Raises AudioDecodeError with the reason, AudioTooLongError
    as soon as more than `max_seconds` have been decoded (whatever the header said)."""
    max_seconds = _limit(max_seconds)
    handle, fmt, frames = _open(source, max_seconds)
    resampler = _BlockResampler(handle.samplerate)
    sink = _SampleSink()
    meter = LevelMeter()
    block_frames = max(1, min(BLOCK_SECONDS * handle.samplerate, BLOCK_SAMPLES // handle.channels))
    max_frames = int(max_seconds * handle.samplerate)  # a header that under-states the length cannot make us read on
    read = 0
    with handle:
        try:
            while True:
                block = handle.read(block_frames, dtype="float32", always_2d=True)
                read += len(block)
                if read > max_frames:
                    raise _too_long(fmt, max_seconds)
                final = len(block) < block_frames
                mono = downmix(block)
                # NaN/inf samples (broken float WAVs) become silence rather than poisoning the models.
                mono = np.nan_to_num(mono, nan=0.0, posinf=0.0, neginf=0.0)
                np.clip(mono, -1.0, 1.0, out=mono)
                out = resampler.push(mono, final=final)
                meter.add(out)
                sink.add(out)
                if final:
                    break
        except (sf.LibsndfileError, RuntimeError) as err:
            raise AudioDecodeError(f"the {fmt} audio is corrupt or truncated: {_reason(err)}") from err
    _check_complete(fmt, frames, read)
    return sink.result(meter.gain())
