"""Per-segment confidence: a calibrated probability that a segment's speaker is right.

Evidence per segment: its length, how much of it others overlap, how its own voice print compares with
its speaker's print and with the nearest other speaker's (the margin), and how much of the recording its
speaker holds (small speakers are more often a split or a mix of voices). A logistic model maps the evidence
to a score, and an isotonic (monotone) staircase turns the score into a probability; both were fitted,
frame-weighted, on the tuning part of the evaluation suite (every condition: clean, noisy, 8 kHz, MP3, many
speakers, one dominant voice, short turns, monologues, long files, AMI), so that "0.8" means about 80 % of such
segments' speech belongs to the speaker they name (bench/confidence.py; the held-out reliability table is in
BENCHMARKS.md). A staircase of a few steps, not a smooth curve: the evidence separates only a few levels of
trust, and each step's value is what the tuning data measured for its segments.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from diarizer.clustering import l2_normalise
from diarizer.identify import EmbedMany, SpeakerPrints
from diarizer.segmentation import SAMPLE_RATE
from diarizer.types import Diarization, Segment

SEGMENT_PRINT_SECONDS = 3.0  # a segment's print uses at most this much of its middle
MIN_PRINT_SECONDS = 0.4  # shorter segments get no print: their evidence is length and overlap only
FEATURES = ("bias", "log_seconds", "overlapped", "own_similarity", "margin", "single_speaker", "no_print",
            "log_speaker_share")
# Fitted by bench/confidence.py on the evaluation suite's tuning part (see BENCHMARKS.md); order as FEATURES.
COEFFICIENTS = (0.1247, 0.2195, -0.6487, 1.8225, 3.7022, 0.2774, -0.0565, -0.0881)
# The isotonic map, same origin: (lowest logistic score of the step, probability), ascending. Empty: the score
# is the probability.
STEPS: tuple[tuple[float, float], ...] = (
    (0.0000, 0.2510), (0.4536, 0.4224), (0.7246, 0.6591), (0.8328, 0.7552), (0.8907, 0.8917), (0.9455, 0.9624),
    (0.9584, 0.9812), (0.9766, 0.9927),
)
# Never 0 or 1: the tuning data were finite, a probability of certainty would claim more than they show.
FLOOR, CEILING = 0.01, 0.99


def _overlapped_share(i: int, segments: Sequence[Segment]) -> float:
    me = segments[i]
    length = max(me.end - me.start, 1e-9)
    spans = sorted((max(s.start, me.start), min(s.end, me.end)) for j, s in enumerate(segments)
                   if j != i and s.speaker_id != me.speaker_id and s.start < me.end and s.end > me.start)
    covered, reach = 0.0, me.start
    for a, b in spans:
        a = max(a, reach)
        if b > a:
            covered += b - a
            reach = b
    return covered / length


def segment_features(samples: np.ndarray, segments: Sequence[Segment], evidence: SpeakerPrints,
                     embed_many: EmbedMany) -> np.ndarray:
    """(segments, len(FEATURES)) evidence matrix."""
    features = np.zeros((len(segments), len(FEATURES)))
    if not segments:
        return features
    row_of = {speaker: i for i, speaker in enumerate(evidence.speaker_ids)}
    usable = np.linalg.norm(evidence.prints, axis=1) > 0.5
    embedded = [i for i, s in enumerate(segments) if s.end - s.start >= MIN_PRINT_SECONDS]
    clips = []
    for i in embedded:
        s = segments[i]
        middle, half = (s.start + s.end) / 2, min(s.end - s.start, SEGMENT_PRINT_SECONDS) / 2
        clips.append(np.asarray(samples[int((middle - half) * SAMPLE_RATE) : int((middle + half) * SAMPLE_RATE)]))
    prints = np.zeros((len(segments), evidence.prints.shape[1]))
    if clips:
        prints[embedded] = l2_normalise(embed_many(clips).astype(np.float64))
    similarity = prints @ evidence.prints.T  # (segments, speakers)
    single = int(usable.sum()) <= 1
    held: dict[str, float] = {}
    for s in segments:
        held[s.speaker_id] = held.get(s.speaker_id, 0.0) + s.end - s.start
    total = max(sum(held.values()), 1e-9)
    for i, s in enumerate(segments):
        own_row = row_of[s.speaker_id]
        has_print = i in embedded and usable[own_row]
        own = similarity[i, own_row] if has_print else 0.0
        others = [similarity[i, k] for k in range(len(usable)) if k != own_row and usable[k]]
        other = max(others) if others and has_print else 0.0
        features[i] = (1.0, np.log(max(s.end - s.start, 0.05)), _overlapped_share(i, segments), own,
                       own - other, float(single), float(not has_print), np.log(held[s.speaker_id] / total + 1e-3))
    return features


def scores(features: np.ndarray, coefficients: Sequence[float] = COEFFICIENTS) -> np.ndarray:
    """The logistic model's output, before the isotonic map."""
    return 1.0 / (1.0 + np.exp(-(features @ np.asarray(coefficients, np.float64))))


def probabilities(features: np.ndarray, coefficients: Sequence[float] = COEFFICIENTS,
                  steps: Sequence[tuple[float, float]] = STEPS) -> np.ndarray:
    raw = scores(features, coefficients)
    if not steps:
        return raw
    starts, values = np.asarray(steps, np.float64).T
    return np.clip(values[np.maximum(np.searchsorted(starts, raw, side="right") - 1, 0)], FLOOR, CEILING)


def with_confidence(samples: np.ndarray, result: Diarization, evidence: SpeakerPrints,
                    embed_many: EmbedMany) -> Diarization:
    features = segment_features(samples, result.segments, evidence, embed_many)
    confidence = probabilities(features)
    segments = [replace(s, confidence=float(c)) for s, c in zip(result.segments, confidence)]
    return replace(result, segments=segments)
