"""Who is who across windows: agglomerative clustering of voice prints with scipy.

1. Centroid-linkage AHC on L2-normalised embeddings, cut at a distance threshold (or at the number
   of speakers the caller gave, or clipped to their min/max bounds).
2. Clusters too small to be a speaker (a few stray embeddings) are not speakers: their members
   join the nearest real cluster. "Too small" scales with how many embeddings the file has.
3. Every (window, local speaker) is then assigned to a centroid, with the constraint that two local
   speakers of one window never get the same global speaker (Hungarian assignment per window).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class ClusteringConfig:
    threshold: float = 0.75  # euclidean distance between unit vectors (cosine similarity 0.72)
    min_cluster_size: int = 2  # absolute floor for a cluster to count as a speaker ...
    # ... or this fraction of all embeddings, whichever is larger: on a 3-hour recording (~4,000 voice
    # prints) pairs of stray prints otherwise pass for speakers (10 found where 6 talk; 5 with it).
    min_cluster_fraction: float = 0.005


def l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def _relabel(labels: np.ndarray) -> np.ndarray:
    _, dense = np.unique(labels, return_inverse=True)
    return dense


def _centroids(x: np.ndarray, labels: np.ndarray, keep: list[int]) -> np.ndarray:
    return l2_normalise(np.stack([x[labels == k].mean(axis=0) for k in keep]))


def _absorb_small(x: np.ndarray, labels: np.ndarray, min_size: int) -> np.ndarray:
    """Move members of clusters smaller than min_size to the nearest large cluster."""
    ids, sizes = np.unique(labels, return_counts=True)
    large = [k for k, s in zip(ids, sizes) if s >= min_size]
    if not large:  # nothing is big enough: the largest cluster stands for the speaker
        large = [ids[np.argmax(sizes)]]
    if len(large) == len(ids):
        return _relabel(labels)
    centroids = _centroids(x, labels, large)
    small = ~np.isin(labels, large)
    out = labels.copy()
    out[small] = np.asarray(large)[np.argmax(x[small] @ centroids.T, axis=1)]
    return _relabel(out)


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


def _cut(tree: np.ndarray, x: np.ndarray, min_size: int, target: int) -> np.ndarray:
    """Labels with `target` clusters: the finest cut whose large clusters number `target`, so that
    stray embeddings do not take a speaker's place; failing that, the plain `target`-cluster cut."""
    for k in range(target, min(len(x), target + 20) + 1):
        labels = _absorb_small(x, cut_into(tree, k), min_size)
        count = labels.max() + 1
        if count == target:
            return labels
        if count > target:
            break
    return cut_into(tree, target)


def cluster(
    embeddings: np.ndarray,
    config: ClusteringConfig,
    num_speakers: int | None = None,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
) -> np.ndarray:
    """Cluster labels 0..K-1 for (N, D) embeddings."""
    n = len(embeddings)
    if n == 0:
        return np.zeros(0, dtype=int)
    if n == 1:
        return np.zeros(1, dtype=int)
    x = l2_normalise(embeddings.astype(np.float64))
    min_size = max(config.min_cluster_size, int(np.ceil(config.min_cluster_fraction * n)))
    min_size = min(min_size, max(1, n // max(num_speakers or 1, min_speakers or 1)))
    tree = linkage(x, method="centroid", metric="euclidean")
    if num_speakers:
        return _cut(tree, x, min_size, min(num_speakers, n))
    labels = _absorb_small(x, fcluster(tree, config.threshold, criterion="distance"), min_size)
    count = labels.max() + 1
    if min_speakers and count < min_speakers:
        return _cut(tree, x, min_size, min(min_speakers, n))
    if max_speakers and count > max_speakers:
        return _cut(tree, x, 1, max_speakers)
    return labels


def centroids_of(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(K, D) unit-length mean of each cluster 0..K-1."""
    return _centroids(l2_normalise(embeddings.astype(np.float64)), labels, list(range(labels.max() + 1)))


def assign_per_window(embeddings: np.ndarray, centroids: np.ndarray, window_of: np.ndarray) -> np.ndarray:
    """Nearest centroid for each embedding; local speakers of one window get distinct speakers."""
    score = l2_normalise(embeddings.astype(np.float64)) @ centroids.T
    out = np.empty(len(embeddings), dtype=int)
    for w in np.unique(window_of):
        rows = np.flatnonzero(window_of == w)
        if len(rows) > len(centroids):  # more local speakers than speakers: plain nearest centroid
            out[rows] = score[rows].argmax(axis=1)
            continue
        r, c = linear_sum_assignment(-score[rows])
        out[rows[r]] = c
    return out
