"""Identification: put enrolled names on diarized speakers, and a calibrated confidence on every turn.

Runs after diarization, only when asked. Each speaker gets one voice print from the speech where it
talks alone (clips of at most 10 s, CAM++ through the pipeline's own `embed_many`, averaged by length).
Speakers and voiceprints are paired by the Hungarian method on cosine similarity, so two speakers never
get one name; a pair below `MATCH_THRESHOLD` stays unnamed (open set: most voices heard were never
enrolled). The threshold was chosen on tuning speakers only (bench/identification.py, BENCHMARKS.md).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from diarizer.clustering import l2_normalise
from diarizer.embedding import EMBEDDING_DIM
from diarizer.segmentation import SAMPLE_RATE
from diarizer.types import Diarization, DiarizationOptions, InvalidOptionsError, Segment, SpeakerMatch, Voiceprint

EmbedMany = Callable[[list[np.ndarray]], np.ndarray]

# Cosine similarity a speaker needs with a voiceprint to be named. Chosen on tuning speakers only
# (bench/identification.py): the threshold that names the most enrolled speech while naming at most 0.5 % of
# never-enrolled speakers' speech. CAM++ prints of different people reach 0.6 often enough that lower
# thresholds name strangers (24 % of their speech at 0.55).
MATCH_THRESHOLD = 0.72
MIN_SPEAKER_SECONDS = 1.0  # less solo speech than this: too little to name anyone
CLIP_SECONDS = 10.0  # one CAM++ call per clip of at most this much speech
MAX_SPEAKER_SECONDS = 60.0  # a speaker's print uses at most this much of its solo speech
MIN_CLIP_SECONDS = 0.3


@dataclass(frozen=True)
class SpeakerPrints:
    """One unit-length voice print per diarized speaker (zero rows: too little solo speech)."""

    speaker_ids: list[str]
    prints: np.ndarray  # (speakers, 192)
    seconds: np.ndarray  # (speakers,) solo speech behind each print


def solo_spans(segments: Sequence[Segment]) -> list[tuple[str, float, float]]:
    """(speaker, start, end) stretches where exactly one speaker talks."""
    edges = sorted({t for s in segments for t in (s.start, s.end)})
    spans: list[tuple[str, float, float]] = []
    for a, b in zip(edges, edges[1:]):
        talking = {s.speaker_id for s in segments if s.start < b and s.end > a}
        if len(talking) == 1:
            speaker = talking.pop()
            if spans and spans[-1][0] == speaker and abs(spans[-1][2] - a) < 1e-9:
                spans[-1] = (speaker, spans[-1][1], b)
            else:
                spans.append((speaker, a, b))
    return spans


def clips_of(samples: np.ndarray, spans: Sequence[tuple[float, float]], budget: float) -> list[np.ndarray]:
    """Pieces of at most CLIP_SECONDS from `spans`, longest spans first, until `budget` seconds are used."""
    clips, left = [], budget
    for start, end in sorted(spans, key=lambda s: s[0] - s[1]):
        t = start
        while end - t >= MIN_CLIP_SECONDS and left >= MIN_CLIP_SECONDS:
            length = min(CLIP_SECONDS, end - t, left)
            clips.append(np.asarray(samples[int(t * SAMPLE_RATE) : int((t + length) * SAMPLE_RATE)]))
            t += length
            left -= length
    return clips


def mean_print(clips: list[np.ndarray], embed_many: EmbedMany) -> np.ndarray:
    """Length-weighted mean of the clips' unit-length prints, itself unit length (zeros: no clips)."""
    if not clips:
        return np.zeros(EMBEDDING_DIM)
    prints = l2_normalise(embed_many(clips).astype(np.float64))
    weights = np.array([len(c) for c in clips], np.float64)
    return l2_normalise((prints * weights[:, None]).sum(axis=0, keepdims=True))[0]


def speaker_prints(samples: np.ndarray, segments: Sequence[Segment], embed_many: EmbedMany) -> SpeakerPrints:
    ids = sorted({s.speaker_id for s in segments}, key=lambda i: (len(i), i))
    spans = solo_spans(segments)
    prints, seconds = [], []
    for speaker in ids:
        mine = [(a, b) for who, a, b in spans if who == speaker]
        solo = sum(b - a for a, b in mine)
        seconds.append(solo)
        clips = clips_of(samples, mine, MAX_SPEAKER_SECONDS) if solo >= MIN_SPEAKER_SECONDS else []
        prints.append(mean_print(clips, embed_many))
    # (0, D) when nobody talks: a silent recording still gets an answer (no names, no speakers).
    return SpeakerPrints(ids, np.array(prints).reshape(len(ids), EMBEDDING_DIM), np.array(seconds))


def voiceprint_matrix(voiceprints: Sequence[Voiceprint]) -> np.ndarray:
    if any(len(v.embedding) != EMBEDDING_DIM for v in voiceprints):
        raise InvalidOptionsError(f"a voiceprint's embedding must hold {EMBEDDING_DIM} numbers (one from "
                                  "Diarizer.enroll)")
    return l2_normalise(np.array([v.embedding for v in voiceprints], np.float64).reshape(len(voiceprints), EMBEDDING_DIM))


def match(scores: np.ndarray, usable: np.ndarray, threshold: float) -> list[int | None]:
    """Per speaker (rows of `scores`, cosine to each voiceprint), the voiceprint it is named after, or None.

    One-to-one (Hungarian, maximum total similarity), then open-set: a pair under `threshold` is dropped."""
    chosen: list[int | None] = [None] * scores.shape[0]
    if scores.size == 0:
        return chosen
    rows, cols = linear_sum_assignment(np.where(usable[:, None], scores, -1.0), maximize=True)
    for r, c in zip(rows, cols):
        if usable[r] and scores[r, c] >= threshold:
            chosen[r] = int(c)
    return chosen


def identify(samples: np.ndarray, result: Diarization, voiceprints: Sequence[Voiceprint], embed_many: EmbedMany,
             threshold: float = MATCH_THRESHOLD, evidence: SpeakerPrints | None = None) -> Diarization:
    """`result` with `speaker_name` on every segment and the `speakers` list."""
    evidence = evidence or speaker_prints(samples, result.segments, embed_many)
    usable = evidence.seconds >= MIN_SPEAKER_SECONDS
    scores = evidence.prints @ voiceprint_matrix(voiceprints).T if voiceprints else np.zeros((len(usable), 0))
    chosen = match(scores, usable, threshold)
    speakers = [
        SpeakerMatch(speaker, voiceprints[c].name if c is not None else None,
                     float(scores[i, c]) if c is not None else None)
        for i, (speaker, c) in enumerate(zip(evidence.speaker_ids, chosen))
    ]
    names = {s.speaker_id: s.name for s in speakers}
    segments = [replace(s, speaker_name=names.get(s.speaker_id)) for s in result.segments]
    return replace(result, segments=segments, speakers=speakers)


def annotate(samples: np.ndarray, result: Diarization, options: DiarizationOptions, embed_many: EmbedMany) -> Diarization:
    """The post-processing the options ask for: names (identify) and/or per-segment confidence."""
    from diarizer.confidence import with_confidence

    evidence = speaker_prints(samples, result.segments, embed_many)
    if options.identify:
        result = identify(samples, result, options.voiceprints, embed_many, evidence=evidence)
    if options.confidence:
        result = with_confidence(samples, result, evidence, embed_many)
    return result
