"""Voiceprints: enrol a known voice from audio, and keep voiceprints in a file for the command line.

Enrolment diarizes each recording first: a recording where two voices each hold a real share of the
speech is refused (a voiceprint must be one person), so is one with less than MIN_SPEECH_SECONDS of
speech in total. The voiceprint is the length-weighted mean CAM++ print of the speech, computed with the
pipeline's own embedder, so it lives in the same space as the speakers it is later compared with.

Voiceprints are biometric data: the file is created owner-only (0600, its folder 0700), written
atomically, and nothing here logs them.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

import numpy as np

from diarizer import audio as audio_io
from diarizer.embedding import EMBEDDING_DIM
from diarizer.types import DiarizationOptions, EnrollmentError, Voiceprint

if TYPE_CHECKING:
    from diarizer.pipeline import Diarizer

MIN_SPEECH_SECONDS = 5.0
MAX_SPEECH_SECONDS = 120.0  # more speech adds little to a voiceprint and costs CAM++ time
SECOND_VOICE_SECONDS = 1.0  # another voice with at least this much solo speech ...
SECOND_VOICE_SHARE = 0.1  # ... and this share of it makes the recording a conversation
# Two stretches of speech (two diarized speakers of one recording, or two recordings) whose prints are less
# alike than this are not one person. Lower than the identification threshold on purpose: one person across
# sessions and microphones varies more than a match needs, and refusing an honest enrolment is worse than
# letting an over-split recording through (different people sit far below: 0.36 for the demo's two voices).
SAME_VOICE_SIMILARITY = 0.5
MAX_NAME_LENGTH = 64
FILE_FORMAT = "diarizer-voiceprints"
FILE_VERSION = 1
MAX_FILE_BYTES = 64 * 2**20  # about 20,000 voiceprints; more is not a file this wrote


def validate_name(name: str) -> str:
    name = name.strip() if isinstance(name, str) else name
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_LENGTH or not name.isprintable():
        raise EnrollmentError("invalid_name", f"a voiceprint name must be 1-{MAX_NAME_LENGTH} printable characters")
    return name


def enroll(diarizer: "Diarizer", name: str,
           sources: audio_io.AudioSource | Iterable[audio_io.AudioSource]) -> Voiceprint:
    """One voiceprint from one or more recordings of the same single voice. Raises EnrollmentError."""
    from diarizer.identify import clips_of, mean_print, solo_spans, speaker_prints

    name = validate_name(name)
    if isinstance(sources, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(sources, "read"):
        sources = [sources]  # one recording (a path string was read as a list of one-letter paths)
    clips: list[np.ndarray] = []
    per_recording: list[np.ndarray] = []
    total = 0.0
    for samples in (audio_io.decode(source) for source in sources):
        result = diarizer.diarize_samples(samples, DiarizationOptions())
        spans = solo_spans(result.segments)
        evidence = speaker_prints(samples, result.segments, diarizer._embed_many)
        _refuse_several_voices(evidence.prints, evidence.seconds)
        mine = [(a, b) for _, a, b in spans]
        speech = sum(b - a for a, b in mine)
        recording = clips_of(samples, mine, MAX_SPEECH_SECONDS - total)
        if recording:
            per_recording.append(mean_print(recording, diarizer._embed_many))
        clips += recording
        total += speech
    if total < MIN_SPEECH_SECONDS:
        raise EnrollmentError("too_little_speech", f"Enrolment needs at least {MIN_SPEECH_SECONDS:g} s of speech; "
                              f"this audio has {total:.1f} s.")
    if any(float(a @ b) < SAME_VOICE_SIMILARITY for i, a in enumerate(per_recording) for b in per_recording[i + 1 :]):
        raise EnrollmentError("several_voices", "The recordings do not hold the same voice: enrol each person "
                              "from recordings of that person alone.")
    voiceprint = mean_print(clips, diarizer._embed_many)
    return Voiceprint(name, tuple(float(x) for x in voiceprint), round(float(min(total, MAX_SPEECH_SECONDS)), 2))


def _refuse_several_voices(prints: np.ndarray, seconds: np.ndarray) -> None:
    """Two speakers with a real share of the speech whose voices do not match: not one person."""
    total = float(seconds.sum())
    real = [i for i, s in enumerate(seconds) if s >= SECOND_VOICE_SECONDS and s >= SECOND_VOICE_SHARE * total]
    for a in real:
        for b in real:
            if a < b and float(prints[a] @ prints[b]) < SAME_VOICE_SIMILARITY:
                raise EnrollmentError("several_voices", "The audio holds more than one voice: enrol each person "
                                      "from a recording of that person alone.")


# ---- the command line's voiceprint file -----------------------------------------------------------------

def default_store_path() -> Path:
    """$XDG_DATA_HOME/diarizer/voiceprints.json (XDG_DATA_HOME defaults to ~/.local/share)."""
    base = os.environ.get("XDG_DATA_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "diarizer" / "voiceprints.json"


class VoiceprintFile:
    """Named voiceprints in one JSON file, owner-only; one voiceprint per name (enrolling again replaces it).

    Changes are read-modify-write under an exclusive lock on a sibling `.NAME.lock` file, so two `diarize enroll`
    runs (or scripts enrolling in parallel) never lose each other's voiceprint, and the file is replaced whole
    (a reader never sees half of it). A symlinked file is updated where it lives."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else default_store_path()

    def load(self) -> list[Voiceprint]:
        return [Voiceprint(item["name"], tuple(item["embedding"]), item.get("seconds", 0.0)) for item in self._items()]

    def entries(self) -> list[dict]:
        """What may be shown: names, seconds and dates, never the embeddings."""
        return [{"name": item["name"], "seconds": item.get("seconds"), "created_at": item.get("created_at")}
                for item in self._items()]

    def save(self, voiceprint: Voiceprint) -> bool:
        """Add `voiceprint`; returns True when it replaced one of the same name. ValueError for a voiceprint this
        file could not read back (every later read would call the whole file damaged)."""
        name = validate_name(voiceprint.name)
        if not _is_embedding(list(voiceprint.embedding)) or not _is_seconds(voiceprint.seconds):
            raise ValueError(f"not a voiceprint to keep: {name!r} needs {EMBEDDING_DIM} finite numbers, not all "
                             "zero, and seconds of 0 or more")
        with self._locked():
            items = self._items()
            replaced = any(item["name"] == voiceprint.name for item in items)
            items = [item for item in items if item["name"] != voiceprint.name]
            items.append({"name": voiceprint.name, "seconds": voiceprint.seconds,
                          "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          "embedding": [round(x, 7) for x in voiceprint.embedding]})
            self._write(items)
        return replaced

    def delete(self, name: str) -> bool:
        with self._locked():
            items = self._items(check_items=False)  # a damaged voiceprint can still be deleted by its name
            kept = [item for item in items if item["name"] != name]
            if len(kept) == len(items):
                return False
            self._write(kept)
        return True

    def _target(self) -> Path:
        """The file itself: behind a symlink (a dotfile manager's, a synced folder's), not the link."""
        if not self.path.is_symlink():
            return self.path
        try:
            os.stat(self.path)  # a loop: OSError ELOOP, said as such (resolve() raised RuntimeError)
        except FileNotFoundError:  # a dangling link: the file to create is at its target
            pass
        return Path(os.path.realpath(self.path))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        target = self._target()
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(target.with_name(f".{target.name}.lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            if fcntl is not None:  # POSIX; elsewhere the replace is still atomic, only parallel writers can race
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _items(self, check_items: bool = True) -> list[dict]:
        """The file's voiceprints, checked item by item (ValueError naming the file when it is not ours or is
        damaged: a hand-edited file must not crash a diarization half-way, nor be overwritten). Without
        `check_items`, only that each is an object with a name."""
        target = self._target()
        if not target.exists():
            return []
        if not target.is_file():  # a FIFO would block the read, /dev/zero would fill memory
            raise ValueError(f"{self.path} is not a voiceprint file (not a regular file)")
        with open(target, "rb") as source:
            raw = source.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise ValueError(f"{self.path} is not a voiceprint file (over {MAX_FILE_BYTES // 2**20} MB)")
        try:
            document = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"{self.path} is not a voiceprint file ({type(exc).__name__})") from exc
        items = document.get("voiceprints", []) if isinstance(document, dict) else None
        if not isinstance(document, dict) or document.get("format") != FILE_FORMAT or not isinstance(items, list):
            raise ValueError(f"{self.path} is not a voiceprint file")
        version = document.get("version", FILE_VERSION)
        if not isinstance(version, int) or isinstance(version, bool) or version > FILE_VERSION:
            # rewriting it as this version would drop whatever the newer one stores
            raise ValueError(f"{self.path} was written by a newer diarizer (file version {version!r}): upgrade")
        for number, item in enumerate(items, 1):
            if not (isinstance(item, dict) and isinstance(item.get("name"), str)) or check_items and not (
                    _is_embedding(item.get("embedding")) and _is_seconds(item.get("seconds", 0.0))):
                raise ValueError(f"{self.path}: voiceprint {number} is damaged (it needs a name, seconds and "
                                 f"{EMBEDDING_DIM} numbers)")
        return items

    def _write(self, items: Sequence[dict]) -> None:
        """Replace the file with `items` (called under the lock)."""
        target = self._target()
        if fcntl is not None:
            # Under the lock no other writer has a temp file open, so any left is from a writer that died
            # between writing it and the replace. It holds voiceprints, maybe one deleted since: biometric data
            # that must not outlive its deletion. (Unlinking a planted symlink removes the link only.)
            # Exactly mkstemp's names for this file: `.voiceprints.json.bak.XXXXXXXX.tmp` is another file's, and its
            # writer holds another lock.
            mine = re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}\.tmp")
            for stale in target.parent.iterdir():
                if mine.fullmatch(stale.name):
                    with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                        stale.unlink()
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")  # 0600, O_EXCL
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump({"format": FILE_FORMAT, "version": FILE_VERSION, "voiceprints": list(items)}, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)  # readers never see a half-written file
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _is_seconds(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value) and value >= 0


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer of hundreds of digits
        return False


def _is_embedding(value) -> bool:
    return (isinstance(value, list) and len(value) == EMBEDDING_DIM
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and _finite(x) for x in value)
            and any(x != 0 for x in value))  # all zeros has no direction: it could never match anyone
