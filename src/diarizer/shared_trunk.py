"""CAM++ trunk work done once per stretch of one voice, shared by every voice print that uses it.

Windows overlap by half and turns are re-checked after clustering, so running the whole network per
(window, local speaker) and again per turn piece embeds most speech two to three times. Here:

- the recording is cut at every window edge into intervals (5 s with the default step), each heard by
  the same windows from start to end;
- inside an interval, local speakers of different windows active at mostly the same frames
  (intersection over union > LINK_IOU) are one *voice*; the trunk runs once over the frames where that
  voice talks (selected, never zero-padded, mean-normalised as one clip, exactly as a whole-clip print
  feeds the network);
- a window's print pools, in each of its intervals, the trunk frames of its own chosen frames from the
  voice it belongs to; a turn piece's print pools, per interval, the frames of the voice that covers
  most of the piece. Pooling and the head are the rest of CAM++ (embedding.stats_pool, Embedder.from_stats).

Each trunk input holds one voice, as a whole-clip one does, so the prints stay close to whole-clip
prints (BENCHMARKS.md gives the cosine and the DER). Pooling over long chunks of the recording instead
(measured before) let the trunk hear the neighbouring speakers: median cosine 0.92 and lost counts.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from diarizer import features
from diarizer.embedding import Embedder, choose_frames, fbank_to_segmentation_frames, stats_pool
from diarizer.segmentation import SAMPLE_RATE, hard_activity

LINK_IOU = 0.5  # local speakers of two windows sharing more of their frames than this are one voice


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
    voices: list[list[Voice]]  # per interval
    member: dict[tuple[int, int, int], int] = field(default_factory=dict)  # (interval, window, local) -> voice

    def interval_range(self, first: int, end: int) -> range:
        """Intervals overlapping fbank frames [first, end)."""
        last = len(self.bounds) - 1
        return range(max(0, np.searchsorted(self.bounds, first, "right") - 1), min(last, np.searchsorted(self.bounds, end, "left")))

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
        first = int(np.ceil((start_s * SAMPLE_RATE - features.FRAME_LENGTH / 2) / features.FRAME_SHIFT))
        end = int(np.ceil((end_s * SAMPLE_RATE - features.FRAME_LENGTH / 2) / features.FRAME_SHIFT))
        rows = []
        for j in self.interval_range(first, end):
            best = None
            for voice in self.voices[j]:
                inside = voice.frames[(voice.frames >= first) & (voice.frames < end)]
                if len(inside) and (best is None or len(inside) > len(best[1])):
                    best = (voice, inside)
            if best is not None:
                rows.append(best[0].rows_for(best[1]))
        return stats_pool(np.concatenate(rows)) if rows else None


def window_frames(starts: np.ndarray, window_samples: int, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Global fbank frame of each window's first frame, and how many fbank frames each window has."""
    total = features.num_frames(num_samples)
    offsets = np.round(np.asarray(starts) / features.FRAME_SHIFT).astype(int)
    return offsets, np.minimum(features.num_frames(window_samples), total - offsets)


def interval_bounds(starts: np.ndarray, window_samples: int, num_samples: int) -> np.ndarray:
    """Fbank-frame edges of the intervals: every window's first and last frame cuts the recording."""
    offsets, lengths = window_frames(starts, window_samples, num_samples)
    return np.unique(np.concatenate([[0, features.num_frames(num_samples)], offsets, offsets + lengths]))


def plan(starts: np.ndarray, probs: np.ndarray, window_samples: int, num_samples: int) -> SharedTrunk:
    """Intervals and voices (no trunk rows yet) from the windows' local segmentation."""
    offsets, lengths = window_frames(starts, window_samples, num_samples)
    bounds = interval_bounds(starts, window_samples, num_samples)
    activity = [hard_activity(p)[fbank_to_segmentation_frames(n, len(p))] > 0 for p, n in zip(probs, lengths)]
    trunk = SharedTrunk(bounds, [])
    for j, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        nodes, masks = [], []
        for w in np.flatnonzero((offsets <= a) & (offsets + lengths >= b)):
            for k in np.flatnonzero(activity[w][a - offsets[w] : b - offsets[w]].any(axis=0)):
                nodes.append((j, int(w), int(k)))
                masks.append(activity[w][a - offsets[w] : b - offsets[w], k])
        group = _link(nodes, masks)
        voices = []
        for g in sorted(set(group)):
            union = np.logical_or.reduce([m for m, h in zip(masks, group) if h == g])
            voices.append(Voice(a + np.flatnonzero(union)))
            trunk.member.update({n: len(voices) - 1 for n, h in zip(nodes, group) if h == g})
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
    a, b = trunk.bounds[j], trunk.bounds[j + 1]
    if not trunk.voices[j]:
        return
    feats = features.fbank(samples[a * features.FRAME_SHIFT : (b - 1) * features.FRAME_SHIFT + features.FRAME_LENGTH])
    for voice in trunk.voices[j]:
        voice.rows = embedder.frames(feats[voice.frames - a]).astype(np.float16)


def window_prints(
    trunk: SharedTrunk, starts: np.ndarray, probs: np.ndarray, window_samples: int, num_samples: int, embedder: Embedder
) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """Pooled statistics of every window speaker with enough speech: ((window, local) list,
    (n, 1024) statistics, (n,) seconds), the frames chosen as `Embedder.embed_window` chooses them."""
    offsets, lengths = window_frames(starts, window_samples, num_samples)
    found, stats, seconds = [], [], []
    for w, (p, first, n) in enumerate(zip(probs, offsets, lengths)):
        per_frame = hard_activity(p)[fbank_to_segmentation_frames(n, len(p))]
        for k, chosen in enumerate(choose_frames(per_frame, embedder.min_frames, embedder.clean_min_frames, embedder.max_frames)):
            if chosen is not None:
                found.append((w, k))
                stats.append(trunk.pooled(w, k, first + np.flatnonzero(chosen)))
                seconds.append(chosen.sum() * features.FRAME_SHIFT / SAMPLE_RATE)
    return found, np.array(stats, np.float32).reshape(-1, 2 * 512), np.array(seconds, np.float32)
