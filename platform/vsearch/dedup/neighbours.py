"""Batch kNN self-join of listing vectors within shards: the image and text channels' candidates.

The join never materialises an n x n matrix: every shard's vectors go into one FAISS index
(exact inner product up to ``exact_below`` vectors, IVF-Flat above it) and the queries are searched
in batches, so memory is the index plus ``n x k`` results. Shards are the (category, source) pairs:
a listing searches the shards of its own category (or all, ``within_category=False``), every
source but its own when ``cross_source_only`` (a two-shop benchmark), and the lists of the shards
it searched are merged into its top k.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from vsearch.index.ivf import ivf_lists, training_rows

__all__ = ["Neighbours", "ShardIndex", "merge_neighbours", "vector_neighbours"]


@dataclass
class Neighbours:
    """A channel's candidates: for each query row its best ``k`` other rows, best first.

    ``query``, ``neighbour``: ``(m,) int64`` row numbers of the listing table; ``score``:
    ``(m,) float32`` (cosine for vectors, normalised BM25 for the lexical channel); ``rank``:
    ``(m,) int32``, 0 for a query's best candidate. Rows are grouped by query, ranks ascending.
    """

    query: np.ndarray
    neighbour: np.ndarray
    score: np.ndarray
    rank: np.ndarray

    @classmethod
    def empty(cls) -> Neighbours:
        return cls(
            np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
            np.zeros(0, np.int32),
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.query)


def merge_neighbours(parts: list[Neighbours], k: int) -> Neighbours:
    """Keep each query's ``k`` best over ``parts`` (ties: lower neighbour row first), re-ranked.

    A (query, neighbour) pair found in several parts is kept once, with its best score.
    """
    parts = [p for p in parts if len(p)]
    if not parts:
        return Neighbours.empty()
    q = np.concatenate([p.query for p in parts])
    n = np.concatenate([p.neighbour for p in parts])
    s = np.concatenate([p.score for p in parts]).astype(np.float32)
    order = np.lexsort((n, -s, q))
    q, n, s = q[order], n[order], s[order]
    # Drop repeats of a (query, neighbour) pair: keep the first (best-scored) occurrence.
    pair_order = np.lexsort((-s, n, q))
    first = np.ones(len(q), bool)
    first[1:] = (q[pair_order][1:] != q[pair_order][:-1]) | (
        n[pair_order][1:] != n[pair_order][:-1]
    )
    keep = np.zeros(len(q), bool)
    keep[pair_order[first]] = True
    q, n, s = q[keep], n[keep], s[keep]
    starts = np.r_[0, np.flatnonzero(q[1:] != q[:-1]) + 1]
    rank = np.arange(len(q)) - np.repeat(starts, np.diff(np.r_[starts, len(q)]))
    top = rank < k
    return Neighbours(q[top], n[top], s[top], rank[top].astype(np.int32))


class ShardIndex:
    """The vectors of one shard in a FAISS inner-product index.

    ``vectors``: ``(n, d) float32``, L2-normalised (scores are cosines); ``rows``: ``(n,) int64``,
    their row numbers in the listing table. Up to ``exact_below`` vectors the index is exact
    (``IndexFlatIP``); above, IVF-Flat with about ``4 sqrt(n)`` lists probed ``nprobe`` at a time.
    """

    def __init__(
        self, vectors: np.ndarray, rows: np.ndarray, exact_below: int = 50_000, nprobe: int = 32
    ) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.rows = np.asarray(rows, dtype=np.int64)
        n, d = vectors.shape
        if n <= exact_below:
            self.index: faiss.Index = faiss.IndexFlatIP(d)
            self.kind = "Flat"
        else:
            nlist = ivf_lists(n)
            quantizer = faiss.IndexFlatIP(d)
            ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            ivf.train(vectors[training_rows(n, nlist)])
            ivf.nprobe = min(nprobe, nlist)
            self.index = ivf
            self.kind = f"IVF{nlist},Flat nprobe={ivf.nprobe}"
        self.index.add(vectors)

    def __len__(self) -> int:
        return len(self.rows)

    def search(
        self, queries: np.ndarray, query_rows: np.ndarray, k: int, batch: int = 4096
    ) -> Neighbours:
        """Each query's ``k`` best rows of this shard other than itself, in batches of ``batch``."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        query_rows = np.asarray(query_rows, dtype=np.int64)
        fetch = min(k + 1, len(self.rows))
        parts = []
        for start in range(0, len(queries), batch):
            scores, ids = self.index.search(queries[start : start + batch], fetch)
            q = np.repeat(query_rows[start : start + batch], fetch)
            found = ids.reshape(-1)
            valid = found >= 0
            nb = np.where(valid, self.rows[np.maximum(found, 0)], -1)
            keep = valid & (nb != q)
            parts.append(
                Neighbours(
                    q[keep], nb[keep], scores.reshape(-1)[keep], np.zeros(keep.sum(), np.int32)
                )
            )
        return merge_neighbours(parts, k)


def vector_neighbours(
    vectors: np.ndarray,
    categories: np.ndarray,
    sources: np.ndarray,
    k: int,
    *,
    valid: np.ndarray | None = None,
    queries: np.ndarray | None = None,
    cross_source_only: bool = False,
    within_category: bool = True,
    exact_below: int = 50_000,
    nprobe: int = 32,
) -> Neighbours:
    """Top-``k`` candidates of every query row among the other rows, by cosine.

    Args:
        vectors: ``(n, d) float32``, L2-normalised; rows with ``valid`` False (no image, empty
            title) are neither searched nor returned.
        categories, sources: ``(n,)`` shard keys of every row.
        queries: ``(n,) bool`` rows to find candidates for (the batch-query mode); None: all.
    Returns:
        ``Neighbours`` over row numbers; never a row paired with itself.
    """
    n = len(vectors)
    valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    asked = valid if queries is None else valid & np.asarray(queries, bool)
    categories = np.asarray(categories).astype(str)
    sources = np.asarray(sources).astype(str)
    groups = categories if within_category else np.full(n, "all")
    parts: list[Neighbours] = []
    for group in np.unique(groups[asked]):
        in_group = groups == group
        shard_keys = sources if cross_source_only else np.full(n, "*")
        for key in np.unique(shard_keys[in_group & valid]):
            members = np.flatnonzero(in_group & valid & (shard_keys == key))
            ask = np.flatnonzero(
                in_group & asked & (shard_keys != key if cross_source_only else True)
            )
            if len(ask) == 0 or len(members) == 0:
                continue
            shard = ShardIndex(vectors[members], members, exact_below, nprobe)
            parts.append(shard.search(vectors[ask], ask, k))
    return merge_neighbours(parts, k)
