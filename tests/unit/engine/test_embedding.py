"""CAM++ voice prints: the numpy statistics pooling between the trunk and the head (the rest of the
network's parity is models/README.md's, checked in test_model_files.py and by the export)."""
import numpy as np

from diarizer.embedding import stats_pool


def test_stats_pool_is_mean_and_unbiased_std():
    frames = np.random.default_rng(0).standard_normal((7, 4)).astype(np.float32)
    stats = stats_pool(frames)
    np.testing.assert_allclose(stats[:4], frames.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats[4:], frames.std(0, ddof=1), rtol=1e-5)
    np.testing.assert_allclose(stats_pool(frames[:1])[4:], 1e-2)  # CAM++'s deviation of one frame
