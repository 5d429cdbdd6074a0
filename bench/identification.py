#!/usr/bin/env python3
"""Open-set speaker identification, on speakers never used for tuning.

    python bench/identification.py            # builds .bench/identification/ once, then scores

Data: ../shared/eval/pool/libri holds ONE utterance per speaker, so enrolment and test audio come from
disjoint parts of it: the first ENROL_SECONDS are the enrolment recording, the rest is the speaker's test
pool from which make_conversations.py builds conversations (1-4 speakers, noise, overlap). Speakers whose
utterance is shorter than MIN_UTTERANCE_SECONDS are left out. Speakers are split by sorted ID, alternating,
into a tuning half and a held-out half; within each half, alternate speakers are enrolled, the others are
never enrolled (open set). The match threshold is chosen on the tuning half only;
the held-out half is reported first. Nothing from ../shared is written into the repository (.bench/ is
ignored by git).

Scoring (10 ms frames, reference RTTM): for enrolled speakers, the share of their solo speech time where an
output segment carrying their name is active (strict: diarization misses count against it); for
non-enrolled speakers, the share of their solo speech time where any named output segment is active.
Confidence is calibrated on the evaluation suite instead: bench/confidence.py.
"""
from __future__ import annotations

import argparse
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SHARED_EVAL = REPO.parent / "shared" / "eval"
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from accuracy import config_tag, reference_turns  # noqa: E402
from confidence import FRAME, frames  # noqa: E402  (the same frame scoring as the calibration)
from diarizer import audio as audio_io  # noqa: E402
from diarizer.identify import MATCH_THRESHOLD, MIN_SPEAKER_SECONDS, match, solo_spans, speaker_prints, voiceprint_matrix  # noqa: E402
from diarizer.pipeline import Diarizer  # noqa: E402
from diarizer.types import EnrollmentError, Segment  # noqa: E402

ENROL_SECONDS = 8.0
MIN_UTTERANCE_SECONDS = 12.0
HALVES = {"tuning": 11, "held-out": 12}  # make_conversations seed per half
AMI_MIN_ENROL_SECONDS = 10.0  # the enrolment: 10-30 s from other utterances
AMI_MAX_ENROL_SECONDS = 30.0
FA_BUDGET = 0.005  # tuning: highest false naming rate allowed (half of the 1 % target, for margin)


def split_speakers(pool: Path) -> dict[str, list[Path]]:
    usable = []
    for folder in sorted(pool.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else p.name):
        files = sorted(folder.glob("*.flac"))
        if files and sf.info(files[0]).duration >= MIN_UTTERANCE_SECONDS:
            usable.append(files[0])
    return {"tuning": usable[0::2], "held-out": usable[1::2]}


def prepare(half: str, utterances: list[Path], root: Path, count: int) -> Path:
    """Enrolment clips + a test pool of the remainders + conversations built from that pool."""
    folder = root / half
    if (folder / "conversations" / "reference.rttm").is_file():
        return folder
    for utterance in utterances:
        audio, rate = sf.read(utterance, dtype="float32")
        cut = int(ENROL_SECONDS * rate)
        speaker = utterance.parent.name
        (folder / "enrol").mkdir(parents=True, exist_ok=True)
        (folder / "pool" / speaker).mkdir(parents=True, exist_ok=True)
        sf.write(folder / "enrol" / f"{speaker}.flac", audio[:cut], rate)
        sf.write(folder / "pool" / speaker / f"{speaker}-rest.flac", audio[cut:], rate)
    subprocess.run([sys.executable, str(SHARED_EVAL / "make_conversations.py"), "--pool", str(folder / "pool"),
                    "--out", str(folder / "conversations"), "--count", str(count), "--seed", str(HALVES[half]),
                    "--speakers", "1-4", "--minutes", "1-1.5", "--prefix", half.replace("-", "")],
                   check=True)
    return folder


def diarized(engine: Diarizer, path: Path, ref: list, voiceprints: list) -> dict:
    """One test recording diarized, with its speakers' match scores against `voiceprints`: what the
    threshold sweep needs."""
    samples = audio_io.decode(path)
    result = engine.diarize_samples(samples)
    evidence = speaker_prints(samples, result.segments, engine._embed_many)
    out = {
        "uri": path.stem, "duration": len(samples) / 16000, "reference": ref,
        "segments": [(s.speaker_id, s.start, s.end) for s in result.segments],
        "speaker_ids": evidence.speaker_ids, "usable": evidence.seconds >= MIN_SPEAKER_SECONDS,
        "scores": evidence.prints @ voiceprint_matrix(voiceprints).T,
    }
    return out


def analyse(engine: Diarizer, folder: Path, cache: Path) -> dict:
    """Everything the threshold sweep needs, computed once per half."""
    if cache.is_file():
        return pickle.loads(cache.read_bytes())
    enrolled, refused = {}, []
    speakers = sorted(p.stem for p in (folder / "enrol").glob("*.flac"))
    for speaker in speakers[0::2]:  # every other speaker of the half is enrolled
        try:
            enrolled[speaker] = engine.enroll(speaker, [folder / "enrol" / f"{speaker}.flac"])
        except EnrollmentError as exc:
            refused.append((speaker, exc.code))
    voiceprints = list(enrolled.values())
    refs = reference_turns(folder / "conversations" / "reference.rttm")
    files = []
    for uri, ref in sorted(refs.items()):
        files.append(diarized(engine, folder / "conversations" / f"{uri}.flac", ref, voiceprints))
        print(f"  {uri}: {len(ref and set(r[0] for r in ref))} speakers, {len(files[-1]['speaker_ids'])} found",
              file=sys.stderr)
    data = {"enrolled": [v.name for v in voiceprints], "all": speakers, "refused": refused, "files": files}
    cache.write_bytes(pickle.dumps(data))
    return data


def solo_stretches(turns) -> dict[str, list[tuple[float, float]]]:
    """Per speaker, the stretches of a reference (who, start, end) where that speaker talks alone."""
    out: dict[str, list] = {}
    for who, start, end in solo_spans([Segment(who, a, b) for who, a, b in turns]):
        out.setdefault(who, []).append((start, end))
    return out


def ami_across_excerpts(engine: Diarizer, work: Path) -> dict:
    """Real meetings, enrolment from other utterances than the test recording.

    AMI speakers recur across the excerpts of one meeting. A speaker with at least AMI_MIN_ENROL_SECONDS of
    solo speech in one excerpt is enrolled from up to AMI_MAX_ENROL_SECONDS of it (its solo stretches, cut
    from the excerpt by the reference, joined); every excerpt is then compared with every voiceprint that
    was not made from it (open set: the others in the room were never enrolled, or were enrolled from this
    very excerpt and so are left out of its comparison)."""
    cache = work / "ami" / f"diarized-{config_tag(engine.config)}.pkl"
    if cache.is_file():
        return pickle.loads(cache.read_bytes())
    folder = SHARED_EVAL / "ami"
    refs = reference_turns(folder / "reference.rttm")
    best: dict[str, tuple[str, list]] = {}
    for uri, turns in sorted(refs.items()):
        for who, pieces in solo_stretches(turns).items():
            if sum(b - a for a, b in pieces) > sum(b - a for a, b in best.get(who, ("", []))[1]):
                best[who] = (uri, pieces)
    (work / "ami" / "enrol").mkdir(parents=True, exist_ok=True)
    voiceprints, sources, refused = [], {}, []
    for who, (uri, pieces) in sorted(best.items()):
        if sum(b - a for a, b in pieces) < AMI_MIN_ENROL_SECONDS:
            continue
        samples = audio_io.decode(folder / f"{uri}.flac")
        clip = np.concatenate([samples[int(a * 16000) : int(b * 16000)] for a, b in sorted(pieces)])
        path = work / "ami" / "enrol" / f"{who}.flac"
        sf.write(path, clip[: int(AMI_MAX_ENROL_SECONDS * 16000)], 16000)
        try:
            voiceprints.append(engine.enroll(who, [path]))
            sources[who] = (uri, min(len(clip) / 16000, AMI_MAX_ENROL_SECONDS))
        except EnrollmentError as exc:
            refused.append((who, exc.code))
    files = []
    for uri, ref in sorted(refs.items()):
        compared = [v for v in voiceprints if sources[v.name][0] != uri]
        files.append({**diarized(engine, folder / f"{uri}.flac", ref, compared), "voiceprints": [v.name for v in compared]})
    data = {"enrolled": [v.name for v in voiceprints], "sources": sources, "refused": refused, "files": files}
    cache.write_bytes(pickle.dumps(data))
    return data


def ami_report(data: dict) -> None:
    print(f"\n## AMI, enrolment from other excerpts (threshold {MATCH_THRESHOLD})")
    print("enrolled: " + ", ".join(f"{who} ({uri}, {seconds:.0f} s)" for who, (uri, seconds) in sorted(data["sources"].items()))
          + (f"; refused: {data['refused']}" if data["refused"] else ""))
    print("\n| excerpt | enrolled voices heard (solo s) | named right | never-enrolled solo s | named as someone |")
    print("| --- | --- | --- | --- | --- |")
    for f in data["files"]:
        r = naming({"enrolled": data["enrolled"], "files": [f]}, MATCH_THRESHOLD)
        solo = {who: sum(b - a for a, b in pieces) for who, pieces in solo_stretches(f["reference"]).items()}
        heard = ", ".join(f"{who} ({solo[who]:.1f})" for who in sorted(solo) if who in f["voiceprints"]) or "none"
        right = f"{100 * r['correct']:.0f} %" if r["enrolled"] else "-"
        named = f"{100 * r['false_naming']:.0f} %" if r["others"] else "-"
        print(f"| {f['uri']} | {heard} | {right} | {r['others']:.1f} | {named} |")
    r = naming(data, MATCH_THRESHOLD)
    print(f"all excerpts: enrolled speakers' solo speech named correctly {100 * r['correct']:.1f} % of {r['enrolled']:.0f} s "
          f"({100 * r['correct_where_found']:.1f} % where the diarization found speech); never-enrolled speech named "
          f"{100 * r['false_naming']:.1f} % of {r['others']:.0f} s")


def naming(data: dict, threshold: float, collar: float = 0.0) -> dict:
    """Solo speech seconds of enrolled / non-enrolled speakers, and how much of it was (mis)named.

    collar: seconds on each side of every reference turn boundary left unscored (as the DER's collar):
    shows how much of what is missed are faint turn edges the reference's energy detector counts."""
    totals = {"enrolled": 0.0, "enrolled_named_right": 0.0, "enrolled_found": 0.0, "enrolled_found_right": 0.0,
              "others": 0.0, "others_named": 0.0}
    for f in data["files"]:
        n = int(np.ceil(f["duration"] / FRAME)) + 1
        ref = frames(f["reference"], n)
        count = sum(a.astype(int) for a in ref.values())
        edge = np.zeros(n, bool)
        for _, a, b in f["reference"]:
            for t in (a, b):
                edge[max(0, int(round((t - collar) / FRAME))) : int(round((t + collar) / FRAME))] = True
        compared = f.get("voiceprints", data["enrolled"])  # the voiceprints this file was compared with
        enrolled = set(compared)
        chosen = match(f["scores"], f["usable"], threshold)
        names = {sid: (compared[c] if c is not None else None) for sid, c in zip(f["speaker_ids"], chosen)}
        hyp_named: dict[str, np.ndarray] = {}
        any_named = np.zeros(n, bool)
        any_hyp = np.zeros(n, bool)
        for sid, a, b in f["segments"]:
            sl = slice(int(round(a / FRAME)), int(round(b / FRAME)))
            any_hyp[sl] = True
            if names.get(sid):
                hyp_named.setdefault(names[sid], np.zeros(n, bool))[sl] = True
                any_named[sl] = True
        for who, active in ref.items():
            solo = active & (count == 1) & ~edge
            if who in enrolled:
                right = solo & hyp_named.get(who, np.zeros(n, bool))
                totals["enrolled"] += solo.sum() * FRAME
                totals["enrolled_named_right"] += right.sum() * FRAME
                totals["enrolled_found"] += (solo & any_hyp).sum() * FRAME
                totals["enrolled_found_right"] += (right & any_hyp).sum() * FRAME
            else:
                totals["others"] += solo.sum() * FRAME
                totals["others_named"] += (solo & any_named).sum() * FRAME
    totals["correct"] = totals["enrolled_named_right"] / max(totals["enrolled"], 1e-9)
    totals["correct_where_found"] = totals["enrolled_found_right"] / max(totals["enrolled_found"], 1e-9)
    totals["false_naming"] = totals["others_named"] / max(totals["others"], 1e-9)
    return totals


def uncovered_loudness(data: dict, conversations: Path) -> dict:
    """How loud enrolled speakers' solo speech is where no output segment covers it, against where one does:
    each 10 ms frame's level (25 ms, mixture) above the recording's background (its 10th-percentile level).
    Speech near the background is what a speech detector cannot hear under the noise; the reference's energy
    detector, run on each clean source, still counts it."""
    covered, uncovered = [], []
    for f in data["files"]:
        samples, _ = sf.read(conversations / f"{f['uri']}.flac", dtype="float32")
        windows = np.lib.stride_tricks.sliding_window_view(samples, 400)[::160]
        level = 10 * np.log10(np.mean(windows.astype(np.float64) ** 2, axis=1) + 1e-12)
        above = level - np.percentile(level, 10)
        n = int(np.ceil(f["duration"] / FRAME)) + 1
        ref = frames(f["reference"], n)
        count = sum(a.astype(int) for a in ref.values())
        any_hyp = np.zeros(n, bool)
        for _, a, b in f["segments"]:
            any_hyp[int(round(a / FRAME)) : int(round(b / FRAME))] = True
        enrolled = set(f.get("voiceprints", data["enrolled"]))
        for who, active in ref.items():
            if who in enrolled:
                solo = np.flatnonzero(active & (count == 1))
                solo = solo[solo < len(above)]
                covered.append(above[solo[any_hyp[solo]]])
                uncovered.append(above[solo[~any_hyp[solo]]])
    return {"covered": np.concatenate(covered), "uncovered": np.concatenate(uncovered)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / ".bench" / "identification")
    parser.add_argument("--count", type=int, default=30, help="conversations per half")
    parser.add_argument("--ami-only", action="store_true", help="only the AMI section (enrolment from other excerpts)")
    args = parser.parse_args()
    if args.ami_only:
        ami_report(ami_across_excerpts(Diarizer(), args.work))
        return
    halves = split_speakers(SHARED_EVAL / "pool" / "libri")
    engine = Diarizer()
    data = {}
    for half in ("tuning", "held-out"):
        folder = prepare(half, halves[half], args.work, args.count)
        data[half] = analyse(engine, folder, folder / f"diarized-{config_tag(engine.config)}.pkl")
        print(f"{half}: {len(halves[half])} speakers, {len(data[half]['enrolled'])} enrolled, "
              f"refused at enrolment: {data[half]['refused']}, {len(data[half]['files'])} conversations, "
              f"{sum(f['duration'] for f in data[half]['files']) / 60:.1f} min")

    # Threshold: on the tuning half, the most enrolled speech named right with false naming under FA_BUDGET.
    grid = np.round(np.arange(0.20, 0.90, 0.01), 2)
    sweep = [(t, naming(data["tuning"], t)) for t in grid]
    allowed = [(t, r) for t, r in sweep if r["false_naming"] <= FA_BUDGET]
    threshold, _ = max(allowed, key=lambda tr: (round(tr[1]["correct"], 4), -tr[0]))
    print(f"\nthreshold chosen on tuning: {threshold:.2f} (shipped MATCH_THRESHOLD = {MATCH_THRESHOLD})")
    print("| threshold | tuning: enrolled named right | tuning: non-enrolled named |")
    print("| --- | --- | --- |")
    for t, r in sweep:
        if round(t * 100) % 5 == 0 or t == threshold:
            print(f"| {t:.2f} | {100 * r['correct']:.2f} % | {100 * r['false_naming']:.2f} % |")

    for half in ("held-out", "tuning"):
        r = naming(data[half], MATCH_THRESHOLD)
        print(f"\n## {half} (threshold {MATCH_THRESHOLD})")
        print(f"enrolled speakers' solo speech named correctly: {100 * r['correct']:.2f} % of {r['enrolled']:.0f} s "
              f"({100 * r['correct_where_found']:.2f} % where the diarization found speech)")
        print(f"non-enrolled speakers' solo speech named as someone: {100 * r['false_naming']:.2f} % of {r['others']:.0f} s")
        edges = naming(data[half], MATCH_THRESHOLD, collar=0.25)
        print(f"with 0.25 s either side of each reference turn boundary unscored (the DER's collar): enrolled "
              f"{100 * edges['correct']:.2f} % of {edges['enrolled']:.0f} s ({100 * edges['correct_where_found']:.2f} % "
              f"where found), non-enrolled {100 * edges['false_naming']:.2f} % of {edges['others']:.0f} s")
        loud = uncovered_loudness(data[half], args.work / half / "conversations")
        print(f"enrolled solo speech no segment covers: {len(loud['uncovered']) * FRAME:.0f} s, median "
              f"{np.median(loud['uncovered']):.1f} dB above the recording's background, "
              f"{100 * np.mean(loud['uncovered'] < 6):.0f} % within 6 dB of it (where covered: median "
              f"{np.median(loud['covered']):.1f} dB, {100 * np.mean(loud['covered'] < 6):.0f} % within 6 dB)")
    ami_report(ami_across_excerpts(engine, args.work))


if __name__ == "__main__":
    main()
