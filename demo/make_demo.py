#!/usr/bin/env python3
"""Build the bundled demo recordings and their exact "who spoke when" references.

The project makes these files itself from the espeak-ng speech synthesizer, so they
are free to use and ship with the repository:

    demo/two-speakers.flac    + demo/two-speakers.rttm     (speakers A, B)
    demo/three-speakers.flac  + demo/three-speakers.rttm   (speakers A, B, C)

Each recording is a short scripted dialogue: alternating turns of synthetic voices
that differ in voice variant, pitch and speed, with pauses between turns, one short
overlap, and a faint background noise (so the pauses are not digital silence).
The reference marks where each voice is actually sounding (measured on the clean
synthesized turn before mixing), so it is exact to about 10 ms.

espeak-ng is a build-time tool only: the output files are committed and tests never
run it. The same seed and the same espeak-ng version give byte-identical files.

    apt-get install -y espeak-ng        # Debian/Ubuntu; espeak-ng 1.51 was used
    python demo/make_demo.py            # rewrites the files in demo/
    python demo/make_demo.py --check    # rebuilds in memory, compares with the committed files

Needs numpy, scipy and soundfile.
"""
from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

RATE = 16000
ESPEAK_RATE = 22050  # espeak-ng always synthesizes at 22.05 kHz
FRAME = 320  # 20 ms
HOP = 160  # 10 ms
NOISE_DBFS = -64.0  # faint room tone under everything (about 20 LSB RMS at 16 bits)
PEAK = 10 ** (-3 / 20)  # normalize the mix to a -3 dBFS peak
DEMO_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Voice:
    espeak: str  # espeak-ng voice, language+variant
    pitch: int  # -p, 0..99 (50 is the voice's default)
    speed: int  # -s, words per minute
    gain_db: float  # level of this speaker in the mix


# Chosen so that a speaker-embedding model (CAM++) keeps them well apart: espeak-ng voices of
# the same synthesizer sound alike to such models (cosine 0.7+ between en-us+m3 and en-gb+f4);
# these three stay below 0.55 between speakers against 0.75+ within a speaker.
VOICES = {
    "A": Voice("en-us+klatt", pitch=20, speed=165, gain_db=0.0),  # low American male, Klatt synthesis
    "B": Voice("en+f5", pitch=70, speed=170, gain_db=-1.5),  # breathy British female, higher and faster
    "C": Voice("en-us+grandma", pitch=50, speed=155, gain_db=-0.5),  # older American female, slower
}

# (speaker, text, overlap): overlap > 0 starts that turn that many seconds before
# the previous turn ends (a quick interruption) instead of after a pause.
TWO_SPEAKERS = [
    ("A", "Good morning. Did you get a chance to read the report?", 0.0),
    ("B", "I did, yes. The numbers for March look much better.", 0.0),
    ("A", "Great. I was worried about the delay in shipping.", 0.0),
    ("B", "So was I, but the new warehouse has helped a lot.", 0.0),
    ("A", "Should we present it to the team on Thursday?", 0.0),
    ("B", "Thursday works for me, maybe right after lunch.", 0.0),
    ("A", "Perfect. I will book the small meeting room.", 0.5),
    ("B", "Could you also send me the slides tonight?", 0.0),
    ("A", "Sure. See you on Thursday, then.", 0.0),
]

THREE_SPEAKERS = [
    ("A", "Okay, let's start. Who wants to go first today?", 0.0),
    ("C", "I can. I fixed the login bug yesterday evening.", 0.0),
    ("B", "Nice. Was that the timeout problem from last week?", 0.0),
    ("C", "Exactly. Sessions expired after five minutes.", 0.0),
    ("A", "Good catch. Is the fix on the test server already?", 0.0),
    ("C", "Yes, it went out early this morning.", 0.0),
    ("B", "Great, then I will test it right after lunch.", 0.5),
    ("A", "One more thing. The client meeting moved to Friday.", 0.0),
    ("C", "Sounds good. Thanks, everyone.", 0.0),
]

RECORDINGS = {"two-speakers": TWO_SPEAKERS, "three-speakers": THREE_SPEAKERS}


def synthesize(text: str, voice: Voice) -> np.ndarray:
    """One turn as float32 samples at 16 kHz, with its silent edges cut off."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("espeak-ng is not installed (apt-get install -y espeak-ng); it is only needed to rebuild the demo")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "turn.wav"
        cmd = [espeak, "-v", voice.espeak, "-p", str(voice.pitch), "-s", str(voice.speed), "-w", str(wav), text]
        subprocess.run(cmd, check=True, capture_output=True)
        audio, rate = sf.read(wav, dtype="float64")
    if rate != ESPEAK_RATE:
        raise SystemExit(f"espeak-ng wrote {rate} Hz, expected {ESPEAK_RATE} Hz")
    audio = resample_poly(audio, 320, 441)  # 22050 Hz -> 16000 Hz
    regions = active_regions(audio)
    a, b = int(round(regions[0][0] * RATE)), int(round(regions[-1][1] * RATE))
    audio = audio[a:b]
    return audio / (np.sqrt(np.mean(audio**2)) + 1e-12) * 0.1  # same loudness for every turn (-20 dBFS RMS)


def active_regions(audio: np.ndarray, floor_db: float = 40.0, bridge: float = 0.25, shortest: float = 0.05):
    """(start, end) seconds where the clean signal is sounding; gaps shorter than `bridge` are kept inside."""
    frames = np.lib.stride_tricks.sliding_window_view(audio, FRAME)[::HOP]
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    on = level > level.max() - floor_db
    regions, start = [], None
    for i, voiced in enumerate(np.append(on, False)):
        if voiced and start is None:
            start = i
        elif not voiced and start is not None:
            regions.append([start * HOP / RATE, min((i - 1) * HOP + FRAME, len(audio)) / RATE])
            start = None
    merged: list[list[float]] = []
    for region in regions:
        if merged and region[0] - merged[-1][1] < bridge:
            merged[-1][1] = region[1]
        else:
            merged.append(region)
    return [(a, b) for a, b in merged if b - a >= shortest]


def room_tone(rng: np.random.Generator, n: int) -> np.ndarray:
    """Faint pinkish noise (1/f power), at NOISE_DBFS RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.fft.rfftfreq(n, 1 / RATE), 50.0))
    noise = np.fft.irfft(spectrum, n)
    return noise / (np.std(noise) + 1e-12) * 10 ** (NOISE_DBFS / 20)


def build(script, seed: int) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """The mixed recording (float32, 16 kHz) and its reference turns (start, end, speaker)."""
    rng = np.random.default_rng(seed)
    placed, cursor, previous_end = [], 0.6, 0.0
    for speaker, text, overlap in script:
        audio = synthesize(text, VOICES[speaker]) * 10 ** (VOICES[speaker].gain_db / 20)
        pause = float(rng.uniform(0.3, 0.8))
        if not placed:
            start = cursor
        elif overlap > 0:
            start = previous_end - overlap
        else:
            start = previous_end + pause
        start = round(start * RATE) / RATE  # on the sample grid
        placed.append((start, speaker, audio))
        previous_end = max(previous_end, start + len(audio) / RATE)
    length = int(round((previous_end + 0.6) * RATE))
    mix = np.zeros(length)
    reference = []
    for start, speaker, audio in placed:
        a = int(round(start * RATE))
        mix[a : a + len(audio)] += audio
        for s, e in active_regions(audio):
            reference.append((round(start + s, 3), round(start + e, 3), speaker))
    mix *= PEAK / np.max(np.abs(mix))
    mix += room_tone(rng, length)
    return mix.astype("float32"), sorted(reference)


def rttm(uri: str, reference) -> str:
    return "".join(f"SPEAKER {uri} 1 {s:.3f} {e - s:.3f} <NA> <NA> {spk} <NA> <NA>\n" for s, e, spk in reference)


def encode_flac(mix: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, mix, RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def describe(uri: str, script, mix: np.ndarray, reference) -> str:
    turns = [e - s for s, e, _ in reference]
    overlap = 0.0
    for i, (s1, e1, k1) in enumerate(reference):
        for s2, e2, k2 in reference[i + 1 :]:
            if k1 != k2:
                overlap += max(0.0, min(e1, e2) - max(s1, s2))
    speakers = sorted({spk for _, _, spk in reference})
    return (
        f"{uri}: {len(mix) / RATE:.2f} s, speakers {' '.join(speakers)}, {len(script)} turns, {len(reference)} segments of "
        f"{min(turns):.2f}-{max(turns):.2f} s, speech {sum(turns):.1f} s, overlap {overlap:.2f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="pauses and noise; 0 gives the committed files")
    parser.add_argument("--out", type=Path, default=DEMO_DIR, help="where to write (default: this folder)")
    parser.add_argument("--check", action="store_true", help="rebuild and compare with the files in --out; write nothing")
    args = parser.parse_args()
    different = []
    for uri, script in RECORDINGS.items():
        mix, reference = build(script, args.seed)
        flac, text = encode_flac(mix), rttm(uri, reference)
        print(describe(uri, script, mix, reference))
        flac_path, rttm_path = args.out / f"{uri}.flac", args.out / f"{uri}.rttm"
        if args.check:
            for path, data in ((flac_path, flac), (rttm_path, text.encode())):
                if not path.exists() or path.read_bytes() != data:
                    different.append(path)
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            flac_path.write_bytes(flac)
            rttm_path.write_text(text)
    if args.check:
        for path in different:
            print(f"differs: {path}", file=sys.stderr)
        print("identical" if not different else "NOT identical (another espeak-ng version gives slightly different audio)")
        return 1 if different else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
