"""Property tests (hypothesis): merging per-shard results and full-shortlist shard search agree
with brute force on any input."""

from __future__ import annotations

import faiss
import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from vsearch.eval.metrics import exact_topk
from vsearch.index.searcher import merge_topk
from vsearch.index.shard import ShardIndex

faiss.omp_set_num_threads(1)


def _meta(n: int) -> pa.Table:
    return pa.table(
        {
            "image_id": [f"i{i}" for i in range(n)],
            "product_id": [f"p{i}" for i in range(n)],
            "category": ["c"] * n,
            "title": ["t"] * n,
            "quality": pa.array(np.ones(n, np.float32)),
            "popularity": pa.array(np.zeros(n, np.float32)),
        }
    )


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=4),
    k=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_merge_topk_equals_sorting_everything(sizes: list[int], k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    per_shard, every = [], []
    for j, n in enumerate(sizes):
        scores = np.sort(rng.normal(size=(1, n)).astype(np.float32), axis=1)[:, ::-1]
        keep = min(k, n)
        padded_s = np.full((1, k), -np.inf, np.float32)
        padded_r = np.full((1, k), -1, np.int64)
        padded_s[0, :keep] = scores[0, :keep]
        padded_r[0, :keep] = np.arange(keep)
        per_shard.append((padded_s, padded_r))
        every += [(float(s), j) for s in scores[0, :keep]]
    merged_s, merged_j, _ = merge_topk(per_shard, k)
    expected = sorted((s for s, _ in every), reverse=True)[:k]
    got = [float(s) for s in merged_s[0] if np.isfinite(s)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert all(j >= 0 for j in merged_j[0, : len(got)])


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 60), k=st.integers(1, 10), seed=st.integers(0, 2**16))
def test_full_shortlist_shard_search_is_exact(n: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.normal(size=(3, 16)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    shard = ShardIndex.build("s", vectors, _meta(n), rescore_dtype="float32")
    scores, rows = shard.search(queries, k, shortlist=n)
    exact_scores, _ = exact_topk(queries, vectors, k)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-6)
    assert np.all((rows[:, : min(k, n)] >= 0) & (rows[:, : min(k, n)] < n))
