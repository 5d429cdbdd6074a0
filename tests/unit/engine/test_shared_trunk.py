"""Shared trunk work (shared_trunk.py): intervals and voices planned from the windows' segmentation,
and voice prints pooled from them against whole-clip prints of the same speech, on real recordings."""
import numpy as np
import pytest

from audio_factory import demo_recording
from diarizer import features, shared_trunk
from diarizer.segmentation import POWERSET, SAMPLE_RATE, WINDOW_SAMPLES, window_starts


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def one_hot(classes: np.ndarray) -> np.ndarray:
    """(windows, frames) powerset class per frame -> (windows, frames, 7) probabilities."""
    return np.eye(len(POWERSET), dtype=np.float32)[classes]


def test_intervals_cut_at_every_window_edge_and_lie_inside_windows():
    n = int(23.4 * SAMPLE_RATE)
    starts = np.asarray(window_starts(n, 5.0))
    probs = one_hot(np.zeros((len(starts), 589), int))
    bounds = shared_trunk.plan(starts, probs, WINDOW_SAMPLES, n).bounds
    offsets, lengths = shared_trunk.window_frames(starts, WINDOW_SAMPLES, n)
    assert bounds[0] == 0 and bounds[-1] == features.num_frames(n)
    assert set(offsets) | set(offsets + lengths) <= set(bounds)
    for a, b in zip(bounds[:-1], bounds[1:]):
        covering = (offsets <= a) & (offsets + lengths >= b)
        assert covering.any()  # every interval is heard, start to end, by the same windows
        assert not ((offsets > a) & (offsets < b)).any()


def test_local_speakers_that_share_their_frames_are_one_voice():
    """Two windows overlapping by half (intervals [0, 5 s), [5, 10 s), [10, 15 s)): window 0's speaker 1
    is window 1's speaker 2 in the shared half (same frames); window 0's speaker 2 talks only in its first
    half, window 1's speaker 3 only in its second half, and window 1's speaker 1 in the shared half at
    frames that only partly overlap window 0's speaker 1 (not linked)."""
    frames, half = 589, 589 // 2
    first, second = np.zeros(frames, int), np.zeros(frames, int)
    first[:100] = 2
    first[half + 20 : half + 200] = 1
    second[20:200] = 2
    second[220:280] = 1
    second[half + 50 : half + 150] = 3
    trunk = shared_trunk.plan(np.array([0, 5 * SAMPLE_RATE]), one_hot(np.stack([first, second])), WINDOW_SAMPLES, 15 * SAMPLE_RATE)
    assert list(trunk.bounds) == [0, 500, 1000, features.num_frames(15 * SAMPLE_RATE)]
    assert trunk.member.keys() == {(0, 0, 1), (1, 0, 0), (1, 1, 1), (1, 1, 0), (2, 1, 2)}
    assert trunk.member[(1, 0, 0)] == trunk.member[(1, 1, 1)]  # one voice in the shared half
    assert trunk.member[(1, 1, 0)] != trunk.member[(1, 0, 0)]
    assert [len(v) for v in trunk.voices] == [1, 2, 1]
    shared = trunk.voices[1][trunk.member[(1, 0, 0)]].frames / 100  # seconds
    assert 5.3 < shared.min() < 5.5 and 8.2 < shared.max() < 8.5


def test_rows_for_takes_every_other_frame_as_the_trunk_does():
    voice = shared_trunk.Voice(np.array([10, 11, 12, 20, 21]), np.arange(3, dtype=np.float16)[:, None])
    np.testing.assert_array_equal(voice.rows_for(np.array([10, 11])), [[0]])
    np.testing.assert_array_equal(voice.rows_for(np.array([12, 20, 21])), [[1], [2]])


@pytest.fixture(scope="module")
def shared_engine(engine):
    import dataclasses

    from diarizer import Diarizer

    return Diarizer(config=dataclasses.replace(engine.config, shared_trunk=True), threads=1)


@pytest.fixture(scope="module")
def whole_engine(engine):
    """Every print through the whole network: what shared prints are measured against."""
    import dataclasses

    from diarizer import Diarizer

    return Diarizer(config=dataclasses.replace(engine.config, shared_trunk=False), threads=1)


@pytest.mark.parametrize("name", ["two-speakers", "three-speakers"])
def test_shared_window_prints_stay_close_to_whole_clip_prints(whole_engine, shared_engine, name):
    """Same windows, same speakers with prints, same seconds of speech; the prints themselves move a
    little (measured: median cosine 0.97 on these 30 s demos, 0.98-0.99 on 4-minute conversations; a
    5 s interval is a shorter clip than a 10 s window)."""
    samples = demo_recording(name)[0]
    whole, shared = whole_engine.analyse(samples), shared_engine.analyse(samples)
    valid = ~np.isnan(whole.embeddings[..., 0])
    np.testing.assert_array_equal(valid, ~np.isnan(shared.embeddings[..., 0]))
    np.testing.assert_allclose(whole.seconds, shared.seconds, atol=0.03)
    cos = [cosine(x, y) for x, y in zip(whole.embeddings[valid], shared.embeddings[valid])]
    assert np.median(cos) > 0.94 and min(cos) > 0.85
    assert isinstance(shared.trunk, shared_trunk.SharedTrunk)
    rows = [v.rows for voices in shared.trunk.voices for v in voices]
    assert rows and all(r.dtype == np.float16 and r.shape[1] == 512 for r in rows)


def test_shared_turn_prints_stay_close_to_whole_clip_prints(engine, shared_engine):
    """Turns of one speaker, pooled from the shared trunk, against each turn through the whole network
    (measured: median cosine 0.93, min 0.85; pooling over 30 s chunks of the recording gave 0.81 / 0.56)."""
    sims = []
    for name in ("two-speakers", "three-speakers"):
        samples, reference = demo_recording(name)
        trunk = shared_engine.analyse(samples).trunk
        embedder = engine._workers[0][1]
        for a, b, _ in [t for t in reference if t[1] - t[0] >= 1.5]:
            direct = embedder.embed_frames(features.fbank(samples[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)]))
            pooled = embedder.from_stats(trunk.span_stats(a, b)[None])[0]
            sims.append(cosine(direct, pooled))
    assert len(sims) >= 8
    assert np.median(sims) > 0.88 and min(sims) > 0.75
    assert trunk.span_stats(len(samples) / SAMPLE_RATE + 1, len(samples) / SAMPLE_RATE + 2) is None


def test_the_shared_pipeline_counts_the_demo_speakers(shared_engine):
    for name, speakers in (("two-speakers", 2), ("three-speakers", 3)):
        assert shared_engine.diarize_samples(demo_recording(name)[0]).num_speakers == speakers


def test_shared_progress_runs_from_segmentation_to_the_trunk_without_going_back(shared_engine):
    seen = []
    shared_engine.diarize_samples(demo_recording("three-speakers")[0], progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)
    assert any(f == pytest.approx(0.4) for f in seen) and any(0.4 < f < 1.0 for f in seen)  # both stages report


def test_prints_between_two_speakers_are_the_unsure_ones():
    from diarizer.pipeline import unsure_prints

    a, b = np.eye(4)[0], np.eye(4)[1]
    embeddings = np.full((3, 3, 4), np.nan)
    embeddings[0, :2] = a, b
    embeddings[1, :2] = a + 0.05 * b, b
    embeddings[2, 0] = 0.6 * a + 0.8 * b  # given to a, but about as much like b
    labels = np.array([[0, 1, -1], [0, 1, -1], [0, -1, -1]])
    unsure = unsure_prints(embeddings, labels, margin=0.1)
    assert unsure.tolist() == [[False, False, False], [False, False, False], [True, False, False]]
    assert not unsure_prints(embeddings, np.where(labels >= 0, 0, -1), margin=0.1).any()  # one speaker: nothing


def test_reprinted_window_prints_are_the_whole_clip_prints(whole_engine, shared_engine):
    """The prints flagged unsure are made again exactly as the whole-clip analysis makes them (the others keep their
    pooled value), so where the evidence is close the clustering sees what the default pipeline sees."""
    samples = demo_recording("three-speakers")[0]
    whole, shared = whole_engine.analyse(samples), shared_engine.analyse(samples)
    valid = ~np.isnan(shared.embeddings[..., 0])
    which = valid & (np.arange(valid.shape[0])[:, None] % 2 == 0)  # every print of every other window
    reprinted = shared_engine._reprinted_whole(shared, samples, which)
    np.testing.assert_allclose(reprinted.embeddings[which], whole.embeddings[which], atol=2e-4)
    np.testing.assert_array_equal(reprinted.embeddings[valid & ~which], shared.embeddings[valid & ~which])
    assert not np.allclose(shared.embeddings[which], whole.embeddings[which], atol=2e-4)  # pooled ones differ
    np.testing.assert_allclose(reprinted.seconds[which], whole.seconds[which])


def test_window_prints_shared_out_among_threads_are_the_ones_made_in_order(shared_engine):
    """The pipeline pools window prints on its worker threads: the same prints, in the same order."""
    from concurrent.futures import ThreadPoolExecutor

    samples, _ = demo_recording("three-speakers")
    windows = shared_engine.analyse(samples)
    length = min(len(samples), WINDOW_SAMPLES)
    args = (windows.trunk, windows.starts, windows.probs, length, len(samples), shared_engine._workers[0][1])

    def backwards_on_two_threads(count, task):
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(task, reversed(range(count))))

    found, stats, seconds = shared_trunk.window_prints(*args)
    assert len(found) > 10
    threaded = shared_trunk.window_prints(*args, for_each=backwards_on_two_threads)
    assert threaded[0] == found
    np.testing.assert_array_equal(threaded[1], stats)
    np.testing.assert_array_equal(threaded[2], seconds)
