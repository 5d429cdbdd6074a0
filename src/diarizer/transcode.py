"""Container formats libsndfile cannot read (M4A/AAC, MP4/MOV, WebM/Matroska, AMR, WMA/ASF, CAF) -> 16 kHz mono PCM.

PyAV (the `av` wheel, which bundles FFmpeg's libraries) is an optional extra: `pip install 'diarizer[transcode]'`.
Without it these formats raise `TranscoderUnavailable`, an AudioDecodeError naming the extra, so a caller
answers with a clear 4xx instead of a crash. On AWS the engine worker does not carry PyAV (it would not fit
the package budget): the service sends such jobs through its own TranscodeFunction first.

Everything a header can claim is bounded: the output stops with an error past `max_seconds` of audio, and
only the first audio track is read (a video track is never decoded).
"""
from __future__ import annotations

import os
import tempfile
from typing import BinaryIO

import numpy as np

from diarizer import scan
from diarizer.audio import check_header, downmix
from diarizer.types import AudioDecodeError, AudioTooLongError, EmptyAudioError

TARGET_RATE = 16000
MAX_SECONDS = 4 * 3600  # above the service's 3-hour limit; a bound for the CLI too (4 h = 230 MB of WAV)
INSTALL_HINT = "pip install 'diarizer[transcode]'"


class TranscoderUnavailable(AudioDecodeError):
    """The format needs PyAV, which is not installed here."""


def available() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _av(fmt: str):
    try:
        import av
    except ImportError as exc:
        raise TranscoderUnavailable(f"{fmt} audio needs the transcoder: {INSTALL_HINT}") from exc
    return av


def _reason(exc: Exception) -> str:
    """FFmpeg's words without its errno and file name ("Invalid data found when processing input")."""
    return str(getattr(exc, "strerror", None) or exc)


def _open_container(av, source: BinaryIO, fmt: str):
    if fmt in ("MP4/M4A", "MOV") and not scan.mp4_sample_tables_fit(source):
        raise AudioDecodeError(f"the {fmt} file is corrupt: its sample tables claim more samples than the file holds "
                               "(or it has a compressed header, which is not read here)")
    source.seek(0)
    try:
        container = av.open(source, mode="r", metadata_errors="ignore")
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise AudioDecodeError(f"cannot read the {fmt} file: {_reason(exc)}") from exc
    if not container.streams.audio:
        container.close()
        raise AudioDecodeError(f"the {fmt} file has no audio track")
    if container.streams.audio[0].codec_context is None:  # FFmpeg has no decoder for the track's codec
        container.close()
        raise AudioDecodeError(f"the {fmt} audio track uses a codec that cannot be decoded")
    return container


# FFmpeg's own AMR decoders stop at the first comfort-noise (SID) frame ("Not yet implemented in FFmpeg"), and
# phones write those in every pause when discontinuous transmission is on (most call recorders); the 3GPP
# reference decoders of opencore-amr, built into PyAV's wheels, play them.
_OPENCORE_DECODERS = {"amrnb": "libopencore_amrnb", "amrwb": "libopencore_amrwb"}


def _decoded_frames(av, container, stream):
    """The stream's audio frames, then None (the resampler's flush)."""
    decoder = _OPENCORE_DECODERS.get(stream.codec_context.name)
    if decoder is None:
        yield from container.decode(stream)
    else:
        context = av.CodecContext.create(decoder, "r")
        context.sample_rate = stream.codec_context.sample_rate
        context.layout = "mono"  # AMR is mono only
        for packet in container.demux(stream):  # the last packet is empty: it flushes the decoder
            yield from context.decode(packet)
    yield None


def _resampled(av, frames, fmt: str):
    """`frames` (then None) as 16 kHz float chunks with their channels kept: `downmix` mixes them, as it does
    libsndfile's formats, where FFmpeg's own mix is the plain mean, which turns a polarity-inverted stereo pair
    into silence. A stream may change rate or channels mid-way (ADTS or MP3 cut together from two recordings),
    and PyAV's resampler refuses a frame unlike its first: the old one is flushed and a new one takes over."""
    resampler, shape = None, None
    try:
        for frame in frames:
            if frame is not None and (frame.sample_rate, frame.layout.name, frame.format.name) != shape:
                check_header(fmt, frame.sample_rate, len(frame.layout.channels), 0)  # the same for the same shape
                if resampler is not None:
                    yield from resampler.resample(None)
                resampler = av.AudioResampler(format="flt", layout=None, rate=TARGET_RATE)
                shape = (frame.sample_rate, frame.layout.name, frame.format.name)
            if resampler is not None:
                yield from resampler.resample(frame)
    except (IndexError, ValueError) as exc:
        if isinstance(exc, (AudioDecodeError, av.FFmpegError)):  # (PyAV's errors are ValueErrors too)
            raise
        # PyAV's own faults on some malformed streams (a chained Ogg whose streams interleave: IndexError)
        raise AudioDecodeError(f"the {fmt} audio is corrupt: {exc}") from exc


def probe(source: BinaryIO, fmt: str) -> tuple[int, int, float]:
    """(sample rate, channels, duration in seconds) of the first audio track, without decoding audio.

    Browser recordings (MediaRecorder WebM) carry no duration in their header: then the packets are
    demuxed (not decoded) and their durations summed, which is fast and cannot be lied about."""
    av = _av(fmt)
    container = _open_container(av, source, fmt)
    with container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate or stream.rate or 0
        channels = stream.codec_context.channels or 0
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / 1_000_000
        else:
            duration = 0.0
            try:
                for packet in container.demux(stream):
                    if packet.duration and packet.time_base:
                        duration += float(packet.duration * packet.time_base)
            except av.FFmpegError as exc:
                raise AudioDecodeError(f"the {fmt} file is corrupt or truncated: {_reason(exc)}") from exc
    if not rate:
        raise AudioDecodeError(f"the {fmt} audio track has no sample rate")
    return rate, channels, duration


def transcode(source: BinaryIO, fmt: str, out: BinaryIO, *, out_format: str = "WAV",
              max_seconds: float = MAX_SECONDS) -> float:
    """Decode the first audio track of `source` and write it to `out` as 16 kHz mono 16-bit WAV or FLAC.

    Returns the duration written, in seconds. Raises AudioDecodeError (corrupt file, no audio, longer
    than `max_seconds`) or TranscoderUnavailable."""
    import soundfile as sf

    av = _av(fmt)
    limit = int(max_seconds * TARGET_RATE)
    written = 0
    container = _open_container(av, source, fmt)
    with container, sf.SoundFile(out, "w", samplerate=TARGET_RATE, channels=1, subtype="PCM_16",
                                 format=out_format) as sink:
        stream = container.streams.audio[0]
        # Before any decoding, as probe_audio does: a header claiming 1 Hz makes the resampler turn each frame
        # into thousands of times its samples in one call (a 150 KB file took 2.7 GB before the length check).
        check_header(fmt, stream.codec_context.sample_rate or stream.rate or 0, stream.codec_context.channels or 0, 0)
        try:
            for chunk in _resampled(av, _decoded_frames(av, container, stream), fmt):
                samples = downmix(chunk.to_ndarray().reshape(-1, len(chunk.layout.channels)))
                written += len(samples)
                if written > limit:
                    raise AudioTooLongError(f"the {fmt} audio is longer than {max_seconds:g} s", max_seconds)
                sink.write(np.clip(samples, -1.0, 1.0))
        except av.FFmpegError as exc:
            raise AudioDecodeError(f"the {fmt} audio is corrupt or truncated: {_reason(exc)}") from exc
    if not written:
        raise EmptyAudioError(f"the {fmt} file contains no audio samples")
    return written / TARGET_RATE


def transcode_to_tempfile(source: BinaryIO, fmt: str, max_seconds: float = MAX_SECONDS) -> BinaryIO:
    """The 16 kHz mono WAV in an unlinked temporary file (an hour is 115 MB: never held in memory)."""
    out = tempfile.TemporaryFile(prefix="diarizer-transcode-", suffix=".wav")
    try:
        transcode(source, fmt, out, max_seconds=max_seconds)
    except BaseException:
        out.close()
        raise
    out.seek(0, os.SEEK_SET)
    return out
