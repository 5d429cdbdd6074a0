"""CAM++ voice prints: whole clips through trunk + pooling + head, and prints pooled from one trunk
pass over a long chunk (what the pipeline uses), against each other on real speech."""
import numpy as np
import pytest

from audio_factory import demo_recording
from diarizer import features
from diarizer.embedding import (
    TRUNK_HOP,
    Embedder,
    num_trunk_frames,
    span_stats,
    stats_pool,
    trunk_chunks,
)
from diarizer.segmentation import SAMPLE_RATE


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def embedder(engine) -> Embedder:
    return engine._workers[0][1]


def one_pass(embedder: Embedder, samples: np.ndarray, chunk: float = 30.0, margin: float = 1.0) -> np.ndarray:
    """Trunk frames of a whole recording from the chunks `trunk_chunks` plans (as the pipeline runs it)."""
    out = np.zeros((num_trunk_frames(len(samples)), 512), np.float32)
    for begin, end, first, count in trunk_chunks(len(samples), chunk, margin):
        frames = embedder.frames(features.fbank(samples[begin:end]))
        offset = first - begin // TRUNK_HOP
        out[first : first + count] = frames[offset : offset + count]
    return out


@pytest.mark.parametrize("seconds, chunk, margin", [(61.3, 30.0, 1.0), (10.0, 30.0, 1.0), (95.0, 20.0, 0.0), (0.3, 30.0, 1.0)])
def test_chunks_cover_every_trunk_frame_once(seconds, chunk, margin):
    n = int(seconds * SAMPLE_RATE)
    chunks = trunk_chunks(n, chunk, margin)
    kept = np.concatenate([np.arange(first, first + count) for _, _, first, count in chunks])
    np.testing.assert_array_equal(kept, np.arange(num_trunk_frames(n)))
    for begin, end, first, count in chunks:
        assert begin % TRUNK_HOP == 0 and 0 <= begin <= first * TRUNK_HOP
        assert end <= n
        # every kept frame is computed from real samples: the chunk's trunk reaches past the last one
        assert num_trunk_frames(end - begin) >= first - begin // TRUNK_HOP + count
        assert count * TRUNK_HOP / SAMPLE_RATE <= chunk * 1.5 + 1


def test_chunked_trunk_matches_one_call_away_from_chunk_edges(embedder):
    """Chunking only changes frames near chunk edges and through the CAM layers' whole-input
    context: deep inside a chunk the frames stay close to one 90 s pass."""
    samples = demo_recording("three-speakers")[0]
    chunked = one_pass(embedder, samples, chunk=10.0, margin=1.0)
    whole = embedder.frames(features.fbank(samples))[: len(chunked)]
    middle = slice(int(12 * SAMPLE_RATE / TRUNK_HOP), int(18 * SAMPLE_RATE / TRUNK_HOP))  # inside chunk 2
    cos = [cosine(a, b) for a, b in zip(chunked[middle], whole[middle]) if a.any()]
    assert np.median(cos) > 0.9


def test_stats_pool_is_mean_and_unbiased_std():
    frames = np.random.default_rng(0).standard_normal((7, 4)).astype(np.float32)
    stats = stats_pool(frames)
    np.testing.assert_allclose(stats[:4], frames.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats[4:], frames.std(0, ddof=1), rtol=1e-5)
    np.testing.assert_allclose(stats_pool(frames[:1])[4:], 1e-2)  # CAM++'s deviation of one frame


def test_pooled_turn_prints_stay_close_to_whole_clip_prints(embedder):
    """A turn of one speaker, pooled from the recording's trunk pass, against the same turn through
    the whole network on its own (what turn re-assignment used to embed)."""
    sims, pooled, direct = [], {}, {}
    for name in ("two-speakers", "three-speakers"):
        samples, reference = demo_recording(name)
        trunk = one_pass(embedder, samples, chunk=10.0)
        for a, b, who in [t for t in reference if t[1] - t[0] >= 1.5]:
            clip = samples[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)]
            direct[(name, a, who)] = embedder.embed_frames(features.fbank(clip))
            pooled[(name, a, who)] = embedder.from_stats(span_stats(trunk, a, b)[None])[0]
            sims.append(cosine(direct[(name, a, who)], pooled[(name, a, who)]))
    assert len(sims) >= 8
    # 1.5-3 s turns move most (measured: median 0.81, min 0.56): the trunk hears their neighbours.
    assert np.median(sims) > 0.75 and min(sims) > 0.5
    # ... yet they tell the speakers apart at least as well as whole-clip prints of the same turns
    assert gap(pooled) > 0.3 and gap(pooled) >= gap(direct) - 0.05


def gap(prints: dict) -> float:
    """Mean cosine of same-speaker pairs minus that of different-speaker pairs (one recording each).
    Keys are (recording, start, speaker)."""
    items = list(prints.items())
    pairs = [(p, q, cosine(x, y)) for i, (p, x) in enumerate(items) for q, y in items[i + 1 :] if p[0] == q[0]]
    same = [c for p, q, c in pairs if p[2] == q[2]]
    other = [c for p, q, c in pairs if p[2] != q[2]]
    return float(np.mean(same) - np.mean(other))


def test_span_stats_pool_the_frames_centred_in_the_span(embedder):
    trunk = np.arange(100, dtype=np.float32)[:, None].repeat(512, axis=1)
    stats = span_stats(trunk, 0.5, 1.0)  # frame g is centred at g * 20 ms + 12.5 ms
    frames = np.arange(100)[(np.arange(100) * 0.02 + 0.0125 >= 0.5) & (np.arange(100) * 0.02 + 0.0125 < 1.0)]
    np.testing.assert_allclose(stats[0], frames.mean())
    assert span_stats(trunk, 5.0, 6.0) is None


def test_pooled_window_prints_choose_the_speech_whole_clip_prints_use(engine):
    """Same windows, same speakers with prints, same seconds of speech (to 20 ms per stretch)."""
    import dataclasses

    from diarizer import Diarizer

    samples = demo_recording("three-speakers")[0]
    assert not engine.config.pooled_embeddings  # whole-clip prints are the default (see PipelineConfig)
    pooled = Diarizer(config=dataclasses.replace(engine.config, pooled_embeddings=True), threads=1)
    a, b = engine.analyse(samples), pooled.analyse(samples)
    np.testing.assert_array_equal(np.isnan(a.embeddings[..., 0]), np.isnan(b.embeddings[..., 0]))
    np.testing.assert_allclose(a.seconds, b.seconds, atol=0.3)
    valid = ~np.isnan(a.embeddings[..., 0])
    cos = [cosine(x, y) for x, y in zip(a.embeddings[valid], b.embeddings[valid])]
    assert np.median(cos) > 0.8  # measured 0.84 here (0.92 on a 4-minute conversation)
    assert a.trunk is None and b.trunk is not None and b.trunk.dtype == np.float16
    # the whole pooled pipeline, turn re-assignment on pooled turn prints included, still counts right
    assert pooled.diarize_samples(samples).num_speakers == 3
