"""Who is who across windows: agglomerative clustering of voice prints with scipy.

1. Average-linkage AHC on cosine similarity with cannot-link constraints: two local speakers of one
   window are two people, so clusters holding such a pair never merge (`constrained_linkage`) --
   unless their two prints are so alike that the segmentation model must have split one voice. The
   count is the one that holds over the widest stretch of minimum average similarities around the
   tuned cut (or the number of speakers the caller gave, or clipped to their min/max bounds). The
   constraints are what make the count hold across thresholds and recording conditions: a single
   similarity cut alone sat on a knife edge, and the stretch moves fewer counts again (BENCHMARKS.md).
2. Clusters too small to be a speaker (a few stray embeddings) are not speakers: they join the
   nearest real cluster they were never heard beside. "Too small" is in seconds of distinct speech,
   relative to how much speech the file has.
   A cluster whose centroid lies between two heavier clusters' (a positive mix of the two explains
   it almost wholly) is not a speaker either: it is made of prints that mix those two voices, where
   the segmentation model kept them in one local speaker. Its prints go to the nearer of the two.
3. Every (window, local speaker) is then assigned to a centroid, with the constraint that two local
   speakers of one window (other than one split voice) never get the same global speaker (Hungarian
   assignment per window).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components


@dataclass(frozen=True)
class ClusteringConfig:
    # "constrained": average linkage that never joins voices heard side by side in one window (tuned,
    # see BENCHMARKS.md); "centroid": the previous engine's plain centroid linkage, kept for comparison.
    method: str = "constrained"
    threshold: float = 0.75  # centroid: euclidean distance between unit vectors (cosine similarity 0.72)
    min_similarity: float = 0.6  # constrained: clusters less alike than this (average cosine) stay apart
    # constrained: the count is the one that holds over the widest stretch of cuts (steps of 0.01) within
    # min_similarity +- cut_spread, not the count at one cut (0 = the one cut). Chosen on the tuning part
    # (59 -> 61 of 80 counts exact; held-out 63 -> 62 of 77). Moving min_similarity by -/+10 % changes 5
    # and 7 held-out counts instead of 7 and 12; moving cut_spread by 10 % changes none (BENCHMARKS.md).
    cut_spread: float = 0.1
    min_cluster_size: int = 2  # absolute floor for a cluster to count as a speaker ...
    # ... or this fraction of all embeddings, whichever is larger: on a 3-hour recording (~4,000 voice
    # prints) pairs of stray prints otherwise pass for speakers (10 found where 6 talk; 5 with it).
    min_cluster_fraction: float = 0.005
    # With the speech behind each print known (the pipeline knows it), the floors are in seconds of
    # distinct speech, which does not depend on how densely windows sample the file. 2.5 s since the
    # stretch of cuts (tuning part, counts exact of 80 at 2 / 2.25 / 2.5 / 2.75 / 3 s: 61 / 63 / 65 / 64 /
    # 63; held-out 62 -> 64 of 77; the development set loses a speaker with 2.0-2.25 s, 12 -> 11 of 12).
    min_speaker_seconds: float = 2.5
    min_speaker_fraction: float = 0.005
    # Two local speakers of one window whose prints are at least this alike (cosine) are one voice the
    # segmentation model split in two -- it does on long monologues and band-limited audio, and the
    # false constraint then keeps a second cluster of that voice alive (a monologue found as 3 people).
    # Different people in one window stay well below it (tuning part: 52 -> 55 of 78 counts exact,
    # 55 / 54 at -/+10 %; BENCHMARKS.md).
    same_voice: float = 0.75
    # A cluster at least this well explained by a positive mix of two heavier clusters' centroids
    # (cosine to its projection onto their plane) is a mixture of those two voices, not a speaker
    # (0 = off). Tuning part, counts only: 57 of 80 exact without it, 60 / 59 / 57 at 0.765 / 0.85 /
    # 0.935 (-10 %, chosen, +10 %); from 0.72 down genuine speakers are dissolved (BENCHMARKS.md).
    mixture_fit: float = 0.85


def l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def close_calls(prints: np.ndarray, centroids: np.ndarray, margin: float) -> np.ndarray:
    """True for each (unit) print whose two most alike (unit) centroids are within `margin` (cosine) of each other."""
    two_best = np.sort(prints @ centroids.T, axis=1)[:, -2:]
    return two_best[:, 1] - two_best[:, 0] < margin


def cannot_links(x: np.ndarray, groups: np.ndarray, same_voice: float = np.inf) -> np.ndarray:
    """(N, N) bool: prints i and j are of one group (one window) and so, different people -- except
    pairs at least `same_voice` alike (unit vectors x), which are one voice split in two."""
    cannot = groups[:, None] == groups[None, :]
    np.fill_diagonal(cannot, False)
    return cannot & ((x @ x.T) < same_voice)


def voice_groups(x: np.ndarray, same_voice: float) -> np.ndarray:
    """(N,) label of each print of one window: prints at least `same_voice` alike share a voice."""
    if len(x) < 2:
        return np.zeros(len(x), dtype=int)
    x = l2_normalise(x.astype(np.float64))
    return connected_components((x @ x.T) >= same_voice, directed=False)[1]


def most_voices_heard_together(embeddings: np.ndarray, use: np.ndarray, same_voice: float) -> int:
    """Most distinct voices among one window's prints (embeddings (windows, local, D), `use` which
    of them count): a lower bound on the speaker count. A split voice counts once."""
    return max(
        (int(voice_groups(embeddings[w][use[w]], same_voice).max()) + 1 for w in np.flatnonzero(use.any(axis=1))),
        default=0,
    )


def _relabel(labels: np.ndarray) -> np.ndarray:
    _, dense = np.unique(labels, return_inverse=True)
    return dense


def _centroids(x: np.ndarray, labels: np.ndarray, keep: list[int]) -> np.ndarray:
    return l2_normalise(np.stack([x[labels == k].mean(axis=0) for k in keep]))


def _absorb_small(
    x: np.ndarray,
    labels: np.ndarray,
    min_size: float,
    weights: np.ndarray | None = None,
    cannot: np.ndarray | None = None,
) -> np.ndarray:
    """Move members of clusters lighter than min_size (summed `weights`, default 1 each) to the
    nearest heavy cluster. With `cannot` links, a light cluster never joins a heavy one it was heard
    beside (a print of each in one window): if every heavy cluster was, it is a speaker after all."""
    weights = np.ones(len(x)) if weights is None else weights
    ids = np.unique(labels)
    mass = np.array([weights[labels == k].sum() for k in ids])
    large = [k for k, m in zip(ids, mass) if m >= min_size]
    if not large:  # nothing is big enough: the largest cluster stands for the speaker
        large = [ids[np.argmax(mass)]]
    if len(large) == len(ids):
        return _relabel(labels)
    centroids = _centroids(x, labels, large)
    out = labels.copy()
    for k in ids:
        if k in large:
            continue
        members = labels == k
        score = x[members].mean(axis=0) @ centroids.T
        if cannot is not None:
            beside = [cannot[np.ix_(labels == big, members)].any() for big in large]
            score = np.where(beside, -np.inf, score)
            if np.all(np.isinf(score)):
                continue
        out[members] = large[int(np.argmax(score))]
    return _relabel(out)


def mixture_fits(centroids: np.ndarray, mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How well each cluster's centroid is a mix of two heavier clusters' centroids.

    centroids: (K, D) unit vectors; mass: (K,) weight of each cluster. For every cluster k and pair
    (a, b) of clusters heavier than k, the projection of k's centroid onto the plane of a's and b's is
    alpha a + beta b (least squares, from the Gram matrix); with both weights positive (a mix, not a
    difference), its length is the cosine between k's centroid and the plane. Returns (K,) the best
    such cosine (0 where no pair qualifies) and (K, 2) the pair that gives it.
    """
    count = len(centroids)
    gram = centroids @ centroids.T
    ab = gram[None, :, :]  # a.b, indexed [k, a, b]
    ka = gram[:, :, None]
    kb = gram[:, None, :]
    det = np.maximum(1.0 - ab**2, 1e-9)
    alpha, beta = (ka - ab * kb) / det, (kb - ab * ka) / det
    fit = np.sqrt(np.clip(alpha * ka + beta * kb, 0.0, 1.0))
    idx = np.arange(count)
    heavier = mass[None, :] > mass[:, None]  # [k, a]
    valid = (alpha > 0) & (beta > 0) & heavier[:, :, None] & heavier[:, None, :] & (idx[:, None] < idx[None, :])[None]
    fit = np.where(valid, fit, 0.0).reshape(count, count * count)
    best = fit.argmax(axis=1)
    return fit[idx, best], np.stack([best // count, best % count], axis=1)


def dissolve_mixtures(x: np.ndarray, labels: np.ndarray, weights: np.ndarray, min_fit: float) -> np.ndarray:
    """Dissolve, best-explained first, every cluster whose centroid is a mix of two heavier ones
    (`mixture_fits` at least `min_fit`): each of its prints joins the nearer of the two."""
    labels = labels.copy()
    while labels.max() >= 2:
        ids = list(range(labels.max() + 1))
        centroids = _centroids(x, labels, ids)
        fit, pair = mixture_fits(centroids, np.array([weights[labels == k].sum() for k in ids]))
        k = int(np.argmax(fit))
        if fit[k] < min_fit:
            break
        members = labels == k
        labels[members] = pair[k][(x[members] @ centroids[pair[k]].T).argmax(axis=1)]
        labels = _relabel(labels)
    return labels


def cut_into(tree: np.ndarray, k: int) -> np.ndarray:
    """Exactly k clusters: replay the first n - k merges of the linkage.

    (fcluster's "maxclust" may return fewer than k for centroid linkage, whose merge heights
    are not monotonic.)
    """
    n = len(tree) + 1
    parent = list(range(2 * n - 1))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for step, (a, b, _, _) in enumerate(tree[: n - max(k, 1)]):
        parent[root(int(a))] = n + step
        parent[root(int(b))] = n + step
    return _relabel(np.array([root(i) for i in range(n)]))


def _cut(
    tree: np.ndarray, x: np.ndarray, min_size: float, target: int,
    weights: np.ndarray | None = None, cannot: np.ndarray | None = None,
) -> np.ndarray:
    """Labels with `target` clusters: the finest cut whose large clusters number `target`, so that
    stray embeddings do not take a speaker's place; failing that, the plain `target`-cluster cut."""
    for k in range(target, min(len(x), target + 20) + 1):
        labels = _absorb_small(x, cut_into(tree, k), min_size, weights, cannot)
        count = labels.max() + 1
        if count == target:
            return labels
        if count > target:
            break
    return cut_into(tree, target)


def constrained_linkage(x: np.ndarray, cannot: np.ndarray) -> tuple[np.ndarray, int]:
    """Average-linkage AHC on cosine similarity in which two clusters never merge while they hold
    a cannot-linked pair of voice prints (`cannot_links`: voices the segmentation model heard side
    by side in one window are different people), for as long as any other merge is left.

    x: (N, D) unit vectors; cannot: (N, N) bool, symmetric. Returns a scipy-style linkage matrix
    (distance column = 1 - average cosine similarity) and how many of its merges, from the first,
    respect the constraints; the merges after those break them (only an exact count asks for them).
    Within the constrained part the merge similarities never increase (the best average similarity
    cannot grow by averaging or by forbidding pairs), so any threshold cuts it at one place.
    """
    n = len(x)
    sim = (x @ x.T).astype(np.float32)
    cannot = cannot.copy()
    size = np.ones(n)
    node = np.arange(n)  # scipy id of the cluster that row i stands for
    active = np.ones(n, dtype=bool)
    tree = np.zeros((n - 1, 4))

    def allowed_row(i: int) -> np.ndarray:
        row = sim[i].copy()
        row[~active | cannot[i]] = -np.inf
        row[i] = -np.inf
        return row

    def all_allowed() -> np.ndarray:
        out = sim.copy()
        out[cannot | ~active[None, :] | ~active[:, None]] = -np.inf
        np.fill_diagonal(out, -np.inf)
        return out

    allowed = all_allowed()
    best, arg = allowed.max(axis=1), allowed.argmax(axis=1)
    constrained = n - 1
    for step in range(n - 1):
        rows = np.flatnonzero(active)
        i = rows[np.argmax(best[rows])]
        if best[i] == -np.inf:  # every remaining merge joins voices heard together: the constraints go
            constrained = min(constrained, step)
            cannot[:] = False
            allowed = all_allowed()
            best, arg = allowed.max(axis=1), allowed.argmax(axis=1)
            i = rows[np.argmax(best[rows])]
        j = arg[i]
        tree[step] = (min(node[i], node[j]), max(node[i], node[j]), 1.0 - best[i], size[i] + size[j])
        # Merge j into i: average linkage is the size-weighted mean of the two rows (Lance-Williams).
        sim[i] = (size[i] * sim[i] + size[j] * sim[j]) / (size[i] + size[j])
        sim[:, i] = sim[i]
        cannot[i] |= cannot[j]
        cannot[:, i] = cannot[i]
        size[i] += size[j]
        node[i] = n + step
        active[j] = False
        allowed[j] = -np.inf
        allowed[:, j] = -np.inf
        allowed[i] = allowed_row(i)
        allowed[:, i] = allowed[i]
        best[j] = -np.inf
        stale = np.flatnonzero(active & ((arg == i) | (arg == j)))
        best[stale], arg[stale] = allowed[stale].max(axis=1), allowed[stale].argmax(axis=1)
        better = active & (allowed[:, i] > best)
        best[better], arg[better] = allowed[better, i], i
    return tree, constrained


def cluster(
    embeddings: np.ndarray,
    config: ClusteringConfig,
    num_speakers: int | None = None,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
    groups: np.ndarray | None = None,
    seconds: np.ndarray | None = None,
) -> np.ndarray:
    """Cluster labels 0..K-1 for (N, D) embeddings.

    groups (N,): prints of one group are different voices (constrained method), unless at least
    `config.same_voice` alike.
    seconds (N,): distinct speech behind each print; when given, a speaker needs
    `min_speaker_seconds` (or `min_speaker_fraction` of all speech) instead of a print count.
    """
    n = len(embeddings)
    if n == 0:
        return np.zeros(0, dtype=int)
    if n == 1:
        return np.zeros(1, dtype=int)
    x = l2_normalise(embeddings.astype(np.float64))
    wanted = max(num_speakers or 1, min_speakers or 1)
    if seconds is None:
        min_size = max(config.min_cluster_size, int(np.ceil(config.min_cluster_fraction * n)))
        min_size = min(min_size, max(1, n // wanted))
    else:
        total = float(seconds.sum())
        min_size = min(max(config.min_speaker_seconds, config.min_speaker_fraction * total), total / wanted)
    cannot = None
    if config.method == "constrained":
        groups = np.arange(n) if groups is None else np.asarray(groups)
        cannot = cannot_links(x, groups, config.same_voice)
        tree, constrained = constrained_linkage(x, cannot)
    else:
        tree = linkage(x, method="centroid", metric="euclidean")
    if num_speakers:
        return _cut(tree, x, min_size, min(num_speakers, n), seconds, cannot)

    def speakers(first_cut: np.ndarray) -> np.ndarray:
        """The speakers a first cut of the tree leaves: floors, mixtures, the caller's bounds."""
        labels = _absorb_small(x, first_cut, min_size, seconds, cannot)
        if config.mixture_fit > 0:
            labels = dissolve_mixtures(x, labels, np.ones(n) if seconds is None else seconds, config.mixture_fit)
        count = labels.max() + 1
        if min_speakers and count < min_speakers:
            return _cut(tree, x, min_size, min(min_speakers, n), seconds, cannot)
        if max_speakers and count > max_speakers:
            return _cut(tree, x, 1, max_speakers)
        return labels

    if config.method != "constrained":
        return speakers(fcluster(tree, config.threshold, criterion="distance"))
    return _steadiest(tree, constrained, config.min_similarity, config.cut_spread, speakers)


def _steadiest(tree: np.ndarray, constrained: int, centre: float, spread: float, speakers) -> np.ndarray:
    """Labels for the speaker count that holds over the most cuts (average similarity, steps of 0.01)
    within centre +- spread; ties go to the count found nearest the centre, and the labels are those of
    the middle cut giving that count. `speakers(first_cut)` turns a cut of the tree into speakers.

    One cut decides a count on a knife edge: a file whose voices merge at 0.59 and 0.61 flips with it.
    The count a file keeps over a stretch of cuts is the structure of its voices, not of the threshold.
    """
    n = len(tree) + 1
    cuts = np.round(np.arange(centre - spread, centre + spread + 1e-9, 0.01), 4) if spread > 0 else np.array([centre])
    by_merges: dict[int, np.ndarray] = {}  # cuts that allow the same merges give the same speakers
    results = []
    for cut in cuts:
        merges = int(np.sum(tree[:constrained, 2] <= 1.0 - cut))
        if merges not in by_merges:
            by_merges[merges] = speakers(cut_into(tree, n - merges))
        results.append(by_merges[merges])
    counts = np.array([labels.max() + 1 for labels in results])
    values, held = np.unique(counts, return_counts=True)
    widest = values[held == held.max()]
    chosen = min(widest, key=lambda v: np.min(np.abs(cuts[counts == v] - centre)))
    at = np.flatnonzero(counts == chosen)
    return results[at[len(at) // 2]]


def centroids_of(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(K, D) unit-length mean of each cluster 0..K-1."""
    return _centroids(l2_normalise(embeddings.astype(np.float64)), labels, list(range(labels.max() + 1)))


def label_directions(x: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """(count, D) unit-length mean of the rows of x with each label 0..count-1; a zero row for a label
    with no rows (a speaker that lost every print or turn), which is then near no print at all."""
    return l2_normalise(np.stack([x[labels == k].mean(axis=0) if (labels == k).any() else np.zeros(x.shape[1])
                                  for k in range(count)]))


def assign_per_window(
    embeddings: np.ndarray, centroids: np.ndarray, window_of: np.ndarray, same_voice: float = np.inf
) -> np.ndarray:
    """Nearest centroid for each embedding; the voices of one window get distinct speakers (local
    speakers at least `same_voice` alike are one voice and go together)."""
    x = l2_normalise(embeddings.astype(np.float64))
    out = np.empty(len(embeddings), dtype=int)
    for w in np.unique(window_of):
        rows = np.flatnonzero(window_of == w)
        voice = voice_groups(x[rows], same_voice)
        score = l2_normalise(np.stack([x[rows[voice == v]].mean(axis=0) for v in range(voice.max() + 1)])) @ centroids.T
        if len(score) > len(centroids):  # more voices than speakers: plain nearest centroid
            out[rows] = score.argmax(axis=1)[voice]
            continue
        r, c = linear_sum_assignment(-score)
        chosen = np.empty(len(score), dtype=int)
        chosen[r] = c
        out[rows] = chosen[voice]
    return out
