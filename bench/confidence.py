#!/usr/bin/env python3
"""Confidence calibration on the evaluation suite: fitted on its tuning part, reported on its held-out part.

    python bench/suite.py build                              # once (needs ../shared/eval)
    python bench/confidence.py --cache .bench/cache          # evidence per segment (cached), fit, report

Every conversation of the suite (bench/suite.py: clean, noisy, 8 kHz, MP3, many speakers, one dominant
voice, short turns, monologues, long files, AMI) is diarized by today's engine, and every output segment
gets the confidence model's evidence (src/diarizer/confidence.py) and the share of its speech frames whose
speaker is right (hypothesis speakers mapped one-to-one to reference speakers by overlap). The logistic
model and its isotonic staircase are fitted on the tuning part, frame-weighted; the held-out part (other
speakers, other seeds, other AMI meetings) is reported first, in bins of 0.1, per condition as well.
The evidence is cached per part and engine configuration in .bench/confidence/, so a refit takes seconds.
"""
from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import AUDIO_SUFFIXES, REPO, cached_analysis, config_tag, reference_turns, scored_regions  # noqa: E402
from suite import SUITE, condition_names  # noqa: E402

from diarizer import DiarizationOptions  # noqa: E402
from diarizer import audio as audio_io  # noqa: E402
from diarizer.confidence import COEFFICIENTS, FEATURES, STEPS, probabilities, scores, segment_features  # noqa: E402
from diarizer.identify import speaker_prints  # noqa: E402
from diarizer.pipeline import Diarizer, PipelineConfig  # noqa: E402

FRAME = 0.01
# Numbers of steps of the isotonic map tried; the one with the lowest 2-fold cross-validated calibration
# error inside the tuning part is fitted (more steps copy the tuning data, fewer blur it).
STEP_CHOICES = (3, 4, 5, 6, 8, 10, 12, 16)


def evidence_for(engine: Diarizer, folder: Path, cache: Path | None) -> list[dict]:
    """Per file of `folder`: reference, output segments and each segment's evidence."""
    refs, scored = reference_turns(folder / "reference.rttm"), scored_regions(folder / "reference.uem")
    files = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES):
        samples = audio_io.decode(path)
        result = engine.resolve(cached_analysis(engine, samples, path, cache), samples, DiarizationOptions())
        evidence = speaker_prints(samples, result.segments, engine._embed_many)
        files.append({
            "uri": path.stem, "duration": len(samples) / 16000, "reference": refs.get(path.stem, []),
            "uem": scored.get(path.stem), "segments": [(s.speaker_id, s.start, s.end) for s in result.segments],
            "features": segment_features(samples, result.segments, evidence, engine._embed_many),
        })
    return files


def frames(turns, n: int) -> dict[str, np.ndarray]:
    active: dict[str, np.ndarray] = {}
    for who, a, b in turns:
        active.setdefault(who, np.zeros(n, bool))[int(round(a / FRAME)) : int(round(b / FRAME))] = True
    return active


def segment_truth(files: list[dict], speech_only: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output segment: evidence, share of its frames whose speaker is right, number of frames.

    speech_only: count only the frames where someone speaks (confidence is about who, not whether: a pause
    inside a turn is nobody's); a segment with no speech at all is all wrong. Otherwise every frame counts.
    Frames outside a file's UEM are not scored."""
    feats, right, weight = [], [], []
    for f in files:
        n = int(np.ceil(f["duration"] / FRAME)) + 1
        ref, hyp = frames(f["reference"], n), frames(f["segments"], n)
        inside = np.ones(n, bool)
        if f.get("uem"):
            inside[:] = False
            for start, end in f["uem"]:
                inside[int(round(start / FRAME)) : int(round(end / FRAME))] = True
        ref_ids, hyp_ids = sorted(ref), sorted(hyp)
        overlap = np.array([[float((hyp[h] & ref[r] & inside).sum()) for r in ref_ids] for h in hyp_ids])
        mapped = {}
        if overlap.size:
            for h, r in zip(*linear_sum_assignment(overlap.reshape(len(hyp_ids), -1), maximize=True)):
                mapped[hyp_ids[h]] = ref_ids[r]
        anyone = np.zeros(n, bool)
        for active in ref.values():
            anyone |= active
        for (sid, a, b), x in zip(f["segments"], f["features"]):
            sl = slice(int(round(a / FRAME)), int(round(b / FRAME)))
            scored = inside[sl]
            if not scored.any():
                continue
            good = (ref[mapped[sid]][sl] & scored).sum() if sid in mapped else 0
            counted = (anyone[sl] & scored).sum() if speech_only else scored.sum()
            feats.append(x)
            right.append(good / counted if counted else 0.0)
            weight.append(counted if counted else scored.sum())
    width = next((len(f["features"][0]) for f in files if len(f["features"])), len(FEATURES))
    return np.array(feats).reshape(-1, width), np.array(right), np.array(weight, float)


def fit_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float = 1e-3, steps: int = 50) -> np.ndarray:
    """Frame-weighted logistic regression on soft targets (Newton's method)."""
    beta = np.zeros(x.shape[1])
    w = w / w.sum()
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ beta)))
        grad = x.T @ (w * (p - y)) + l2 * beta
        hess = (x * (w * p * (1 - p))[:, None]).T @ x + l2 * np.eye(len(beta))
        beta -= np.linalg.solve(hess, grad)
    return beta


def isotonic_steps(p: np.ndarray, y: np.ndarray, w: np.ndarray, max_steps: int) -> list[tuple[float, float]]:
    """A monotone staircase from score to share right: [(lowest score of the step, value), ...], ascending.

    Pool-adjacent-violators on (score, share right, frames) gives the isotonic fit as blocks of segments.
    Too many small blocks would copy the tuning data, so adjacent blocks are merged, cheapest first, where
    the cost is the squared error the merge adds (w1 w2 / (w1 + w2) (v1 - v2)^2): a light block or one whose
    value is close to its neighbour's goes first, a heavy block of wrong turns stays apart. Each step then
    starts halfway between its block's lowest score and the previous block's highest. A staircase and not a
    line through the blocks' mean scores: such a line gives the scores of a wide block values of its
    neighbours (fitted on the tuning part, its 0.6-0.7 bin held 39 % right)."""
    blocks: list[list[float]] = []  # [weight, weighted value sum, lowest score, highest score]
    for i in np.argsort(p, kind="stable"):
        blocks.append([w[i], w[i] * y[i], p[i], p[i]])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][0] >= blocks[-1][1] / blocks[-1][0]:
            last = blocks.pop()
            blocks[-1] = [blocks[-1][0] + last[0], blocks[-1][1] + last[1], blocks[-1][2], last[3]]

    def cost(a: list[float], b: list[float]) -> float:
        return a[0] * b[0] / (a[0] + b[0]) * (a[1] / a[0] - b[1] / b[0]) ** 2

    while len(blocks) > max_steps:
        k = min(range(len(blocks) - 1), key=lambda j: cost(blocks[j], blocks[j + 1]))
        a, b = blocks[k], blocks.pop(k + 1)
        blocks[k] = [a[0] + b[0], a[1] + b[1], a[2], b[3]]
    starts = [0.0] + [(before[3] + after[2]) / 2 for before, after in zip(blocks, blocks[1:])]
    return [(start, b[1] / b[0]) for start, b in zip(starts, blocks)]


def reliability(p: np.ndarray, right: np.ndarray, weight: np.ndarray) -> list[tuple]:
    """(bin, segments, speech seconds, share of frames right, mean confidence) per 0.1 bin."""
    rows = []
    for lo in np.arange(0.0, 1.0, 0.1):
        hi = lo + 0.1
        inside = (p >= lo) & ((p < hi) if hi < 1.0 - 1e-9 else (p <= 1.0))
        if inside.any():
            rows.append((f"{lo:.1f}-{hi:.1f}", int(inside.sum()), weight[inside].sum() * FRAME,
                         (right[inside] * weight[inside]).sum() / weight[inside].sum(), float(p[inside].mean())))
    return rows


def worst_bin_gap(p: np.ndarray, right: np.ndarray, weight: np.ndarray) -> float:
    """Largest distance, in points, between a bin's share right and the bin itself (0 inside the bin)."""
    gaps = []
    for label, _, _, share, _ in reliability(p, right, weight):
        lo, hi = (float(v) for v in label.split("-"))
        gaps.append(100 * max(lo - share, share - hi, 0.0))
    return max(gaps, default=0.0)


def expected_calibration_error(p: np.ndarray, right: np.ndarray, weight: np.ndarray) -> float:
    """Frame-weighted mean distance between each 0.1 bin's share right and its mean confidence."""
    bins = np.minimum((p * 10).astype(int), 9)
    total = 0.0
    for b in np.unique(bins):
        inside = bins == b
        share = (right[inside] * weight[inside]).sum() / weight[inside].sum()
        total += abs(share - (p[inside] * weight[inside]).sum() / weight[inside].sum()) * weight[inside].sum()
    return total / weight.sum()


def choose_steps(files: list[dict]) -> tuple[int, list[str]]:
    """The number of steps with the lowest calibration error (then worst-bin miss), fitting on alternate files
    of the tuning part and scoring on the others, both ways round. Calibration error first: a bin that holds a
    segment or two decides the worst-bin miss on its own."""
    halves = [segment_truth(files[0::2]), segment_truth(files[1::2])]
    # The logistic model does not depend on the number of steps: one fit per training half.
    rounds = []
    for (x, y, w), test in ((halves[0], halves[1]), (halves[1], halves[0])):
        beta = fit_logistic(x, y, w)
        rounds.append((beta, scores(x, beta), y, w, test))
    results, lines = [], []
    for steps in STEP_CHOICES:
        gaps, errors = [], []
        for beta, raw, y, w, (x_test, y_test, w_test) in rounds:
            p = probabilities(x_test, beta, isotonic_steps(raw, y, w, steps))
            gaps.append(worst_bin_gap(p, y_test, w_test))
            errors.append(expected_calibration_error(p, y_test, w_test))
        results.append((round(float(np.mean(errors)), 4), float(np.mean(gaps)), steps))
        lines.append(f"| {steps} | {100 * np.mean(errors):.2f} % | {gaps[0]:.1f} / {gaps[1]:.1f} |")
    return min(results)[2], lines


def table(p: np.ndarray, right: np.ndarray, weight: np.ndarray, strict: np.ndarray) -> str:
    lines = ["| confidence | segments | speech seconds | speech frames right | all frames right | mean confidence |",
             "| --- | --- | --- | --- | --- | --- |"]
    strict_share = {row[0]: row[3] for row in reliability(p, strict, weight)}
    for label, n, seconds, share, mean in reliability(p, right, weight):
        lines.append(f"| {label} | {n} | {seconds:.0f} | {100 * share:.1f} % | {100 * strict_share[label]:.1f} % | {mean:.3f} |")
    high = p >= 0.9
    if high.any():
        lines.append(f"\nsegments >= 0.9: {int(high.sum())}, {100 * (right[high] * weight[high]).sum() / weight[high].sum():.1f} % "
                     "of their speech frames right")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help="cached analyses of bench/suite.py (same layout)")
    parser.add_argument("--root", type=Path, default=SUITE)
    parser.add_argument("--work", type=Path, default=REPO / ".bench" / "confidence")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    engine = None
    data: dict[str, dict[str, list[dict]]] = {}
    for part in ("tune", "held"):
        stored = args.work / f"{part}-{config_tag(PipelineConfig())}.pkl"  # evidence of this engine's own results
        data[part] = pickle.loads(stored.read_bytes()) if stored.is_file() else {}
        for name in condition_names(part, []):
            if name in data[part]:
                continue
            engine = engine or Diarizer()
            if args.cache:
                (args.cache / part).mkdir(parents=True, exist_ok=True)
            data[part][name] = evidence_for(engine, args.root / part / name, args.cache / part if args.cache else None)
            stored.write_bytes(pickle.dumps(data[part]))
            print(f"{part}/{name}: {len(data[part][name])} files", file=sys.stderr, flush=True)

    tuning = [f for name in sorted(data["tune"]) for f in data["tune"][name]]
    steps, lines = choose_steps(tuning)
    print("number of steps chosen by 2-fold cross-validation inside the tuning part (alternate files):\n")
    print("| steps at most | calibration error | worst bin off by (points), each fold |\n| --- | --- | --- |")
    print("\n".join(lines))
    x, y, w = segment_truth(tuning)
    beta = fit_logistic(x, y, w)
    staircase = isotonic_steps(scores(x, beta), y, w, steps)
    print(f"\nconfidence model fitted on the tuning part ({len(y)} segments, {w.sum() * FRAME / 3600:.1f} h of speech; "
          f"{steps} steps; {', '.join(FEATURES)}):")
    print("COEFFICIENTS = (" + ", ".join(f"{b:.4f}" for b in beta) + ")")
    print("STEPS = (" + ", ".join(f"({a:.4f}, {b:.4f})" for a, b in staircase) + ")")
    shipped = (np.allclose(beta, COEFFICIENTS, atol=1e-3) and len(staircase) == len(STEPS)
               and np.allclose(staircase, STEPS, atol=1e-3))
    print("the shipped model is this one" if shipped else "NOTE: the shipped model differs (paste the lines above "
          "into src/diarizer/confidence.py)")

    for part in ("held", "tune"):
        files = [f for fs in data[part].values() for f in fs]
        x, y, w = segment_truth(files)
        _, strict, _ = segment_truth(files, speech_only=False)
        p = probabilities(x)
        print(f"\n## {part} part, shipped model: all conditions (worst bin off by {worst_bin_gap(p, y, w):.1f} points, "
              f"calibration error {100 * expected_calibration_error(p, y, w):.2f} %)\n")
        print(table(p, y, w, strict))
        print("\n| condition | segments | speech h | frames right | mean confidence | worst bin off by (points) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name, fs in data[part].items():
            xc, yc, wc = segment_truth(fs)
            pc = probabilities(xc)
            print(f"| {name} | {len(yc)} | {wc.sum() * FRAME / 3600:.2f} | {100 * (yc * wc).sum() / wc.sum():.1f} % "
                  f"| {(pc * wc).sum() / wc.sum():.3f} | {worst_bin_gap(pc, yc, wc):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
