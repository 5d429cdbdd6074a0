"""Speaker embeddings with CAM++ (ONNX): one 192-d voice print per (window, local speaker).

The fbank of a window is computed once; each local speaker's embedding is taken from the frames
where that speaker talks, preferring frames where nobody else does (overlap blurs voice prints).
Frames are selected, never zero-padded: digital silence shifts CAM++ embeddings noticeably.
"""
from __future__ import annotations

import numpy as np

from diarizer import features
from diarizer.segmentation import FRAME_DURATION, FRAME_STEP, SAMPLE_RATE

EMBEDDING_DIM = 192


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


class Embedder:
    def __init__(self, session, min_frames: int = 50, clean_min_frames: int = 100, max_frames: int = 500):
        """min_frames: fewer speech frames (x10 ms) than this give no embedding at all.
        clean_min_frames: use overlap-free frames only when there are at least this many.
        max_frames: longer selections keep their longest stretches only (CAM++ costs per frame,
        and a voice print gains little beyond a few seconds).
        """
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.min_frames = min_frames
        self.clean_min_frames = clean_min_frames
        self.max_frames = max_frames

    def embed_frames(self, feats: np.ndarray) -> np.ndarray:
        """(frames, 80) fbank -> (192,) embedding, after per-segment mean normalisation."""
        feats = feats - feats.mean(axis=0, keepdims=True)
        return self.session.run(None, {self.input_name: feats[None].astype(np.float32)})[0][0]

    def embed_window(self, audio: np.ndarray, activity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of the local speakers of one window.

        audio: (samples,) the window; activity: (seg_frames, speakers) 0/1.
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
        alone = per_frame.sum(axis=1) == 1
        for k in range(speakers):
            active = per_frame[:, k] > 0
            clean = active & alone
            chosen = clean if clean.sum() >= self.clean_min_frames else active
            if chosen.sum() >= self.min_frames:
                chosen = longest_stretches(chosen, self.max_frames)
                out[k] = self.embed_frames(feats[chosen])
                seconds[k] = chosen.sum() * features.FRAME_SHIFT / SAMPLE_RATE
        return out, seconds
