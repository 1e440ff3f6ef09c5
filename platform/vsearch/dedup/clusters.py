"""Clusters of duplicate listings from accepted pairs, with a guard against giant clusters.

Plain connected components chain unrelated listings together through a few wrong pairs (A~B,
B~C, ... until half a category is "one product"). Here pairs are merged strongest first, and a
merge that would make a cluster larger than ``max_size`` is refused, so an oversized component is
split along its weakest edges. Pairs are ordered by (score descending, then ids), so the clusters
do not depend on the order of the input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Clustering", "cluster_pairs"]


@dataclass
class Clustering:
    """``clusters``: lists of member ids (2 or more, sorted), largest first, then by first id;
    ``representatives``: one member of each; ``refused``: accepted pairs not merged because of
    the size cap."""

    clusters: list[list[str]]
    representatives: list[str]
    refused: int


def cluster_pairs(
    ids: list[str],
    a: np.ndarray,
    b: np.ndarray,
    score: np.ndarray,
    max_size: int,
    quality: np.ndarray | None = None,
) -> Clustering:
    """Cluster the listings ``ids`` (rows) linked by accepted pairs ``(a[i], b[i])``.

    The representative of a cluster is its member of highest ``quality`` (``(n,)``; default all
    equal), then with the most accepted pairs inside the cluster, then the smallest id.
    """
    if max_size < 2:
        raise ValueError(f"max_size must be at least 2, got {max_size}")
    n = len(ids)
    parent = np.arange(n)
    size = np.ones(n, np.int64)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    names = np.asarray(ids, dtype=object)
    lo = np.where(names[a] <= names[b], a, b)
    hi = np.where(names[a] <= names[b], b, a)
    order = sorted(range(len(a)), key=lambda i: (-float(score[i]), names[lo[i]], names[hi[i]]))
    refused = 0
    degree = np.zeros(n, np.int64)
    for i in order:
        x, y = root(int(lo[i])), root(int(hi[i]))
        if x == y:
            degree[lo[i]] += 1
            degree[hi[i]] += 1
            continue
        if size[x] + size[y] > max_size:
            refused += 1
            continue
        if names[x] > names[y]:
            x, y = y, x
        parent[y] = x
        size[x] += size[y]
        degree[lo[i]] += 1
        degree[hi[i]] += 1
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    qual = np.zeros(n) if quality is None else np.asarray(quality, float)
    clusters, reps = [], []
    for members in groups.values():
        if len(members) < 2:
            continue
        best = min(members, key=lambda m: (-qual[m], -degree[m], names[m]))
        clusters.append(sorted(str(names[m]) for m in members))
        reps.append(str(names[best]))
    order_c = sorted(range(len(clusters)), key=lambda c: (-len(clusters[c]), clusters[c][0]))
    return Clustering([clusters[c] for c in order_c], [reps[c] for c in order_c], refused)
