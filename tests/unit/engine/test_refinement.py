"""Turn re-assignment (refinement.py): which turns move, and what counts as one turn."""
import numpy as np
import pytest

from diarizer.refinement import reassign_turns

VOICES = np.eye(4)[:2]  # two orthogonal "voices"


def truth_embedder(truth: list[tuple[int, float, float]]):
    """Voice print of a span = the time-weighted mix of the voices that really talk in it (the
    behaviour of a speaker-embedding model on mixed speech, reduced to its essence)."""

    def embed(spans):
        out = []
        for a, b in spans:
            mix = sum(max(0.0, min(b, end) - max(a, start)) * VOICES[v] for v, start, end in truth)
            out.append(mix if np.any(mix) else np.full(VOICES.shape[1], 1e-3))
        return np.array(out)

    return embed


# Voice 0 and voice 1 alternate; the clustering gave speaker 0 a run of voice 1 that follows its own
# run after a 0.2 s pause (the segmentation model kept one local speaker across the change).
TRUTH = [(0, 0.0, 4.0), (1, 4.5, 8.0), (0, 8.5, 12.0), (1, 12.2, 14.0), (1, 15.0, 19.0)]
TURNS = [(0, 0.0, 4.0), (1, 4.5, 8.0), (0, 8.5, 12.0), (0, 12.2, 14.0), (1, 15.0, 19.0)]


def test_a_run_of_another_voice_moves_when_runs_are_checked_alone():
    out = reassign_turns(TURNS, truth_embedder(TRUTH), join_gap=0.0, min_seconds=0.5, max_seconds=3.0)
    assert out == [(0, 0.0, 4.0), (1, 4.5, 8.0), (0, 8.5, 12.0), (1, 12.2, 14.0), (1, 15.0, 19.0)]


def test_joined_across_the_pause_the_mixed_turn_stays_wrong():
    # The reason `turn_join_gap` is 0: joined, 8.5-14.0 is one turn whose print is mostly voice 0.
    out = reassign_turns(TURNS, truth_embedder(TRUTH), join_gap=0.3, min_seconds=0.5, max_seconds=3.0)
    assert out[3] == (0, 12.2, 14.0)


def test_turns_overlapped_by_others_and_short_turns_keep_their_speaker():
    truth = [(0, 0.0, 4.0), (1, 4.0, 8.0), (1, 8.0, 8.3), (1, 9.0, 12.0)]
    turns = [(0, 0.0, 4.0), (1, 4.0, 8.0), (0, 8.0, 8.3), (0, 9.0, 12.0), (1, 9.5, 12.0)]
    out = reassign_turns(turns, truth_embedder(truth), join_gap=0.0, min_seconds=0.5, max_seconds=3.0)
    assert out[2] == (0, 8.0, 8.3)  # 0.3 s: too short to judge
    assert out[3] == (0, 9.0, 12.0)  # overlapped by speaker 1 for 2.5 of its 3 s: a mixed print


@pytest.mark.parametrize("turns", [[], [(0, 0.0, 5.0), (0, 6.0, 9.0)]])
def test_nothing_to_compare_leaves_turns_alone(turns):
    assert reassign_turns(turns, truth_embedder([]), 0.0, 0.5, 3.0) == turns
