"""Second look at who said each turn: re-assign whole turns to the nearest speaker.

Clustering labels local speakers of 10 s windows; when the segmentation model lumps two voices
into one local speaker, a whole turn can land on the wrong speaker. Here each turn (a run of one
speaker's speech; runs closer than `join_gap` count as one turn) gets its own voice print, speakers
get centroids from those turn prints, and each turn moves to the speaker it is closest to. Dev set:
speaker confusion 4.4 -> 2.8 %.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from diarizer.clustering import l2_normalise
from diarizer.reconstruction import Turn, merge_same_speaker

EmbedSpans = Callable[[list[tuple[float, float]]], np.ndarray]  # (start, end) seconds -> (n, 192)
MAX_OVERLAP = 0.2  # turns overlapped by others for more than this fraction mix voices: left alone


def _overlapped(group: Turn, speakers: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> float:
    """Seconds of `group` during which another speaker talks too."""
    speaker, start, end = group
    shared = np.minimum(end, ends) - np.maximum(start, starts)
    return float(np.clip(shared, 0.0, None)[speakers != speaker].sum())


def reassign_turns(
    turns: list[Turn],
    embed_spans: EmbedSpans,
    join_gap: float,
    min_seconds: float,
    max_seconds: float,
) -> list[Turn]:
    """`turns` with every run of a re-assigned turn moved to its new speaker."""
    speakers = sorted({t[0] for t in turns})
    if len(speakers) < 2:
        return turns
    who, starts, ends = (np.array(column) for column in zip(*turns))
    groups = [
        g for g in merge_same_speaker(turns, join_gap)
        if g[2] - g[1] >= min_seconds and _overlapped(g, who, starts, ends) <= MAX_OVERLAP * (g[2] - g[1])
    ]
    if len(groups) < 2:
        return turns
    spans = []
    for _, start, end in groups:
        middle, half = (start + end) / 2, min(end - start, max_seconds) / 2
        spans.append((middle - half, middle + half))
    prints = l2_normalise(embed_spans(spans).astype(np.float64))
    labels = np.array([speakers.index(g[0]) for g in groups])
    centroids = l2_normalise(
        np.stack([prints[labels == k].mean(axis=0) if (labels == k).any() else np.zeros(prints.shape[1])
                  for k in range(len(speakers))])
    )
    best = (prints @ centroids.T).argmax(axis=1)
    moves = {(g[0], g[1], g[2]): speakers[b] for g, b in zip(groups, best) if speakers[b] != g[0]}
    if not moves:
        return turns
    out = []
    for speaker, start, end in turns:
        target = next(
            (new for (old, a, b), new in moves.items() if old == speaker and a - 1e-6 <= start and end <= b + 1e-6),
            speaker,
        )
        out.append((target, start, end))
    return out
