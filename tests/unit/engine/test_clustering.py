"""Clustering on synthetic voice prints with a known answer."""
import dataclasses

import numpy as np
import pytest

from diarizer.clustering import ClusteringConfig, assign_per_window, cannot_links, centroids_of, cluster


def voices(counts, dim=192, spread=0.25, seed=0):
    """Embeddings around len(counts) random, well separated centres; returns (x, true labels)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(counts), dim))
    x = np.concatenate([c + spread * rng.standard_normal((n, dim)) for c, n in zip(centres, counts)])
    return x, np.repeat(np.arange(len(counts)), counts)


def same_partition(a, b):
    return len(set(zip(a, b))) == len(set(a)) == len(set(b))


@pytest.mark.parametrize("counts", [[10], [10, 8], [6, 9, 12], [5, 5, 5, 5, 5]])
def test_estimates_the_number_of_speakers(counts):
    x, truth = voices(counts)
    labels = cluster(x, ClusteringConfig())
    assert labels.max() + 1 == len(counts)
    assert same_partition(labels, truth)


def test_a_few_stray_embeddings_do_not_become_a_speaker():
    x, _ = voices([12, 12, 1], seed=1)
    labels = cluster(x, ClusteringConfig(min_cluster_size=3))
    assert labels.max() + 1 == 2


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_an_exact_speaker_count_is_obeyed(n):
    x, _ = voices([8, 8, 8], seed=2)
    assert cluster(x, ClusteringConfig(), num_speakers=n).max() + 1 == n


def test_bounds_clip_the_estimate():
    x, _ = voices([8, 8, 8, 8], seed=3)
    assert cluster(x, ClusteringConfig(), max_speakers=2).max() + 1 == 2
    x, _ = voices([20], seed=4)
    assert cluster(x, ClusteringConfig(), min_speakers=2).max() + 1 == 2


def test_tiny_inputs():
    assert len(cluster(np.zeros((0, 192)), ClusteringConfig())) == 0
    assert list(cluster(np.ones((1, 192)), ClusteringConfig())) == [0]


def test_local_speakers_of_one_window_get_different_speakers():
    x, truth = voices([6, 6], seed=5)
    centroids = centroids_of(x, truth)
    # Two embeddings of speaker 0 in the same window: they cannot both be speaker 0.
    window_of = np.array([0, 0] + list(range(1, len(x) - 1)))
    labels = assign_per_window(x, centroids, window_of)
    assert labels[0] != labels[1]
    assert (labels[2:] == truth[2:]).all()


def test_without_constraints_the_linkage_is_scipys_average_linkage():
    from scipy.cluster.hierarchy import linkage

    from diarizer.clustering import constrained_linkage, l2_normalise

    x, _ = voices([7, 9, 5], seed=6)
    x = l2_normalise(x)
    tree, constrained = constrained_linkage(x, cannot_links(x, np.arange(len(x))))
    reference = linkage(x, method="average", metric="cosine")
    assert constrained == len(x) - 1
    np.testing.assert_allclose(np.sort(tree[:, 2]), np.sort(reference[:, 2]), atol=1e-5)


def test_voices_heard_together_stay_apart_until_only_such_merges_are_left():
    from diarizer.clustering import constrained_linkage, cut_into, l2_normalise

    # Two voices so alike that plain clustering joins them; each window holds one print of each.
    rng = np.random.default_rng(7)
    centre = rng.standard_normal(192)
    a = centre + 0.2 * rng.standard_normal((6, 192))
    b = centre + 0.6 * rng.standard_normal(192) + 0.2 * rng.standard_normal((6, 192))
    x = l2_normalise(np.concatenate([a, b]))
    windows = np.concatenate([np.arange(6), np.arange(6)])
    tree, constrained = constrained_linkage(x, cannot_links(x, windows))
    assert constrained == len(x) - 2  # everything merges into two voices before a constraint breaks
    two = cut_into(tree, 2)
    assert same_partition(two, np.repeat([0, 1], 6))
    assert cut_into(tree, 1).max() == 0  # an exact count of 1 may still break the constraint
    labels = cluster(x, ClusteringConfig(method="constrained", min_similarity=0.0), groups=windows)
    assert same_partition(labels, np.repeat([0, 1], 6))


def test_speaker_floor_in_seconds_of_speech():
    x, truth = voices([10, 10, 3], seed=8)
    seconds = np.where(truth == 2, 0.5, 2.0)  # the third voice: 1.5 s of speech in all
    assert cluster(x, ClusteringConfig(min_speaker_seconds=3.0), seconds=seconds).max() + 1 == 2
    assert cluster(x, ClusteringConfig(min_speaker_seconds=1.0), seconds=seconds).max() + 1 == 3


def test_a_voice_the_segmentation_split_in_one_window_stays_one_speaker():
    # One voice, 12 windows; in four of them the segmentation model split it into two local
    # speakers (two prints of one window). Those prints are alike, so they constrain nothing.
    x, _ = voices([16], seed=9)
    windows = np.concatenate([np.arange(12), [2, 5, 7, 10]])
    assert cannot_links(x, windows, same_voice=0.75).sum() == 0
    assert cluster(x, ClusteringConfig(), groups=windows).max() + 1 == 1
    # Taken at their word (no same-voice rule) the split prints would found a second speaker.
    assert cluster(x, ClusteringConfig(same_voice=np.inf), groups=windows).max() + 1 == 2


def test_different_voices_in_one_window_stay_constrained():
    x, truth = voices([6, 6], seed=10)
    windows = np.concatenate([np.arange(6), np.arange(6)])
    cannot = cannot_links(x, windows, same_voice=0.75)
    assert cannot.sum() == 2 * 6  # each window's pair, both ways
    assert same_partition(cluster(x, ClusteringConfig(), groups=windows), truth)


def test_a_split_voice_is_assigned_to_one_speaker():
    x, truth = voices([6, 6], seed=11)
    centroids = centroids_of(x, truth)
    window_of = np.array([0, 0] + list(range(1, len(x) - 1)))  # prints 0 and 1: speaker 0, one window
    labels = assign_per_window(x, centroids, window_of, same_voice=0.75)
    assert labels[0] == labels[1] == 0
    assert (labels == truth).all()


def test_the_busiest_window_counts_a_split_voice_once():
    from diarizer.clustering import most_voices_heard_together

    x, _ = voices([3, 1], seed=12)
    embeddings = np.full((2, 3, x.shape[1]), np.nan)
    embeddings[0] = x[:3]  # window 0: one voice split in three
    embeddings[1, :2] = x[[0, 3]]  # window 1: two voices
    use = ~np.isnan(embeddings[..., 0])
    assert most_voices_heard_together(embeddings, use, same_voice=0.75) == 2
    assert most_voices_heard_together(embeddings, use, same_voice=np.inf) == 3


def mixed_prints(a, b, share, n, rng, spread=0.01):
    """n prints of speech that is `share` voice a and the rest voice b (unit vectors a, b)."""
    return np.stack([share * a + (1 - share) * b + spread * rng.standard_normal(len(a)) for _ in range(n)])


def test_a_cluster_of_prints_mixing_two_voices_is_not_a_third_speaker():
    from diarizer.clustering import l2_normalise

    rng = np.random.default_rng(21)
    a, b = l2_normalise(rng.standard_normal((2, 192)))
    pure_a = a + 0.01 * rng.standard_normal((10, 192))
    pure_b = b + 0.01 * rng.standard_normal((10, 192))
    mixed = mixed_prints(a, b, 0.5, 4, rng)
    x = np.concatenate([pure_a, pure_b, mixed])
    config = ClusteringConfig(min_speaker_seconds=0.0, min_speaker_fraction=0.0, min_similarity=0.8)
    assert cluster(x, dataclasses.replace(config, mixture_fit=0.0)).max() + 1 == 3
    labels = cluster(x, config)
    assert labels.max() + 1 == 2
    assert same_partition(labels[:20], np.repeat([0, 1], 10))


def test_a_third_voice_is_not_taken_for_a_mixture():
    from diarizer.clustering import l2_normalise

    # Voice prints share a common direction (different people's are about 0.5 alike, as CAM++'s are);
    # the third voice talks least, so it is the one that could be taken for a mix of the other two.
    rng = np.random.default_rng(22)
    common, *own = l2_normalise(rng.standard_normal((4, 192)))
    centres = l2_normalise(common + np.stack(own))
    counts = [10, 10, 4]
    x = np.concatenate([c + 0.01 * rng.standard_normal((k, 192)) for c, k in zip(centres, counts)])
    truth = np.repeat(np.arange(3), counts)
    labels = cluster(x, ClusteringConfig(min_speaker_seconds=0.0, min_speaker_fraction=0.0))
    assert same_partition(labels, truth)


def test_mixture_fit_measures_the_distance_to_the_plane_of_two_heavier_clusters():
    from diarizer.clustering import l2_normalise, mixture_fits

    rng = np.random.default_rng(23)
    a, b, c = l2_normalise(rng.standard_normal((3, 192)))
    mix = l2_normalise(0.6 * a + 0.4 * b)
    centroids = np.stack([a, b, mix, c])
    fit, pair = mixture_fits(centroids, np.array([10.0, 9.0, 2.0, 1.0]))
    assert fit[2] == pytest.approx(1.0) and sorted(pair[2]) == [0, 1]
    assert fit[3] < 0.3  # a voice of its own is far from every plane of the others
    assert fit[0] == 0.0 and fit[1] == 0.0  # nothing heavier to be a mix of
    # A difference of two voices (negative weight) is not a mix.
    diff = l2_normalise(a - 0.8 * b)
    fit, _ = mixture_fits(np.stack([a, b, diff]), np.array([10.0, 9.0, 2.0]))
    assert fit[2] == 0.0


def pairs_of_voices(similarities, size=5, seed=24):
    """Two voices per entry, `similarity` alike (cosine), every pair orthogonal to the others; prints
    nearly identical within a voice. Returns (x, labels of the 2 * len(similarities) voices)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((192, 2 * len(similarities))))[0].T
    centres = []
    for i, s in enumerate(similarities):
        first, other = basis[2 * i], basis[2 * i + 1]
        centres += [first, s * first + np.sqrt(1 - s * s) * other]
    x = np.concatenate([c + 1e-4 * rng.standard_normal((size, 192)) for c in centres])
    return x, np.repeat(np.arange(len(centres)), size)


def test_the_count_is_the_one_that_holds_over_the_widest_stretch_of_cuts():
    # Two pairs of voices, 0.61 and 0.59 alike. A cut at 0.6 joins the first pair only: 3 speakers,
    # a count that holds for cuts 0.60-0.61 alone. Between 0.5 and 0.59 both pairs join (2 speakers,
    # ten cuts); from 0.62 to 0.7 neither does (4, nine cuts).
    x, truth = pairs_of_voices([0.61, 0.59])
    config = ClusteringConfig(min_similarity=0.6, min_speaker_seconds=0.0, min_speaker_fraction=0.0, mixture_fit=0.0)
    assert cluster(x, dataclasses.replace(config, cut_spread=0.0)).max() + 1 == 3
    for spread in (0.09, 0.1, 0.11):
        labels = cluster(x, dataclasses.replace(config, cut_spread=spread))
        assert labels.max() + 1 == 2
        assert same_partition(labels, truth // 2)


def test_a_tie_between_counts_goes_to_the_one_found_nearest_the_tuned_cut():
    # Pairs 0.595 and 0.615 alike, cuts 0.58-0.62: 2 speakers at 0.58 and 0.59, 3 at 0.60 and 0.61,
    # 4 at 0.62. Two cuts each for 2 and 3; 3 is the count at the tuned cut itself.
    x, _ = pairs_of_voices([0.595, 0.615])
    config = ClusteringConfig(min_similarity=0.6, cut_spread=0.02, min_speaker_seconds=0.0,
                              min_speaker_fraction=0.0, mixture_fit=0.0)
    assert cluster(x, config).max() + 1 == 3
    assert cluster(x, dataclasses.replace(config, min_similarity=0.59)).max() + 1 == 2  # 0.57-0.61: 2, 2, 2, 3, 3
