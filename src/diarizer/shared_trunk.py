"""Shared voice prints (the default, `PipelineConfig(shared_trunk=True)`): CAM++'s trunk runs once per
stretch of one voice, and every window print and turn print that covers it pools from that run.

Windows overlap by half and turns are re-checked after clustering, so whole-clip prints (`shared_trunk=False`)
run most speech through CAM++ two to three times. Here:

- the recording is cut at every window edge into intervals (5 s with the default step), each heard by
  the same windows from start to end;
- inside an interval, local speakers of different windows active at nearly the same frames
  (intersection over union > LINK_IOU) are one *voice*; the trunk runs once over the frames where that
  voice talks (selected, never zero-padded, mean-normalised as one clip, as a whole-clip print is fed);
- a window's print pools, in each of its intervals, the trunk frames of its own chosen frames from its
  voice there; a turn piece's print pools, per interval, the frames of the voice that covers most of it.
  Pooling and the head are the rest of CAM++ (embedding.stats_pool, Embedder.from_stats).

About half the CPU of whole-clip prints, and prints at median cosine 0.98-0.99 to them. But a window print is then
made of two 5 s runs instead of one 10 s run, and where a print decides between two speakers that difference
cost DER on the evaluation suite; so the pipeline makes the close calls again through the whole network
(`PipelineConfig.reprint_margin`), which keeps about 0.57x the time (BENCHMARKS.md, "Shared voice prints").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from diarizer import features
from diarizer.embedding import TRUNK_CHANNELS, Embedder, choose_frames, fbank_to_segmentation_frames, stats_pool
from diarizer.segmentation import SAMPLE_RATE, hard_activity

# Local speakers of two windows sharing more of their frames than this are one voice. Tuning part, five
# conditions: 0.8 the same as or better than 0.5 in each (noisy 12.3 against 14.9 % DER: a loose link lets
# a window that runs two voices together put both into its neighbour's clean run); no linking at all is
# within 0.4 points either way and runs more audio.
LINK_IOU = 0.8


@dataclass
class Voice:
    """One voice in one interval: where it talks and what the trunk made of it."""

    frames: np.ndarray  # global fbank frame indices (10 ms), sorted
    rows: np.ndarray | None = None  # (ceil(len(frames) / 2), 512) float16 trunk output for those frames

    def rows_for(self, wanted: np.ndarray) -> np.ndarray:
        """Trunk rows covering `wanted` (a sorted subset of `frames`): the trunk keeps every other frame."""
        return self.rows[np.unique(np.searchsorted(self.frames, wanted) // 2)]


@dataclass
class SharedTrunk:
    bounds: np.ndarray  # (intervals + 1,) fbank-frame edges of the intervals
    voices: list[list[Voice]] = field(default_factory=list)  # per interval
    member: dict[tuple[int, int, int], int] = field(default_factory=dict)  # (interval, window, local) -> voice

    def interval_range(self, first: int, end: int) -> range:
        """Intervals overlapping fbank frames [first, end)."""
        last = len(self.bounds) - 1
        return range(max(0, int(np.searchsorted(self.bounds, first, "right")) - 1),
                     min(last, int(np.searchsorted(self.bounds, end, "left"))))

    def pooled(self, window: int, local: int, chosen: np.ndarray) -> np.ndarray:
        """(1024,) statistics of one window speaker's chosen frames (global fbank indices, sorted)."""
        rows = []
        for j in self.interval_range(chosen[0], chosen[-1] + 1):
            inside = chosen[(chosen >= self.bounds[j]) & (chosen < self.bounds[j + 1])]
            if len(inside):
                rows.append(self.voices[j][self.member[(j, window, local)]].rows_for(inside))
        return stats_pool(np.concatenate(rows))

    def span_stats(self, start_s: float, end_s: float) -> np.ndarray | None:
        """(1024,) statistics of a time span: per interval, the voice talking most in it; None if none."""
        first, end = _first_frame_centred_at_or_after(start_s), _first_frame_centred_at_or_after(end_s)
        rows = []
        for j in self.interval_range(first, end):
            best = None
            for voice in self.voices[j]:
                inside = voice.frames[np.searchsorted(voice.frames, first) : np.searchsorted(voice.frames, end)]
                if len(inside) and (best is None or len(inside) > len(best[1])):
                    best = (voice, inside)
            if best is not None:
                rows.append(best[0].rows_for(best[1]))
        return stats_pool(np.concatenate(rows)) if rows else None


def _first_frame_centred_at_or_after(seconds: float) -> int:
    """Index of the first fbank frame whose 25 ms window is centred at or after `seconds`."""
    return int(np.ceil((seconds * SAMPLE_RATE - features.FRAME_LENGTH / 2) / features.FRAME_SHIFT))


def window_frames(starts: np.ndarray, window_samples: int, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Global fbank frame of each window's first frame, and how many 10 ms frames each window spans
    (its last 25 ms frames, cut by snip_edges, go with it, so that windows every 5 s meet exactly)."""
    total = features.num_frames(num_samples)
    offsets = np.round(np.asarray(starts) / features.FRAME_SHIFT).astype(int)
    return offsets, np.minimum(int(np.ceil(window_samples / features.FRAME_SHIFT)), total - offsets)


def plan(starts: np.ndarray, probs: np.ndarray, window_samples: int, num_samples: int) -> SharedTrunk:
    """Intervals and voices (no trunk rows yet) from the windows' local segmentation."""
    offsets, lengths = window_frames(starts, window_samples, num_samples)
    bounds = np.unique(np.concatenate([[0, features.num_frames(num_samples)], offsets, offsets + lengths]))
    activity = [hard_activity(p)[fbank_to_segmentation_frames(n, len(p))] > 0 for p, n in zip(probs, lengths)]
    trunk = SharedTrunk(bounds)
    for j, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        nodes, masks = [], []  # (interval, window, local), its active frames in the interval
        for w in np.flatnonzero((offsets <= a) & (offsets + lengths >= b)):
            for k in np.flatnonzero(activity[w][a - offsets[w] : b - offsets[w]].any(axis=0)):
                nodes.append((j, int(w), int(k)))
                masks.append(activity[w][a - offsets[w] : b - offsets[w], k])
        group = _link(nodes, masks)
        voices = []
        for g in sorted(set(group)):
            union = np.logical_or.reduce([m for m, h in zip(masks, group) if h == g])
            trunk.member.update({n: len(voices) for n, h in zip(nodes, group) if h == g})
            voices.append(Voice(a + np.flatnonzero(union)))
        trunk.voices.append(voices)
    return trunk


def _link(nodes: list[tuple[int, int, int]], masks: list[np.ndarray]) -> list[int]:
    """Group index per node: nodes of different windows with IoU > LINK_IOU are joined (union-find)."""
    parent = list(range(len(nodes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for p in range(len(nodes)):
        for q in range(p + 1, len(nodes)):
            if nodes[p][1] != nodes[q][1]:
                both, either = (masks[p] & masks[q]).sum(), (masks[p] | masks[q]).sum()
                if both > LINK_IOU * either:
                    parent[root(p)] = root(q)
    return [root(i) for i in range(len(nodes))]


def run_interval(trunk: SharedTrunk, j: int, samples: np.ndarray, embedder: Embedder) -> None:
    """Fill the trunk rows of interval j's voices (one fbank of the interval, one trunk call per voice)."""
    if not trunk.voices[j]:
        return
    a, b = trunk.bounds[j], trunk.bounds[j + 1]
    feats = features.fbank(samples[a * features.FRAME_SHIFT : (b - 1) * features.FRAME_SHIFT + features.FRAME_LENGTH])
    for voice in trunk.voices[j]:
        voice.rows = embedder.frames(feats[voice.frames - a]).astype(np.float16)


def window_prints(
    trunk: SharedTrunk, starts: np.ndarray, probs: np.ndarray, window_samples: int, num_samples: int, embedder: Embedder,
    for_each: Callable[[int, Callable[[int], None]], None] | None = None,
) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """Pooled statistics of every window speaker with enough speech: ((window, local) list,
    (n, 1024) statistics, (n,) seconds), the frames chosen as `Embedder.embed_window` chooses them.

    for_each(count, task) runs task(w) for every window, by default one after another; the pipeline
    shares them out among its threads (numpy releases the GIL for the float16 -> float32 conversions that
    are most of this: 2.9 s of a 60-minute file on one core)."""
    offsets, lengths = window_frames(starts, window_samples, num_samples)
    per_window: list[list[tuple[int, np.ndarray, float]]] = [[] for _ in range(len(probs))]

    def one(w: int) -> None:
        p, first, n = probs[w], offsets[w], lengths[w]
        per_frame = hard_activity(p)[fbank_to_segmentation_frames(n, len(p))]
        for k, chosen in enumerate(choose_frames(per_frame, embedder.min_frames, embedder.clean_min_frames, embedder.max_frames)):
            if chosen is not None:
                per_window[w].append((k, trunk.pooled(w, k, first + np.flatnonzero(chosen)),
                                      chosen.sum() * features.FRAME_SHIFT / SAMPLE_RATE))

    if for_each is None:
        for w in range(len(probs)):
            one(w)
    else:
        for_each(len(probs), one)
    found = [(w, k) for w, prints in enumerate(per_window) for k, _, _ in prints]
    stats = [st for prints in per_window for _, st, _ in prints]
    seconds = [sec for prints in per_window for _, _, sec in prints]
    return found, np.array(stats, np.float32).reshape(-1, 2 * TRUNK_CHANNELS), np.array(seconds, np.float32)
