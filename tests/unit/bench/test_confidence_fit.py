"""bench/confidence.py: what "right" means for a segment, and the isotonic staircase the engine ships.

Synthetic segments only (no audio, no ../shared): the fit's arithmetic is what is checked here; the
calibration itself is measured on the evaluation suite (BENCHMARKS.md, "Confidence").
"""
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "bench"))

import confidence as fit  # noqa: E402
from diarizer.confidence import probabilities  # noqa: E402


def through_engine(p: np.ndarray, steps) -> np.ndarray:
    """The engine's own lookup, with a one-feature model whose logistic score is exactly `p`."""
    return probabilities(np.log(p / (1 - p))[:, None], (1.0,), steps)


def test_each_step_is_worth_what_its_own_segments_measured():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.98, 4000)
    right = np.clip(p ** 2 + rng.normal(0, 0.1, p.size), 0, 1)  # over-confident scores, noisy truth
    weight = rng.uniform(10, 300, p.size)
    steps = fit.isotonic_steps(p, right, weight, max_steps=6)

    assert steps[0][0] == 0.0 and len(steps) <= 6
    assert all(a[0] < b[0] and a[1] < b[1] for a, b in zip(steps, steps[1:]))  # rising, one value per step
    out = through_engine(p, steps)
    for value in np.unique(out):
        mine = out == value
        assert np.average(right[mine], weights=weight[mine]) == pytest.approx(value, abs=1e-9)
    assert fit.expected_calibration_error(out, right, weight) < 0.01


def test_a_heavy_step_of_wrong_turns_is_not_merged_away():
    # A few wrong turns at the bottom (0.1 right) below many nearly right ones: fewer steps must merge
    # the nearly equal ones, not pour the wrong turns into a "70 % right" step.
    p = np.concatenate([np.linspace(0.05, 0.2, 5), np.linspace(0.3, 0.95, 40)])
    right = np.concatenate([np.full(5, 0.1), np.linspace(0.8, 0.99, 40)])
    weight = np.concatenate([np.full(5, 20.0), np.full(40, 50.0)])
    steps = fit.isotonic_steps(p, right, weight, max_steps=2)
    assert len(steps) == 2 and steps[0][1] == pytest.approx(0.1)
    assert through_engine(np.array([0.1]), steps)[0] == pytest.approx(0.1)


def test_a_segment_is_right_where_its_mapped_speaker_talks():
    features = np.ones((4, len(fit.FEATURES)))
    reference = [("alice", 0.0, 4.0), ("bob", 4.0, 8.0), ("alice", 8.0, 9.0)]
    segments = [("speaker2", 0.0, 4.0),  # alice under another label: mapped one-to-one, right
                ("speaker1", 4.0, 8.0),  # bob
                ("speaker1", 8.0, 9.0),  # alice's last second given to bob's speaker: wrong
                ("speaker2", 9.0, 10.0)]  # nobody talks: no speech frames, counted as wrong
    files = [{"duration": 10.0, "reference": reference, "segments": segments, "features": features}]
    _, right, weight = fit.segment_truth(files)
    assert right.tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0])
    assert weight.tolist() == [400, 400, 100, 100]

    scored = [{**files[0], "uem": [(0.0, 3.0), (4.0, 6.0)]}]  # outside the UEM nothing is scored
    _, right, weight = fit.segment_truth(scored)
    assert right.tolist() == [1.0, 1.0] and weight.tolist() == [300, 200]
