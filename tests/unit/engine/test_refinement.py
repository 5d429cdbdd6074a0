"""Turn re-assignment (refinement.py): which turns and pieces of turns move, and what counts as one turn."""
import numpy as np
import pytest

from diarizer.reconstruction import merge_same_speaker
from diarizer.refinement import reassign_turns, split_to_count

VOICES = np.eye(4)[:2]  # two orthogonal "voices"


def truth_embedder(truth: list[tuple[int, float, float]], voices: np.ndarray = VOICES):
    """Voice print of a span = the time-weighted mix of the voices that really talk in it (the
    behaviour of a speaker-embedding model on mixed speech, reduced to its essence)."""

    def embed(spans):
        out = []
        for a, b in spans:
            mix = sum(max(0.0, min(b, end) - max(a, start)) * voices[v] for v, start, end in truth)
            out.append(mix if np.any(mix) else np.full(voices.shape[1], 1e-3))
        return np.array(out)

    return embed


# Voice 0 and voice 1 alternate; the clustering gave speaker 0 a run of voice 1 that follows its own
# run after a 0.2 s pause (the segmentation model kept one local speaker across the change).
TRUTH = [(0, 0.0, 4.0), (1, 4.5, 8.0), (0, 8.5, 12.0), (1, 12.2, 14.0), (1, 15.0, 19.0)]
TURNS = [(0, 0.0, 4.0), (1, 4.5, 8.0), (0, 8.5, 12.0), (0, 12.2, 14.0), (1, 15.0, 19.0)]


def test_a_run_of_another_voice_moves_when_runs_are_checked_alone():
    out = reassign_turns(TURNS, truth_embedder(TRUTH), 0.0, 0.5, piece_seconds=1.5, piece_margin=0.1)
    assert out == [(0, 0.0, 4.0), (1, 4.5, 8.0), (0, 8.5, 12.0), (1, 12.2, 14.0), (1, 15.0, 19.0)]


def test_joined_across_the_pause_the_mixed_turn_stays_wrong():
    # The reason `turn_join_gap` is 0: joined, 8.5-14.0 is one turn whose print is mostly voice 0
    # (pieces off here: they would rescue part of it, see below).
    out = reassign_turns(TURNS, truth_embedder(TRUTH), 0.3, 0.5, piece_seconds=100.0, piece_margin=0.1)
    assert out[3] == (0, 12.2, 14.0)


def test_a_voice_change_without_a_pause_moves_as_pieces():
    # Speaker 0's turn 8.5-14.5 runs voice 0 into voice 1 with no pause: no whole-turn print can
    # split it, its 1.5 s pieces can.
    truth = [(0, 0.0, 4.0), (1, 4.5, 8.0), (0, 8.5, 11.5), (1, 11.5, 14.5)]
    turns = [(0, 0.0, 4.0), (1, 4.5, 8.0), (0, 8.5, 14.5)]
    out = reassign_turns(turns, truth_embedder(truth), 0.0, 0.5, piece_seconds=1.5, piece_margin=0.1)
    assert out == [(0, 0.0, 4.0), (1, 4.5, 8.0), (0, 8.5, 11.5), (1, 11.5, 13.0), (1, 13.0, 14.5)]


def test_pieces_move_only_by_the_margin():
    truth = [(0, 0.0, 4.0), (1, 4.5, 8.0), (0, 8.5, 11.5), (1, 11.5, 14.5)]
    turns = [(0, 0.0, 4.0), (1, 4.5, 8.0), (0, 8.5, 14.5)]
    out = reassign_turns(turns, truth_embedder(truth), 0.0, 0.5, piece_seconds=1.5, piece_margin=1.0)
    assert out == turns


def test_turns_overlapped_by_others_and_short_turns_keep_their_speaker():
    truth = [(0, 0.0, 4.0), (1, 4.0, 8.0), (1, 8.0, 8.3), (1, 9.0, 12.0)]
    turns = [(0, 0.0, 4.0), (1, 4.0, 8.0), (0, 8.0, 8.3), (0, 9.0, 12.0), (1, 9.5, 12.0)]
    out = reassign_turns(turns, truth_embedder(truth), 0.0, 0.5, piece_seconds=1.5, piece_margin=0.1)
    assert out[2] == (0, 8.0, 8.3)  # 0.3 s: too short to judge
    assert out[3] == (0, 9.0, 12.0)  # overlapped by speaker 1 for 2.5 of its 3 s: a mixed print


@pytest.mark.parametrize("turns", [[], [(0, 0.0, 5.0), (0, 6.0, 9.0)]])
def test_nothing_to_compare_leaves_turns_alone(turns):
    assert reassign_turns(turns, truth_embedder([]), 0.0, 0.5, 1.5, 0.1) == turns


def test_unsure_pooled_pieces_are_printed_again_exactly_and_only_they():
    """Pooled prints (a shared trunk) blur where voices meet: here speaker 0's last 3 s, which is voice 1, come out
    as an even mix of both voices, too close to call. Printed again exactly, they move to speaker 1; pieces whose
    pooled print was clear are never printed twice."""
    truth = [(0, 0.0, 4.0), (1, 4.5, 8.0), (0, 8.5, 11.5), (1, 11.5, 14.5)]
    turns = [(0, 0.0, 4.0), (1, 4.5, 8.0), (0, 8.5, 14.5)]
    exact = truth_embedder(truth)

    def pooled(spans):
        return np.array([VOICES[0] + VOICES[1] if a >= 11.5 else exact([(a, b)])[0] for a, b in spans])

    reprinted = []

    def exact_logged(spans):
        reprinted.extend(spans)
        return exact(spans)

    assert reassign_turns(turns, pooled, 0.0, 0.5, 1.5, 0.1) == turns  # the mix alone moves nothing
    out = reassign_turns(turns, pooled, 0.0, 0.5, 1.5, 0.1, exact_logged, reprint_margin=0.2)
    assert out == [(0, 0.0, 4.0), (1, 4.5, 8.0), (0, 8.5, 11.5), (1, 11.5, 13.0), (1, 13.0, 14.5)]
    assert reprinted == [(11.5, 13.0), (13.0, 14.5)]


# --- split_to_count: the caller's count when fewer speakers were found -------------------------------------------

def parts(turns):
    """Who spoke when, without the labels: each speaker's joined spans, as a set."""
    joined = merge_same_speaker(turns, 1e-6)  # pieces of one speaker that touch are one span
    return {tuple((float(a), float(b)) for who, a, b in sorted(joined) if who == s) for s in {t[0] for t in joined}}


def test_a_lumped_speaker_is_split_where_its_voices_change():
    # Voice 1 took the middle of one long run: with two speakers asked for, the run parts at the change.
    truth = [(0, 0.0, 3.0), (1, 3.0, 7.0), (0, 7.0, 10.0)]
    out = split_to_count([(0, 0.0, 10.0)], 2, truth_embedder(truth), piece_seconds=1.0, min_seconds=0.5)
    assert parts(out) == {((0.0, 3.0), (7.0, 10.0)), ((3.0, 7.0),)}


def test_the_speaker_split_is_the_one_that_holds_two_voices():
    # Speaker 0 is one voice; speaker 1's turns hold voice 1 and then voice 2.
    truth = [(0, 0.0, 4.0), (1, 4.0, 6.0), (2, 6.0, 9.0), (0, 9.0, 13.0), (1, 13.0, 15.0), (2, 15.0, 18.0)]
    turns = [(0, 0.0, 4.0), (1, 4.0, 9.0), (0, 9.0, 13.0), (1, 13.0, 18.0)]
    out = split_to_count(turns, 3, truth_embedder(truth, voices=np.eye(4)[:3]), piece_seconds=1.0, min_seconds=0.5)
    assert parts(out) == {((0.0, 4.0), (9.0, 13.0)), ((4.0, 6.0), (13.0, 15.0)), ((6.0, 9.0), (15.0, 18.0))}


def test_too_little_speech_for_more_pieces_tries_half_second_pieces_then_stops_short():
    truth = [(0, 0.0, 0.5), (1, 0.5, 1.0)]
    out = split_to_count([(0, 0.0, 1.0)], 2, truth_embedder(truth), piece_seconds=1.0, min_seconds=0.5)
    assert parts(out) == {((0.0, 0.5),), ((0.5, 1.0),)}  # two 0.5 s pieces
    alone = split_to_count([(0, 0.0, 0.9)], 3, truth_embedder(truth), piece_seconds=1.0, min_seconds=0.5)
    assert alone == [(0, 0.0, 0.9)]  # one piece cannot be two people


def test_a_piece_without_a_print_stays_with_its_speaker():
    truth = [(0, 0.0, 2.0), (1, 2.0, 4.0), (0, 4.0, 6.0)]
    base = truth_embedder(truth)

    def embed(spans):  # the last second has no features (say, digital silence): an all-zero print
        out = base(spans)
        out[[a >= 5.0 for a, _ in spans]] = 0.0
        return out

    out = split_to_count([(0, 0.0, 6.0)], 2, embed, piece_seconds=1.0, min_seconds=0.5)
    assert parts(out) == {((0.0, 2.0), (4.0, 6.0)), ((2.0, 4.0),)}  # 5-6 s stayed with speaker 0


@pytest.mark.parametrize("wanted", [0, 1, 2])
def test_enough_speakers_already_leaves_turns_alone(wanted):
    turns = [(0, 0.0, 4.0), (1, 4.0, 8.0)]

    def never(spans):
        raise AssertionError("nothing needs a print")

    assert split_to_count(turns, wanted, never, 1.0, 0.5) == turns


def test_a_long_recording_is_parted_without_a_linkage_over_all_its_pieces(monkeypatch):
    """A 3-hour monologue asked for two speakers has about 10,000 one-second pieces: average linkage over them
    all would hold 50 million distances (400 MB). The linkage sees an even sample; the two-means places every
    piece, and the split still follows the voices."""
    import diarizer.refinement as refinement

    seen = []
    real_linkage = refinement.linkage
    monkeypatch.setattr(refinement, "linkage", lambda x, **kw: seen.append(len(x)) or real_linkage(x, **kw))
    truth = [(0, 0.0, 6000.0), (1, 6000.0, 10000.0)]
    out = split_to_count([(0, 0.0, 10000.0)], 2, truth_embedder(truth), piece_seconds=1.0, min_seconds=0.5)
    assert seen and max(seen) <= refinement.MAX_LINKAGE_PIECES
    assert parts(out) == {((0.0, 6000.0),), ((6000.0, 10000.0),)}


@pytest.mark.parametrize("bad", [0.0, np.nan, np.inf])
def test_pieces_without_a_usable_print_leave_the_turns_alone(bad):
    turns = [(0, 0.0, 6.0)]
    assert split_to_count(turns, 2, lambda spans: np.full((len(spans), 4), bad), 1.0, 0.5) == turns


def test_overlapping_runs_of_one_speaker_are_split_as_one_run():
    """The turn re-check can leave one speaker two overlapping runs: a piece's move landed on both, which
    duplicated time under two labels and lost the speaker."""
    truth = [(0, 0.0, 3.0), (1, 3.0, 6.0)]
    out = split_to_count([(0, 0.0, 4.0), (0, 2.0, 6.0)], 2, truth_embedder(truth), 1.0, 0.5)
    for t in np.arange(0.05, 6.0, 0.1):  # every moment under one speaker, as in the input
        assert len({who for who, a, b in out if a < t < b}) == 1, t
    assert parts(out) == {((0.0, 3.0),), ((3.0, 6.0),)}
    same = split_to_count([(1, 1.885, 3.885), (1, 3.172, 3.672)], 5, lambda spans: np.ones((len(spans), 4)), 1.0, 0.5)
    assert {who for who, a, b in same if a < 3.4 < b} != set() and len([1 for who, a, b in same if a < 3.4 < b]) == 1
