"""The diarization pipeline: decode -> segment (windows) -> embed -> cluster -> reconstruct.

Each block is a separate module with explicit hyper-parameters, gathered in `PipelineConfig`
(tuned on development data, see BENCHMARKS.md). The pipeline keeps only small per-window results
(local activity, embeddings), so memory grows slowly with the audio length.
"""
from __future__ import annotations

import dataclasses
import os
import queue
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from diarizer import audio as audio_io
from diarizer import features
from diarizer.clustering import (
    ClusteringConfig,
    assign_per_window,
    centroids_of,
    close_calls,
    cluster,
    l2_normalise,
    label_directions,
    most_voices_heard_together,
)
from diarizer.embedding import EMBEDDING_DIM, Embedder
from diarizer.models import available_cpus, default_threads, locate_models, open_session
from diarizer.reconstruction import (
    aggregate,
    digital_silence,
    drop_short,
    frame_offsets,
    label_by_first_appearance,
    merge_same_speaker,
    select_speakers,
    speaker_count,
    to_segments,
)
from diarizer import shared_trunk
from diarizer.refinement import reassign_turns, split_to_count
from diarizer.segmentation import (
    LOCAL_SPEAKERS,
    MIN_WINDOW_SAMPLES,
    POWERSET,
    SAMPLE_RATE,
    WINDOW_SAMPLES,
    Segmenter,
    frames_in,
    hard_activity,
    window_starts,
)
from diarizer.types import Diarization, DiarizationOptions, Voiceprint

Progress = Callable[[float], None]
WINDOW_BATCH = 4  # windows per segmentation call


@dataclass(frozen=True)
class PipelineConfig:
    step_seconds: float = 5.0  # hop between 10 s segmentation windows
    speech_floor: bool = True  # speaker floors in seconds of distinct speech (else in print counts)
    min_cluster_seconds: float = 1.0  # less speech than this: assigned to a speaker, never founds one
    min_embed_seconds: float = 0.2  # less speech than this: no voice print at all
    max_embed_seconds: float = 10.0  # a voice print uses at most this much speech (a whole window)
    # Run CAM++'s trunk once per 5 s interval and voice, and pool window and turn prints from it
    # (shared_trunk.py) instead of running the whole network per window speaker and per turn piece: whole
    # clips need each moment about 2.3 times. Pooled alone, a window print made of two 5 s runs is not the
    # print of one 10 s run, and on fast exchanges that cost DER; with the re-prints below it does not
    # (BENCHMARKS.md, "Shared voice prints"). False: every print through the whole network.
    shared_trunk: bool = True
    # With a shared trunk, a pooled print whose two nearest speakers are within this (cosine) of each
    # other is made again through the whole network: window prints after a first clustering (then the
    # windows are clustered again), turn pieces in the turn re-check. Where the evidence is close, the
    # exact print decides; elsewhere the pooled one is as good. Tuning part: every condition within +0.1
    # DER points of whole-clip prints and the same 59 counts (pooled alone: short turns +1.7, mp3 +0.7);
    # the same at 0.09 and 0.11; about 2-10 % of prints on conversations, a third on fast exchanges.
    reprint_margin: float = 0.1
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    window_bound: bool = True  # at least as many speakers as the busiest window holds
    onset: float = 0.6  # speech where P(anyone talks) reaches this
    overlap: float = 0.4  # two speakers where P(two talk) reaches this
    # Nobody talks where every sample stays under this (dBFS): digital silence, which the segmentation model
    # bridges between turns (reconstruction.digital_silence). None: no such rule. Tuning part, clean
    # conditions (the only ones with digital silence): -90 to -70 within 0.2 DER points of each other.
    silence_peak_db: float | None = -80.0
    refine_turns: bool = True  # second look at each turn's speaker (see refinement.py)
    min_turn_seconds: float = 0.5  # shorter turns keep their speaker
    # A turn at least twice this long is re-checked in pieces (refinement.py) ...
    turn_piece_seconds: float = 1.5
    # ... and a piece moves alone when another speaker's centroid is this much more alike than its
    # turn's (cosine; tuning part: 0.0, 0.1 and 0.2 within 0.4 DER points of each other).
    piece_margin: float = 0.1
    # Runs of one speaker closer than this are re-checked as one turn. 0: every run on its own. When the
    # segmentation model gives two alternating voices one local speaker, joining their runs across the
    # short pauses between them mixes the two voices in one print; alone, each run can move (tuning
    # part, cached prints re-scored: DER lower in 7 of 9 conditions, none higher, short turns 51.0 ->
    # 49.5 %; 0.1 s the same; about 2.5 % more turn-print audio).
    turn_join_gap: float = 0.0
    # When the caller's count is more than the speakers found, speakers are split on prints of pieces this long
    # (refinement.split_to_count).
    count_piece_seconds: float = 1.0
    merge_gap: float = 0.3  # the `vad` option joins same-speaker turns closer than this (NIST's 0.3 s)
    min_segment: float = 0.0  # shorter output turns are dropped


@dataclass
class WindowResults:
    starts: np.ndarray
    probs: np.ndarray  # (windows, frames, 7) powerset class probabilities
    embeddings: np.ndarray  # (windows, local, 192), NaN where none
    seconds: np.ndarray  # (windows, local) speech behind each embedding
    trunk: shared_trunk.SharedTrunk | None = None  # CAM++ trunk features (shared_trunk only)


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
        # One single-threaded (segmenter, embedder) pair per core, each working through its own
        # windows: small ONNX calls scale far better across cores this way than with intra-op threads.
        self._workers = [
            (
                Segmenter(open_session(files.segmentation, threads=1)),
                Embedder(
                    open_session(files.embedding_trunk, threads=1),
                    open_session(files.embedding_head, threads=1),
                    min_frames=int(self.config.min_embed_seconds * 100),
                    max_frames=int(self.config.max_embed_seconds * 100),
                ),
            )
            for _ in range(max(1, min(threads, available_cpus()) if threads else default_threads()))
        ]

    def diarize(
        self,
        source: audio_io.AudioSource,
        options: DiarizationOptions | None = None,
        progress: Progress | None = None,
        max_seconds: float = audio_io.MAX_SECONDS,
    ) -> Diarization:
        """Who spoke when in `source` (path, bytes or binary file). Raises AudioDecodeError, and
        AudioTooLongError as soon as more than `max_seconds` has decoded (before any model runs)."""
        return self._diarize_at_level(audio_io.decode(source, max_seconds), options, progress)  # decode levels it

    def diarize_samples(
        self, samples: np.ndarray, options: DiarizationOptions | None = None, progress: Progress | None = None,
        sample_rate: int = audio_io.SAMPLE_RATE,
    ) -> Diarization:
        """Same as `diarize` for samples in memory: (frames,) or (frames, channels) (or (channels, frames)),
        float in [-1, 1] or integer PCM, at `sample_rate`. Raises AudioDecodeError for what is not audio."""
        return self._diarize_at_level(audio_io.from_array(samples, sample_rate), options, progress)

    def _diarize_at_level(
        self, samples: np.ndarray, options: DiarizationOptions | None, progress: Progress | None
    ) -> Diarization:
        """The diarization of samples already at the working level."""
        if len(samples) < MIN_WINDOW_SAMPLES:
            result = Diarization([], len(samples) / SAMPLE_RATE)
        else:
            result = self.resolve(self.analyse(samples, progress), samples, options)
        if options is not None and (options.identify or options.confidence):
            from diarizer.identify import annotate  # post-processing: nothing of it runs unless asked

            result = annotate(samples, result, options, self._embed_many)
        return result

    def enroll(self, name: str, sources: list[audio_io.AudioSource]) -> Voiceprint:
        """A voiceprint of the one voice in `sources` (paths, bytes or files). Raises EnrollmentError."""
        from diarizer.voiceprints import enroll

        return enroll(self, name, sources)

    def analyse(self, samples: np.ndarray, progress: Progress | None = None) -> WindowResults:
        """The expensive, option-independent part: local segmentation and voice prints per window."""
        return self._segment_and_embed(samples, progress)

    def resolve(
        self, windows: WindowResults, samples: np.ndarray, options: DiarizationOptions | None = None
    ) -> Diarization:
        """Cluster the voice prints, build the timeline for these options, re-check each turn."""
        options = options or DiarizationOptions()
        duration = len(samples) / SAMPLE_RATE
        windows, window_labels = cluster_with_reprints(
            windows, self.config, options, lambda which: self._reprinted_whole(windows, samples, which)
        )
        num_speakers = int(window_labels.max()) + 1
        if num_speakers == 0:
            return Diarization([], duration)
        card, scores = aggregate(windows.starts, windows.probs, window_labels, num_speakers)
        count = speaker_count(card, self.config.onset, self.config.overlap)
        if self.config.silence_peak_db is not None:
            count[digital_silence(samples, len(count), self.config.silence_peak_db)] = 0
        active = select_speakers(count, scores, options.exclusive)
        turns = to_segments(active, duration)
        embed, exact = self._turn_embedders(windows, samples)
        if self.config.refine_turns:
            turns = reassign_turns(
                turns, embed, self.config.turn_join_gap, self.config.min_turn_seconds,
                self.config.turn_piece_seconds, self.config.piece_margin, exact, self.config.reprint_margin,
            )
        wanted = options.speakers if options.speakers > 0 else options.min_speakers or 0
        turns = split_to_count(turns, wanted, embed, self.config.count_piece_seconds, self.config.min_turn_seconds)
        # Joining closer turns is the `vad` option; joining overlapping runs of one speaker is not optional.
        turns = merge_same_speaker(turns, self.config.merge_gap if options.merge_adjacent else 0.0)
        turns = drop_short(turns, self.config.min_segment)
        return Diarization(label_by_first_appearance(turns), duration)

    def _reprinted_whole(self, windows: WindowResults, samples: np.ndarray, which: np.ndarray) -> WindowResults:
        """`windows` with the prints `which` ((windows, local) bool) made whole-clip, as the analysis with
        `shared_trunk=False` makes them."""
        embeddings, seconds = np.empty_like(windows.embeddings), np.empty_like(windows.seconds)
        length = min(len(samples), WINDOW_SAMPLES)
        todo = np.nonzero(which.any(axis=1))[0]

        def work(pair: tuple[Segmenter, Embedder], i: int) -> None:
            w = int(todo[i])
            start = int(windows.starts[w])
            audio = np.asarray(samples[start : start + length], dtype=np.float32)
            embeddings[w], seconds[w] = pair[1].embed_window(audio, hard_activity(windows.probs[w]), only=which[w])

        self._for_each(len(todo), work)
        return with_prints(windows, which, embeddings, seconds)

    def _embed_many(self, clips: list[np.ndarray]) -> np.ndarray:
        """Voice prints of whole clips, spread over the per-core embedders."""
        out = np.zeros((len(clips), EMBEDDING_DIM), np.float32)

        def work(pair: tuple[Segmenter, Embedder], i: int) -> None:
            feats = features.fbank(clips[i])
            if len(feats):
                out[i] = pair[1].embed_frames(feats)

        self._for_each(len(clips), work)
        return out

    def _turn_embedders(self, windows: WindowResults, samples: np.ndarray) -> tuple[Callable, Callable | None]:
        """Voice prints of time spans (seconds): whole clips through the network, or pooled from the
        shared trunk when the analysis kept one (spans without any of its frames: whole clips); and the
        whole-clip embedder when the first is only pooled (else None)."""
        def whole(spans: list[tuple[float, float]]) -> np.ndarray:
            return self._embed_many([samples[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)] for a, b in spans])

        if windows.trunk is None:
            return whole, None

        def pooled(spans: list[tuple[float, float]]) -> np.ndarray:
            stats: list[np.ndarray | None] = [None] * len(spans)

            def one(pair: tuple[Segmenter, Embedder], i: int) -> None:  # numpy's float16 casts free the GIL
                stats[i] = windows.trunk.span_stats(*spans[i])

            self._for_each(len(spans), one)
            found = [i for i, st in enumerate(stats) if st is not None]
            missing = [i for i, st in enumerate(stats) if st is None]
            out = np.zeros((len(spans), EMBEDDING_DIM), np.float32)
            if found:
                out[found] = self._workers[0][1].from_stats(np.stack([stats[i] for i in found]))
            if missing:
                out[missing] = whole([spans[i] for i in missing])
            return out

        return pooled, whole

    def _for_each(self, count: int, task: Callable[[tuple[Segmenter, Embedder], int], None]) -> None:
        """task(worker_pair, i) for i in range(count), the items shared out among the workers."""
        jobs = queue.SimpleQueue()
        for i in range(count):
            jobs.put(i)

        def work(pair: tuple[Segmenter, Embedder]) -> None:
            while True:
                try:
                    i = jobs.get_nowait()
                except queue.Empty:
                    return
                task(pair, i)

        self._run_on_workers(work)

    def _run_on_workers(self, task: Callable[[tuple[Segmenter, Embedder]], None]) -> None:
        """Run `task(worker_pair)` on every worker at once (the caller's thread takes the first)."""
        failures: list[BaseException] = []

        def guarded(pair) -> None:
            try:
                task(pair)
            except BaseException as err:  # re-raised in the caller's thread
                failures.append(err)

        # Our threads already fill the cores: BLAS calls inside them (fbank's mel matrix) must not
        # start their own thread pools too (measured: 30 % less CPU per audio second).
        with threadpool_limits(limits=1, user_api="blas"):
            threads = [threading.Thread(target=guarded, args=(pair,), daemon=True) for pair in self._workers[1:]]
            for thread in threads:
                thread.start()
            guarded(self._workers[0])
            for thread in threads:
                thread.join()
        if failures:
            raise failures[0]

    def _segment_and_embed(self, samples: np.ndarray, progress: Progress | None) -> WindowResults:
        starts = window_starts(len(samples), self.config.step_seconds)
        length = min(len(samples), WINDOW_SAMPLES)
        frames = frames_in(length)
        probs = np.zeros((len(starts), frames, len(POWERSET)), np.float32)
        embeddings = np.full((len(starts), LOCAL_SPEAKERS, EMBEDDING_DIM), np.nan, np.float32)
        seconds = np.zeros((len(starts), LOCAL_SPEAKERS), np.float32)
        shared = self.config.shared_trunk
        batches = range(0, len(starts), WINDOW_BATCH)
        # With a shared trunk, segmentation is about 40 % of the work and the trunk the rest.
        report = _Progress(progress, len(batches), share=0.4 if shared else 1.0)

        def segment(pair: tuple[Segmenter, Embedder], b: int) -> None:
            segmenter, embedder = pair
            first = batches[b]
            batch = list(segmenter.windows(samples, starts[first : first + WINDOW_BATCH]))
            p = segmenter.probabilities(np.stack([a for _, a in batch]))[:, :frames]
            probs[first : first + len(batch)] = p
            if not shared:  # whole-clip voice prints of this batch's windows
                for i, (_, audio) in enumerate(batch):
                    embeddings[first + i], seconds[first + i] = embedder.embed_window(audio, hard_activity(p[i]))
            report.step()

        self._for_each(len(batches), segment)
        if shared:
            return self._shared_prints(samples, np.asarray(starts), length, probs, embeddings, seconds, progress)
        return WindowResults(np.asarray(starts), probs, embeddings, seconds)

    def _shared_prints(self, samples, starts, length, probs, embeddings, seconds, progress: Progress | None) -> WindowResults:
        trunk = shared_trunk.plan(starts, probs, length, len(samples))
        report = _Progress(progress, len(trunk.voices), first=0.4, share=0.6)

        def run(pair: tuple[Segmenter, Embedder], j: int) -> None:
            shared_trunk.run_interval(trunk, j, samples, pair[1])
            report.step()

        self._for_each(len(trunk.voices), run)
        embedder = self._workers[0][1]
        found, stats, secs = shared_trunk.window_prints(
            trunk, starts, probs, length, len(samples), embedder,
            for_each=lambda count, task: self._for_each(count, lambda pair, w: task(w)),
        )
        if found:
            where = tuple(np.array(found).T)
            embeddings[where], seconds[where] = embedder.from_stats(stats), secs
        return WindowResults(starts, probs, embeddings, seconds, trunk)


def distinct_seconds(windows: WindowResults) -> np.ndarray:
    """(windows, local) speech behind each print, each moment divided by how many windows cover it.

    A moment heard by two overlapping windows is in two prints and counts half in each; a moment only
    one window hears (the start and end of a recording) counts whole, so a voice heard only there is
    not taken for half as much speech as it is."""
    if len(windows.starts) < 2:
        return windows.seconds
    frames = windows.probs.shape[1]
    offsets = frame_offsets(windows.starts)
    coverage = np.zeros(offsets[-1] + frames, np.float32)
    for first in offsets:
        coverage[first : first + frames] += 1
    active = hard_activity(windows.probs)  # (windows, frames, local)
    share = np.zeros(windows.seconds.shape, np.float32)
    for w, first in enumerate(offsets):
        frames_of = active[w].sum(axis=0)
        weighted = (active[w] / coverage[first : first + frames, None]).sum(axis=0)
        share[w] = np.where(frames_of > 0, weighted / np.maximum(frames_of, 1), 0.0)
    return windows.seconds * share


def cluster_windows(windows: WindowResults, config: PipelineConfig, options: DiarizationOptions) -> np.ndarray:
    """(windows, local) global speaker of every local speaker, -1 where it has no voice print.

    A pure function of the analysis, so benchmarks can re-cluster cached analyses (bench/suite.py counts).
    """
    labels = np.full(windows.seconds.shape, -1, dtype=int)
    valid = ~np.isnan(windows.embeddings[..., 0])
    if not valid.any():
        return labels
    strong = valid & (windows.seconds >= config.min_cluster_seconds)
    # Voices the segmentation model heard side by side in one window are different people:
    # the busiest window is a lower bound on the speaker count (cannot-link evidence).
    heard_together = 1
    if config.window_bound:
        heard_together = most_voices_heard_together(windows.embeddings, strong, config.clustering.same_voice)
    if not strong.any():
        strong = valid
    fixed = options.speakers if options.speakers > 0 else None
    min_speakers = max(options.min_speakers or 1, heard_together)
    if options.max_speakers:
        min_speakers = min(min_speakers, options.max_speakers)
    strong_labels = cluster(
        windows.embeddings[strong],
        config.clustering,
        num_speakers=fixed,
        min_speakers=min_speakers,
        max_speakers=options.max_speakers,
        groups=np.nonzero(strong)[0],
        seconds=distinct_seconds(windows)[strong] if config.speech_floor else None,
    )
    centroids = centroids_of(windows.embeddings[strong], strong_labels)
    window_of = np.nonzero(valid)[0]
    labels[valid] = assign_per_window(windows.embeddings[valid], centroids, window_of, config.clustering.same_voice)
    return labels


def cluster_with_reprints(
    windows: WindowResults, config: PipelineConfig, options: DiarizationOptions,
    reprint: Callable[[np.ndarray], WindowResults],
) -> tuple[WindowResults, np.ndarray]:
    """`cluster_windows`, and with shared prints, again after the close calls (`unsure_prints`) are
    made whole-clip by `reprint(which)`. Returns the windows the labels belong to, and the labels.

    The engine re-prints from the audio; `bench/suite.py counts` from a cached whole-clip analysis,
    which gives the same prints, so its sweeps count what the engine counts."""
    labels = cluster_windows(windows, config, options)
    if windows.trunk is not None and config.reprint_margin > 0:
        unsure = unsure_prints(windows.embeddings, labels, config.reprint_margin)
        if unsure.any():
            windows = reprint(unsure)
            labels = cluster_windows(windows, config, options)
    return windows, labels


def with_prints(windows: WindowResults, which: np.ndarray, embeddings: np.ndarray, seconds: np.ndarray) -> WindowResults:
    """`windows` with the prints `which` ((windows, local) bool) and their seconds taken from `embeddings`
    and `seconds` (arrays shaped like the analysis's own): how re-prints enter an analysis."""
    kept_embeddings, kept_seconds = windows.embeddings.copy(), windows.seconds.copy()
    kept_embeddings[which], kept_seconds[which] = embeddings[which], seconds[which]
    return dataclasses.replace(windows, embeddings=kept_embeddings, seconds=kept_seconds)


def unsure_prints(embeddings: np.ndarray, labels: np.ndarray, margin: float) -> np.ndarray:
    """(windows, local) True for prints whose two nearest speaker centroids are within `margin` (cosine)."""
    unsure = np.zeros(labels.shape, bool)
    valid = labels >= 0
    speakers = int(labels.max()) + 1
    if speakers < 2:
        return unsure
    prints = l2_normalise(embeddings[valid].astype(np.float64))
    unsure[valid] = close_calls(prints, label_directions(prints, labels[valid], speakers), margin)
    return unsure


class _Progress:
    """Thread-safe fraction-done reporting over a known number of steps, which cover the fractions
    `first` to `first + share` of the whole job."""

    def __init__(self, callback: Progress | None, total: int, first: float = 0.0, share: float = 1.0):
        self.callback, self.total, self.done = callback, max(total, 1), 0
        self.first, self.share = first, share
        self.lock = threading.Lock()

    def step(self) -> None:
        with self.lock:
            self.done += 1
            if self.callback:
                self.callback(self.first + self.share * self.done / self.total)
