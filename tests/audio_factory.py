"""Real test audio, built on the fly: conversations, signals, format variants and broken files.

A plain helper module for tests (no fixtures here). Import it as ``audio_factory`` (the
``tests/`` folder has to be on ``sys.path``; pytest puts it there when ``tests/conftest.py``
exists, or add it yourself).

Everything is deterministic: the same arguments and seed give the same samples and bytes.
Audio is float32 in [-1, 1] and 16 kHz unless a function says otherwise. Only numpy, scipy and
soundfile are used; nothing here runs espeak-ng, ffmpeg or sox.

Sources of speech:

* ``demo/`` holds two committed recordings with exact references (see ``demo/README.md``);
  ``demo_recording("two-speakers")`` loads one. Always available.
* ``../shared/eval/pool/libri/<speaker>/*.flac`` (LibriSpeech, one folder per speaker) is
  NOT part of the repository. Tests that use it must carry ``@requires_shared_eval``.
  Never copy those files into the repository.
"""
from __future__ import annotations

import functools
import io
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

RATE = 16000
REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO_ROOT / "demo"
SHARED_EVAL = REPO_ROOT.parent / "shared" / "eval"
LIBRI_POOL = SHARED_EVAL / "pool" / "libri"

requires_shared_eval = pytest.mark.skipif(
    not SHARED_EVAL.is_dir(), reason="../shared/eval is not present (it is not part of the repository)"
)

Turn = tuple[float, float, str]  # (start seconds, end seconds, speaker label)

_AUDIO_SUFFIXES = {".flac", ".wav", ".ogg", ".mp3"}


# --------------------------------------------------------------------------- simple signals


def silence(seconds: float, sr: int = RATE) -> np.ndarray:
    """Digital silence (all zeros)."""
    return np.zeros(int(round(seconds * sr)), dtype=np.float32)


def tone(seconds: float, freq: float = 440.0, sr: int = RATE, amplitude: float = 0.5) -> np.ndarray:
    """A sine wave of `amplitude` peak."""
    t = np.arange(int(round(seconds * sr))) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(seconds: float, sr: int = RATE, amplitude: float = 0.1, seed: int = 0) -> np.ndarray:
    """White Gaussian noise with RMS `amplitude`, clipped to [-1, 1]."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(int(round(seconds * sr))) * amplitude
    return np.clip(x, -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- conversions


def resample(samples: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    """Polyphase resampling along the first axis (mono or frames x channels)."""
    if sr_from == sr_to:
        return np.asarray(samples, dtype=np.float32)
    ratio = Fraction(sr_to, sr_from)
    out = resample_poly(np.asarray(samples, dtype=np.float64), ratio.numerator, ratio.denominator, axis=0)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def to_stereo(samples: np.ndarray, right_gain: float = 0.8) -> np.ndarray:
    """Frames x 2: the signal on the left, the same signal at `right_gain` on the right."""
    mono = np.asarray(samples, dtype=np.float32)
    return np.stack([mono, mono * np.float32(right_gain)], axis=1)


def to_mono(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float32)
    return samples if samples.ndim == 1 else samples.mean(axis=1).astype(np.float32)


def encode(samples: np.ndarray, sr: int = RATE, format: str = "WAV", subtype: str | None = None) -> bytes:
    """The bytes of an audio file (format/subtype as soundfile names them, e.g. "OGG", "VORBIS")."""
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(samples), sr, format=format, subtype=subtype)
    return buffer.getvalue()


def write(path: str | Path, samples: np.ndarray, sr: int = RATE, format: str | None = None,
          subtype: str | None = None) -> Path:
    """Write an audio file; format defaults from the suffix (.wav .flac .ogg .mp3 ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.asarray(samples), sr, format=format, subtype=subtype)
    return path


def decode(data: bytes, dtype: str = "float32") -> tuple[np.ndarray, int]:
    """Read audio bytes with soundfile: (samples, sample rate); frames x channels if stereo."""
    return sf.read(io.BytesIO(data), dtype=dtype)


@dataclass(frozen=True)
class Variant:
    suffix: str  # file name suffix, with the dot
    sr: int  # sample rate of the encoded file
    channels: int
    format: str  # soundfile format
    subtype: str  # soundfile subtype
    lossy: bool = False


# The ways a user's upload may differ from 16 kHz mono 16-bit PCM.
VARIANTS: dict[str, Variant] = {
    "wav_pcm16": Variant(".wav", 16000, 1, "WAV", "PCM_16"),
    "wav_stereo": Variant(".wav", 16000, 2, "WAV", "PCM_16"),
    "wav_8k": Variant(".wav", 8000, 1, "WAV", "PCM_16"),
    "wav_44k": Variant(".wav", 44100, 1, "WAV", "PCM_16"),
    "wav_u8": Variant(".wav", 16000, 1, "WAV", "PCM_U8"),  # 8-bit WAV is unsigned
    "wav_pcm24": Variant(".wav", 16000, 1, "WAV", "PCM_24"),
    "wav_float": Variant(".wav", 16000, 1, "WAV", "FLOAT"),
    "flac": Variant(".flac", 16000, 1, "FLAC", "PCM_16"),
    "flac_44k_stereo": Variant(".flac", 44100, 2, "FLAC", "PCM_24"),
    "ogg_vorbis": Variant(".ogg", 16000, 1, "OGG", "VORBIS", lossy=True),
    "mp3": Variant(".mp3", 16000, 1, "MP3", "MPEG_LAYER_III", lossy=True),
    "mp3_44k_stereo": Variant(".mp3", 44100, 2, "MP3", "MPEG_LAYER_III", lossy=True),
}


def variant(samples: np.ndarray, name: str, sr: int = RATE) -> bytes:
    """`samples` (mono at `sr`) encoded as VARIANTS[name]: resampled, made stereo if needed."""
    spec = VARIANTS[name]
    x = resample(to_mono(samples), sr, spec.sr)
    if spec.channels == 2:
        x = to_stereo(x)
    return encode(x, spec.sr, spec.format, spec.subtype)


def variants(samples: np.ndarray, sr: int = RATE, names: list[str] | None = None) -> dict[str, bytes]:
    """{variant name: file bytes} for every (or the given) VARIANTS."""
    return {name: variant(samples, name, sr) for name in (names or VARIANTS)}


def write_variants(directory: str | Path, samples: np.ndarray, sr: int = RATE, stem: str = "signal",
                   names: list[str] | None = None) -> dict[str, Path]:
    """Write every (or the given) variant as <directory>/<stem>-<name><suffix>; {name: path}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in variants(samples, sr, names).items():
        paths[name] = directory / f"{stem}-{name}{VARIANTS[name].suffix}"
        paths[name].write_bytes(data)
    return paths


# --------------------------------------------------------------------------- broken files


def corrupt(data: bytes, seed: int = 0, keep_header: bool = False) -> bytes:
    """Damaged file bytes, same length.

    keep_header=False: the first 64 bytes (magic numbers, format header) become random garbage,
    so no decoder recognises the format.
    keep_header=True: the header is intact but ~2 % of the bytes after it are flipped; the file
    opens, then a compressed stream fails mid-way (FLAC "lost sync") or PCM decodes as clicks.
    """
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    if not keep_header:
        n = min(64, len(out))
        out[:n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        if out[:4] in (b"RIFF", b"fLaC", b"OggS", b"FORM", b"ID3\x03"):  # astronomically unlikely
            out[0] ^= 0xFF
        return bytes(out)
    start = min(256, len(out) // 2)
    if start >= len(out):
        return bytes(out)
    positions = rng.integers(start, len(out), max(16, (len(out) - start) // 50))
    for i in positions:
        out[i] ^= 0xFF
    return bytes(out)


def truncate(data: bytes, fraction: float = 0.5, keep_bytes: int | None = None) -> bytes:
    """The first `keep_bytes` bytes, or the first `fraction` of them (an interrupted upload)."""
    n = keep_bytes if keep_bytes is not None else int(len(data) * fraction)
    return data[: max(0, n)]


def wav_header_claiming(n_samples: int = 10**9, actual_samples: int = 1600, sr: int = RATE) -> bytes:
    """A 16-bit mono RIFF/WAVE file whose header claims `n_samples` but which holds only
    `actual_samples` (a short tone). libsndfile clamps the count to the data present; code that
    trusts the header (sizes, allocations, duration limits) does not."""
    data_bytes = 2 * n_samples
    if data_bytes + 36 > 0xFFFFFFFF:
        raise ValueError("a RIFF header cannot claim more than about 2.1e9 16-bit samples")
    pcm = (tone(actual_samples / sr, sr=sr) * 32767).astype("<i2")[:actual_samples].tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, sr, 2 * sr, 2, 16)  # PCM, mono, rate, byte rate, align, bits
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", data_bytes) + pcm)


def _mp3_frames_only(data: bytes) -> bytes:
    """An MP3 as a bare stream of audio frames: no ID3v2 tag, no Xing/Info frame (what many streaming
    encoders and concatenating tools write)."""
    if data[:3] == b"ID3":
        data = data[10 + ((data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9]):]
    tag = max(data.find(b"Xing", 0, 200), data.find(b"Info", 0, 200))
    if tag >= 0:  # the tag lives inside the first frame: the audio starts at the next frame sync
        sync = tag
        while not (data[sync] == 0xFF and data[sync + 1] & 0xE0 == 0xE0):
            sync += 1
        data = data[sync:]
    return data


def lag_behind(source: np.ndarray, decoded: np.ndarray, most: int = 4000) -> int:
    """How many samples later than in `source` the signal sits in `decoded` (cross-correlation, up to `most`
    samples either way): a codec's delay, found to the sample."""
    from scipy.signal import correlate

    n = min(len(source), len(decoded)) - 2 * most
    return int(np.argmax(correlate(decoded[: n + 2 * most], source[most : most + n], mode="valid"))) - most


def mp3(samples: np.ndarray, sr: int = RATE, level: float = 0.5, writer: str = "libsndfile") -> bytes:
    """A constant-bitrate MP3 as libsndfile writes it (`level` is its compression level: 0.9 at 16 kHz is
    24 kbit/s, too little for LAME to write its Xing/Info frame) or as FFmpeg does (`writer="ffmpeg"`, PyAV's
    libmp3lame at 32 kbit/s, with FFmpeg's own Info frame)."""
    if writer == "libsndfile":
        buf = io.BytesIO()
        sf.write(buf, samples, sr, format="MP3", compression_level=level, bitrate_mode="CONSTANT")
        return buf.getvalue()
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=sr, layout="mono")
        stream.bit_rate = 32000
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, np.float32)[None, :], format="flt",
                                           layout="mono")
        frame.sample_rate = sr
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buf.getvalue()


def mp3_without_length_header(first: np.ndarray, rest: np.ndarray, sr: int = RATE) -> bytes:
    """A variable-bitrate MP3 with no Xing/Info header: `first` at the highest bitrate, then `rest` at the
    lowest. A decoder that sizes the file from its first frame's bitrate (libsndfile) under-states it."""
    def cbr(samples: np.ndarray, level: float) -> bytes:
        buf = io.BytesIO()
        with sf.SoundFile(buf, "w", sr, 1, format="MP3", subtype="MPEG_LAYER_III",
                          compression_level=level, bitrate_mode="CONSTANT") as out:
            out.write(samples)
        return _mp3_frames_only(buf.getvalue())

    return cbr(first, 0.0) + cbr(rest, 0.99)


def mp3_behind_large_tag(samples: np.ndarray, tag_bytes: int = 300_000, sr: int = RATE) -> bytes:
    """A constant-bitrate MP3 with no Xing/Info header behind an ID3v2 tag of `tag_bytes` (cover art):
    a decoder that sizes the file from its byte count over-states it."""
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", sr, 1, format="MP3", subtype="MPEG_LAYER_III", bitrate_mode="CONSTANT") as out:
        out.write(samples)
    size = bytes([(tag_bytes >> 21) & 0x7F, (tag_bytes >> 14) & 0x7F, (tag_bytes >> 7) & 0x7F, tag_bytes & 0x7F])
    return b"ID3\x04\x00\x00" + size + b"\x00" * tag_bytes + _mp3_frames_only(buf.getvalue())


def flac_without_length(samples: np.ndarray, sr: int = RATE) -> bytes:
    """A FLAC whose STREAMINFO gives no length (total samples 0, "unknown", as FFmpeg leaves it when writing
    to a pipe). libsndfile cannot read such a file."""
    data = bytearray(encode(samples, sr, "FLAC"))
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO first
    data[21] &= 0xF0  # the 36-bit total sample count: the low nibble of byte 21 and bytes 22-25
    data[22:26] = b"\x00\x00\x00\x00"
    return bytes(data)


def nan_float_wav(seconds: float = 1.0, sr: int = RATE, nan_fraction: float = 0.1, inf: bool = False) -> bytes:
    """A 32-bit float WAV: a tone with a run of NaN samples in the middle (`nan_fraction` of the
    file; 1.0 makes it all NaN), plus +inf and -inf samples if `inf`."""
    x = tone(seconds, sr=sr, amplitude=0.5)
    n = int(round(len(x) * nan_fraction))
    a = (len(x) - n) // 2
    x[a : a + n] = np.nan
    if inf and len(x) >= 4:
        x[len(x) // 8] = np.inf
        x[-(len(x) // 8) - 1] = -np.inf
    return encode(x, sr, "WAV", "FLOAT")


# --------------------------------------------------------------------------- references


def rttm(uri: str, turns: list[Turn]) -> str:
    """RTTM text for (start, end, label) turns."""
    return "".join(
        f"SPEAKER {uri} 1 {s:.3f} {e - s:.3f} <NA> <NA> {label} <NA> <NA>\n" for s, e, label in turns
    )


def read_rttm(path: str | Path, uri: str | None = None) -> list[Turn]:
    """(start, end, label) turns of an RTTM file (of one file id if `uri`), sorted by start."""
    turns = []
    for line in Path(path).read_text().splitlines():
        f = line.split()
        if len(f) >= 8 and f[0] == "SPEAKER" and (uri is None or f[1] == uri):
            start, duration = float(f[3]), float(f[4])
            turns.append((start, start + duration, f[7]))
    return sorted(turns)


def demo_recording(name: str = "two-speakers") -> tuple[np.ndarray, list[Turn]]:
    """A committed demo recording (demo/<name>.flac, 16 kHz mono) and its reference turns."""
    samples, sr = sf.read(DEMO_DIR / f"{name}.flac", dtype="float32")
    assert sr == RATE, sr
    return samples, read_rttm(DEMO_DIR / f"{name}.rttm", uri=name)


def demo_voice(label: str, name: str = "two-speakers", until: float | None = None, gap: float = 0.3) -> np.ndarray:
    """One demo speaker alone: its turns of demo/<name>.flac that nobody overlaps (ending by `until` seconds),
    joined with `gap` seconds of silence. For enrolment tests: A, B and C are the same voices in both demos."""
    samples, turns = demo_recording(name)
    pieces = []
    for start, end, who in turns:
        alone = not any(o != who and s < end and e > start for s, e, o in turns)
        if who == label and alone and (until is None or end <= until):
            pieces += [samples[int(start * RATE) : int(end * RATE)], silence(gap)]
    return np.concatenate(pieces) if pieces else silence(0.0)


# --------------------------------------------------------------------------- conversations


def _active(audio: np.ndarray, sr: int = RATE, floor_db: float = 35.0) -> tuple[int, int]:
    """First and last sample of the part louder than (loudest 25 ms frame - floor_db)."""
    frame, hop = int(0.025 * sr), int(0.010 * sr)
    if len(audio) < frame:
        return 0, 0
    frames = np.lib.stride_tricks.sliding_window_view(audio, frame)[::hop]
    level = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    on = np.flatnonzero(level > level.max() - floor_db)
    if len(on) == 0:
        return 0, 0
    return int(on[0] * hop), int(min(on[-1] * hop + frame, len(audio)))


@functools.lru_cache(maxsize=64)
def _speaker_audio(folder: str) -> np.ndarray:
    """All of one pool speaker's recordings, 16 kHz mono, silent edges cut, joined (read-only)."""
    pieces = []
    for path in sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in _AUDIO_SUFFIXES):
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
        audio = resample(audio.mean(axis=1), sr, RATE)
        a, b = _active(audio)
        pieces.append(audio[a:b])
    joined = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    joined.setflags(write=False)
    return joined


def pool_speakers(pool_dir: str | Path = LIBRI_POOL) -> list[str]:
    """Sorted names of the speaker folders (that hold audio) in a pool."""
    pool_dir = Path(pool_dir)
    return sorted(
        d.name for d in pool_dir.iterdir()
        if d.is_dir() and any(p.suffix.lower() in _AUDIO_SUFFIXES for p in d.iterdir())
    )


def conversation_from_pool(
    pool_dir: str | Path,
    n_speakers: int,
    seed: int,
    seconds: float = 30.0,
    *,
    turn: tuple[float, float] = (1.5, 4.0),
    pause: tuple[float, float] = (0.3, 1.0),
    snr_db: float | None = None,
) -> tuple[np.ndarray, list[Turn]]:
    """A conversation of `n_speakers` pool speakers, exactly `seconds` long, at 16 kHz.

    Speakers are drawn by `seed` from the folders of `pool_dir` (e.g. LIBRI_POOL, one folder per
    LibriSpeech speaker); each speaks once in turn first, then turns alternate at random (never
    the same speaker twice in a row). A turn is a 1.5-4 s piece of that speaker's recordings, cut
    to start and end on speech; turns are separated by 0.3-1 s pauses, never overlap, and the
    last one ends at least 0.2 s before the end. Background is digital silence unless `snr_db`
    adds white noise at that signal-to-noise ratio.

    Returns (float32 samples, [(start, end, label)]) where label is the speaker folder name.
    The reference marks whole turns; read speech inside a turn may hold short breathing pauses.
    Pieces of a speaker may repeat when their recordings are shorter than their share of the
    conversation (LibriSpeech pool: one 7-16 s utterance per speaker).
    """
    names = pool_speakers(pool_dir)
    if not 1 <= n_speakers <= len(names):
        raise ValueError(f"{pool_dir}: asked for {n_speakers} speakers, the pool has {len(names)}")
    rng = np.random.default_rng(seed)
    chosen = [str(n) for n in rng.choice(names, size=n_speakers, replace=False)]
    sources = {name: _speaker_audio(str(Path(pool_dir) / name)) for name in chosen}
    total = int(round(seconds * RATE))
    limit = total - int(0.2 * RATE)  # last turn ends by here
    shortest = int(0.5 * RATE)
    mix = np.zeros(total, dtype=np.float32)
    turns: list[Turn] = []
    cursor, last, count = int(round(rng.uniform(0.2, 0.6) * RATE)), None, 0
    while True:
        if count < n_speakers:
            name = chosen[count]
        else:
            others = [n for n in chosen if n != last] or chosen
            name = others[int(rng.integers(len(others)))]
        source = sources[name]
        length = min(len(source), int(rng.uniform(*turn) * RATE), limit - cursor)
        if length < shortest:
            break
        offset = int(rng.integers(0, len(source) - length + 1))
        piece = source[offset : offset + length]
        a, b = _active(piece)
        piece = piece[a:b]
        if len(piece) >= shortest // 2:
            mix[cursor : cursor + len(piece)] = piece
            turns.append((cursor / RATE, (cursor + len(piece)) / RATE, name))
            cursor += len(piece) + int(round(rng.uniform(*pause) * RATE))
            last, count = name, count + 1
        else:
            cursor += int(0.1 * RATE)  # a silent stretch of the source: skip it
    if count < n_speakers:
        raise ValueError(f"{seconds} s is too short for {n_speakers} speakers")
    if snr_db is not None:
        speech = np.concatenate([mix[int(s * RATE) : int(e * RATE)] for s, e, _ in turns])
        level = np.sqrt(np.mean(speech.astype(np.float64) ** 2)) / 10 ** (snr_db / 20)
        mix = mix + rng.standard_normal(total).astype(np.float32) * np.float32(level)
    peak = float(np.max(np.abs(mix))) if total else 0.0
    if peak > 0.99:
        mix *= np.float32(0.99 / peak)
    return mix.astype(np.float32), turns
