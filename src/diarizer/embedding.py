"""Speaker embeddings with CAM++ (ONNX), run as a trunk and a head.

CAM++ = trunk (fbank -> frame-level features, 512 channels at 20 ms) + statistics pooling (mean and
standard deviation over frames) + head (a dense layer -> 192-d voice print). The model ships split
at the pooling (see models/README.md), which allows two ways of making a voice print:

- whole clip: the fbank of just the speech to describe, mean-normalised, through the trunk, pooled
  over all its frames: exactly the original network (`Embedder.embed_frames`, `embed_window`);
- pooled: the trunk runs ONCE over long chunks of the recording (`trunk_chunks`), and each voice
  print pools only the trunk frames of its speaker in its window, or of its turn (`pool`,
  `window_selections`). Overlapping windows and turn re-checks then cost a mask and a dense layer
  instead of a pass through the network. The trunk then sees the surrounding speech (its
  convolutions and the CAM layers' context pooling), so the prints differ a little from whole-clip
  ones; BENCHMARKS.md gives the cosine and the DER.

Frames are selected, never zero-padded: digital silence shifts CAM++ embeddings noticeably.
"""
from __future__ import annotations

import numpy as np

from diarizer import features
from diarizer.segmentation import FRAME_DURATION, FRAME_STEP, SAMPLE_RATE

EMBEDDING_DIM = 192
TRUNK_CHANNELS = 512
TRUNK_HOP = 2 * features.FRAME_SHIFT  # the trunk's first TDNN layer has stride 2: one frame per 20 ms
_SINGLE_FRAME_STD = 1e-2  # what CAM++'s StatsPool uses as the deviation of a single frame


def fbank_to_segmentation_frames(num_fbank_frames: int, num_seg_frames: int) -> np.ndarray:
    """Index of the segmentation frame whose centre is nearest to each fbank frame's centre."""
    fbank_centre = (np.arange(num_fbank_frames) * features.FRAME_SHIFT + features.FRAME_LENGTH / 2) / SAMPLE_RATE
    return _nearest_segmentation_frame(fbank_centre, num_seg_frames)


def _nearest_segmentation_frame(seconds: np.ndarray, num_seg_frames: int) -> np.ndarray:
    seg = np.round((seconds - FRAME_DURATION / 2) / FRAME_STEP).astype(int)
    return np.clip(seg, 0, max(num_seg_frames - 1, 0))


def trunk_frame_centres(first: int, count: int) -> np.ndarray:
    """Sample at the centre of global trunk frames first .. first + count - 1.

    Global trunk frame g is the trunk's output for fbank frame 2g of a chunk starting at a multiple of
    TRUNK_HOP samples: its 25 ms window starts at sample g * TRUNK_HOP.
    """
    return (first + np.arange(count)) * TRUNK_HOP + features.FRAME_LENGTH / 2


def num_trunk_frames(num_samples: int) -> int:
    return (features.num_frames(num_samples) + 1) // 2


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


def trunk_chunks(num_samples: int, chunk_seconds: float, margin_seconds: float) -> list[tuple[int, int, int, int]]:
    """How to cover a recording's trunk frames with chunks of about `chunk_seconds`.

    Returns (input start sample, input end sample, first global trunk frame kept, frames kept) per
    chunk. Each chunk's input reaches `margin_seconds` into its neighbours so that the frames kept
    have context on both sides; inputs start on a TRUNK_HOP grid, so frame numbers are global.
    """
    total = num_trunk_frames(num_samples)
    if total == 0:
        return []
    per_chunk = max(1, int(round(chunk_seconds * SAMPLE_RATE / TRUNK_HOP)))
    count = max(1, int(round(total / per_chunk)))
    bounds = np.linspace(0, total, count + 1).round().astype(int)
    margin = int(round(margin_seconds * SAMPLE_RATE / TRUNK_HOP))
    out = []
    for first, end in zip(bounds[:-1], bounds[1:]):
        in_first = max(0, first - margin)
        in_end = min(total, end + margin)
        # The last kept frame's 25 ms window must fit: frame g spans samples [g * hop, g * hop + 400).
        stop = min(num_samples, (in_end - 1) * TRUNK_HOP + features.FRAME_LENGTH)
        out.append((in_first * TRUNK_HOP, stop, int(first), int(end - first)))
    return out


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

    def embed_window(self, audio: np.ndarray, activity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whole-clip embeddings of the local speakers of one window.

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
        for k, chosen in enumerate(choose_frames(per_frame, self.min_frames, self.clean_min_frames, self.max_frames)):
            if chosen is not None:
                out[k] = self.embed_frames(feats[chosen])
                seconds[k] = chosen.sum() * features.FRAME_SHIFT / SAMPLE_RATE
        return out, seconds

    def window_stats(
        self, trunk: np.ndarray, start: int, length: int, activity: np.ndarray, guard: int = 0
    ) -> list[tuple[int, np.ndarray, float]]:
        """Pooled statistics of the local speakers of one window, from the recording's trunk frames.

        trunk: (global trunk frames, 512); start, length: the window in samples; activity:
        (seg_frames, speakers) 0/1; guard: trunk frames next to another speaker's speech left out (the
        trunk's receptive field reaches into it) when enough frames remain. Returns (local speaker,
        (1024,) statistics, seconds) for every speaker with enough speech; the same frame choice as
        `embed_window`, at 20 ms.
        """
        if not activity.any():
            return []
        first, end = _frames_centred_in(start, start + length, len(trunk))
        count = end - first
        if count <= 0:
            return []
        centres = trunk_frame_centres(first, count)
        per_frame = activity[_nearest_segmentation_frame((centres - start) / SAMPLE_RATE, len(activity))]
        choices = choose_frames(per_frame, -(-self.min_frames // 2), -(-self.clean_min_frames // 2), -(-self.max_frames // 2))
        out = []
        for k, chosen in enumerate(choices):
            if chosen is not None and guard:
                others = np.delete(per_frame, k, axis=1).any(axis=1).astype(np.float32)
                near = np.convolve(others, np.ones(2 * guard + 1, np.float32), mode="same") > 0
                if (chosen & ~near).sum() >= -(-self.min_frames // 2):
                    chosen = chosen & ~near
            if chosen is not None:
                out.append((k, stats_pool(trunk[first : first + count][chosen]), chosen.sum() * TRUNK_HOP / SAMPLE_RATE))
        return out


def _frames_centred_in(start: float, end: float, total: int) -> tuple[int, int]:
    """[first, end) global trunk frames whose centre lies in samples [start, end)."""
    def first_at_or_after(sample: float) -> int:
        return min(total, max(0, int(np.ceil((sample - features.FRAME_LENGTH / 2) / TRUNK_HOP))))

    return first_at_or_after(start), first_at_or_after(end)


def span_stats(trunk: np.ndarray, start_s: float, end_s: float) -> np.ndarray | None:
    """Pooled statistics of the trunk frames centred in [start_s, end_s) seconds, None if none."""
    a, b = _frames_centred_in(start_s * SAMPLE_RATE, end_s * SAMPLE_RATE, len(trunk))
    return stats_pool(trunk[a:b]) if b > a else None
