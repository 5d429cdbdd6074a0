"""The diarization pipeline: decode -> segment (windows) -> embed -> cluster -> reconstruct.

Each block is a separate module with explicit hyper-parameters, gathered in `PipelineConfig`
(tuned on development data, see BENCHMARKS.md). The pipeline keeps only small per-window results
(local activity, embeddings), so memory grows slowly with the audio length.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from diarizer import audio as audio_io
from diarizer.clustering import ClusteringConfig, assign_per_window, centroids_of, cluster
from diarizer.embedding import EMBEDDING_DIM, Embedder
from diarizer.models import locate_models, open_session
from diarizer.reconstruction import (
    aggregate,
    drop_short,
    label_by_first_appearance,
    merge_same_speaker,
    select_speakers,
    speaker_count,
    to_segments,
)
from diarizer.segmentation import (
    LOCAL_SPEAKERS,
    MIN_WINDOW_SAMPLES,
    POWERSET,
    SAMPLE_RATE,
    Segmenter,
    frames_in,
    hard_activity,
    window_starts,
)
from diarizer.types import Diarization, DiarizationOptions

Progress = Callable[[float], None]


@dataclass(frozen=True)
class PipelineConfig:
    step_seconds: float = 5.0  # hop between 10 s segmentation windows
    min_cluster_seconds: float = 1.0  # less speech than this: assigned to a speaker, never founds one
    min_embed_seconds: float = 0.2  # less speech than this: no voice print at all
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    onset: float = 0.5  # speech where P(anyone talks) reaches this
    overlap: float = 0.5  # two speakers where P(two talk) reaches this
    merge_gap: float = 0.5  # the `vad` option joins same-speaker turns closer than this
    min_segment: float = 0.0  # shorter output turns are dropped


@dataclass
class WindowResults:
    starts: np.ndarray
    probs: np.ndarray  # (windows, frames, 7) powerset class probabilities
    embeddings: np.ndarray  # (windows, local, 192), NaN where none
    seconds: np.ndarray  # (windows, local) speech behind each embedding


class Diarizer:
    """Loads the ONNX models once; `diarize` is then safe to call for many files (not concurrently)."""

    def __init__(
        self,
        model_dir: str | os.PathLike | None = None,
        config: PipelineConfig | None = None,
        threads: int | None = None,
    ):
        files = locate_models(model_dir)
        self.config = config or PipelineConfig()
        self.segmenter = Segmenter(open_session(files.segmentation, threads))
        self.embedder = Embedder(
            open_session(files.embedding, threads),
            min_frames=int(self.config.min_embed_seconds * 100),
        )

    def diarize(
        self,
        source: audio_io.AudioSource,
        options: DiarizationOptions | None = None,
        progress: Progress | None = None,
    ) -> Diarization:
        """Who spoke when in `source` (path, bytes or binary file). Raises AudioDecodeError."""
        return self.diarize_samples(audio_io.decode(source), options, progress)

    def diarize_samples(
        self, samples: np.ndarray, options: DiarizationOptions | None = None, progress: Progress | None = None
    ) -> Diarization:
        """Same as `diarize` for 16 kHz mono float32 samples."""
        duration = len(samples) / SAMPLE_RATE
        if len(samples) < MIN_WINDOW_SAMPLES:
            return Diarization([], duration)
        return self.resolve(self.analyse(samples, progress), duration, options)

    def analyse(self, samples: np.ndarray, progress: Progress | None = None) -> WindowResults:
        """The expensive, option-independent part: local segmentation and voice prints per window."""
        return self._segment_and_embed(samples, progress)

    def resolve(self, windows: WindowResults, duration: float, options: DiarizationOptions | None = None) -> Diarization:
        """The cheap part: cluster the voice prints and build the timeline for these options."""
        options = options or DiarizationOptions()
        window_labels = self._cluster(windows, options)
        num_speakers = int(window_labels.max()) + 1
        if num_speakers == 0:
            return Diarization([], duration)
        card, scores = aggregate(windows.starts, windows.probs, window_labels, num_speakers)
        count = speaker_count(card, self.config.onset, self.config.overlap)
        active = select_speakers(count, scores, options.exclusive)
        turns = to_segments(active, duration)
        if options.merge_adjacent:
            turns = merge_same_speaker(turns, self.config.merge_gap)
        turns = drop_short(turns, self.config.min_segment)
        return Diarization(label_by_first_appearance(turns), duration)

    def _segment_and_embed(self, samples: np.ndarray, progress: Progress | None) -> WindowResults:
        starts = window_starts(len(samples), self.config.step_seconds)
        frames = frames_in(min(len(samples), len(next(self.segmenter.windows(samples, starts[:1]))[1])))
        probs = np.zeros((len(starts), frames, len(POWERSET)), np.float32)
        embeddings = np.full((len(starts), LOCAL_SPEAKERS, EMBEDDING_DIM), np.nan, np.float32)
        seconds = np.zeros((len(starts), LOCAL_SPEAKERS), np.float32)
        batch_size = self.segmenter.batch_size
        for first in range(0, len(starts), batch_size):
            batch = list(self.segmenter.windows(samples, starts[first : first + batch_size]))
            probs[first : first + len(batch)] = self.segmenter.probabilities(np.stack([a for _, a in batch]))[:, :frames]
            for i, (_, audio) in enumerate(batch):
                w = first + i
                embeddings[w], seconds[w] = self.embedder.embed_window(audio, hard_activity(probs[w]))
            if progress:
                progress(min(1.0, (first + len(batch)) / len(starts)))
        return WindowResults(np.asarray(starts), probs, embeddings, seconds)

    def _cluster(self, windows: WindowResults, options: DiarizationOptions) -> np.ndarray:
        """(windows, local) global speaker of every local speaker, -1 where it has no voice print."""
        labels = np.full(windows.seconds.shape, -1, dtype=int)
        valid = ~np.isnan(windows.embeddings[..., 0])
        if not valid.any():
            return labels
        strong = valid & (windows.seconds >= self.config.min_cluster_seconds)
        if not strong.any():
            strong = valid
        fixed = options.speakers if options.speakers > 0 else None
        strong_labels = cluster(
            windows.embeddings[strong],
            self.config.clustering,
            num_speakers=fixed,
            min_speakers=options.min_speakers,
            max_speakers=options.max_speakers,
        )
        centroids = centroids_of(windows.embeddings[strong], strong_labels)
        window_of = np.nonzero(valid)[0]
        labels[valid] = assign_per_window(windows.embeddings[valid], centroids, window_of)
        return labels
