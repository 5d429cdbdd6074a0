"""Speaker embeddings with CAM++ (ONNX), run as a trunk and a head.

CAM++ = trunk (fbank -> frame-level features, 512 channels at 20 ms) + statistics pooling (mean and
standard deviation over frames) + head (a dense layer -> 192-d voice print). The model ships split
at the pooling (see models/README.md). A whole-clip print feeds the fbank of just the speech to describe,
mean-normalised, through the trunk and pools all its frames: exactly the original network
(`Embedder.embed_frames`, `embed_window`; the pipeline's close calls, enrolment, `shared_trunk=False`). The split
also lets one trunk run serve several prints, each pooling its own frames (shared_trunk.py, the default).

Frames are selected, never zero-padded: digital silence shifts CAM++ embeddings noticeably.
"""
from __future__ import annotations

import numpy as np

from diarizer import features
from diarizer.segmentation import FRAME_DURATION, FRAME_STEP, SAMPLE_RATE

EMBEDDING_DIM = 192
TRUNK_CHANNELS = 512
_SINGLE_FRAME_STD = 1e-2  # what CAM++'s StatsPool uses as the deviation of a single frame


def fbank_to_segmentation_frames(num_fbank_frames: int, num_seg_frames: int) -> np.ndarray:
    """Index of the segmentation frame whose centre is nearest to each fbank frame's centre."""
    fbank_centre = (np.arange(num_fbank_frames) * features.FRAME_SHIFT + features.FRAME_LENGTH / 2) / SAMPLE_RATE
    seg = np.round((fbank_centre - FRAME_DURATION / 2) / FRAME_STEP).astype(int)
    return np.clip(seg, 0, max(num_seg_frames - 1, 0))


def longest_stretches(mask: np.ndarray, budget: int) -> np.ndarray:
    """Keep the longest runs of True in `mask` (in time order) until `budget` frames are used."""
    if mask.sum() <= budget:
        return mask
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    keep = np.zeros_like(mask)
    left = budget
    for i in np.argsort(starts - ends, kind="stable"):  # longest first
        take = min(ends[i] - starts[i], left)
        keep[starts[i] : starts[i] + take] = True
        left -= take
        if left == 0:
            break
    return keep


def choose_frames(per_frame: np.ndarray, min_frames: int, clean_min_frames: int, max_frames: int) -> list:
    """Per local speaker, the frames its voice print uses (or None when too few).

    per_frame: (frames, speakers) 0/1 activity. Frames where the speaker talks alone are preferred
    (overlap blurs voice prints) when there are at least `clean_min_frames` of them.
    """
    alone = per_frame.sum(axis=1) == 1
    out = []
    for k in range(per_frame.shape[1]):
        active = per_frame[:, k] > 0
        clean = active & alone
        chosen = clean if clean.sum() >= clean_min_frames else active
        out.append(longest_stretches(chosen, max_frames) if chosen.sum() >= min_frames else None)
    return out


def stats_pool(frames: np.ndarray) -> np.ndarray:
    """(frames, channels) -> (2 * channels,) mean and unbiased standard deviation, as CAM++ pools."""
    frames = np.asarray(frames, np.float32)
    mean = frames.mean(axis=0)
    if len(frames) > 1:
        std = frames.std(axis=0, ddof=1)
    else:
        std = np.full_like(mean, _SINGLE_FRAME_STD)
    return np.concatenate([mean, std])


class Embedder:
    def __init__(self, trunk, head, min_frames: int = 50, clean_min_frames: int = 100, max_frames: int = 500):
        """trunk, head: onnxruntime sessions of the two CAM++ halves.
        min_frames: fewer speech frames (x10 ms) than this give no embedding at all.
        clean_min_frames: use overlap-free frames only when there are at least this many.
        max_frames: longer selections keep their longest stretches only (CAM++ costs per frame,
        and a voice print gains little beyond a few seconds).
        """
        self.trunk = trunk
        self.head = head
        self.trunk_input = trunk.get_inputs()[0].name
        self.head_input = head.get_inputs()[0].name
        self.min_frames = min_frames
        self.clean_min_frames = clean_min_frames
        self.max_frames = max_frames

    def frames(self, feats: np.ndarray) -> np.ndarray:
        """(fbank frames, 80) -> (ceil(frames / 2), 512) trunk features, after mean normalisation."""
        feats = feats - feats.mean(axis=0, keepdims=True)
        return self.trunk.run(None, {self.trunk_input: feats[None].astype(np.float32)})[0][0].T

    def from_stats(self, stats: np.ndarray) -> np.ndarray:
        """(n, 1024) pooled statistics -> (n, 192) embeddings."""
        if not len(stats):
            return np.zeros((0, EMBEDDING_DIM), np.float32)
        return self.head.run(None, {self.head_input: np.asarray(stats, np.float32)})[0]

    def embed_frames(self, feats: np.ndarray) -> np.ndarray:
        """(frames, 80) fbank -> (192,) embedding of the whole clip (the original network)."""
        return self.from_stats(stats_pool(self.frames(feats))[None])[0]

    def embed_window(self, audio: np.ndarray, activity: np.ndarray,
                     only: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Whole-clip embeddings of the local speakers of one window.

        audio: (samples,) the window; activity: (seg_frames, speakers) 0/1; only: (speakers,) bool, the
        speakers to embed (default all; the others come back as NaN rows).
        Returns ((speakers, 192) with NaN rows for speakers with too little speech,
        (speakers,) seconds of speech each embedding was computed from).
        """
        speakers = activity.shape[1]
        out = np.full((speakers, EMBEDDING_DIM), np.nan, np.float32)
        seconds = np.zeros(speakers, np.float32)
        if not activity.any():
            return out, seconds
        feats = features.fbank(audio)
        if not len(feats):
            return out, seconds
        per_frame = activity[fbank_to_segmentation_frames(len(feats), len(activity))]  # (fbank frames, spk)
        for k, chosen in enumerate(choose_frames(per_frame, self.min_frames, self.clean_min_frames, self.max_frames)):
            if chosen is not None and (only is None or only[k]):
                out[k] = self.embed_frames(feats[chosen])
                seconds[k] = chosen.sum() * features.FRAME_SHIFT / SAMPLE_RATE
        return out, seconds
