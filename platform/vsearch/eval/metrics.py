"""Retrieval quality and latency metrics: Recall@K, mAP, ANN recall, exact top-k, latency summary.

All functions are pure (numpy + standard library) and validate their inputs, raising ``ValueError``
with a message that says what is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "ann_recall",
    "exact_topk",
    "latency_summary",
    "mean_average_precision",
    "recall_at_k",
]


def _check_k(k: int, name: str = "k") -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {k!r}")


def _check_lengths(ranked: Sequence[object], other: Sequence[object], other_name: str) -> None:
    if len(ranked) == 0:
        raise ValueError("no queries: ranked is empty")
    if len(ranked) != len(other):
        raise ValueError(
            f"length mismatch: ranked has {len(ranked)} queries but {other_name} has {len(other)}"
        )


def recall_at_k(ranked: Sequence[Sequence[str]], truth: Sequence[str], k: int) -> float:
    """Fraction of queries whose true id appears among their first ``k`` ranked ids.

    Args:
        ranked: per query, the retrieved ids best first (any length; shorter than ``k`` is fine).
        truth: per query, the single correct id; ``len(truth) == len(ranked)``.
        k: cut-off, >= 1.

    Returns:
        Recall@k in [0, 1] as a Python float.
    """
    _check_k(k)
    _check_lengths(ranked, truth, "truth")
    hits = sum(1 for ids, t in zip(ranked, truth, strict=True) if t in list(ids)[:k])
    return hits / len(ranked)


def mean_average_precision(
    ranked: Sequence[Sequence[str]], relevant: Sequence[set[str]], k: int | None = None
) -> float:
    """Mean over queries of average precision (AP@k when ``k`` is given).

    For one query with ranked ids ``r_1..r_n`` (cut at ``k``) and relevant set ``R``,
    ``AP = sum_i P@i * [r_i in R] / min(|R|, k)`` where ``P@i`` is the fraction of relevant ids in
    the first ``i``; ``min(|R|, k)`` is ``|R|`` when ``k`` is None. An id repeated in the ranking
    counts only at its first position. A query with an empty relevant set has AP 0.

    Args:
        ranked: per query, the retrieved ids best first.
        relevant: per query, the set of relevant ids; ``len(relevant) == len(ranked)``.
        k: optional cut-off, >= 1.

    Returns:
        mAP in [0, 1] as a Python float.
    """
    if k is not None:
        _check_k(k)
    _check_lengths(ranked, relevant, "relevant")
    total = 0.0
    for ids, rel in zip(ranked, relevant, strict=True):
        rel_set = set(rel)
        if not rel_set:
            continue
        cut = list(ids) if k is None else list(ids)[:k]
        seen: set[str] = set()
        hits = 0
        precision_sum = 0.0
        for i, item in enumerate(cut, start=1):
            if item in rel_set and item not in seen:
                hits += 1
                precision_sum += hits / i
            seen.add(item)
        norm = len(rel_set) if k is None else min(len(rel_set), k)
        total += precision_sum / norm
    return total / len(ranked)


def ann_recall(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean overlap between approximate and exact top-``k`` neighbour ids.

    Args:
        approx: (n, >=k) integer neighbour ids from the approximate index; ``-1`` marks padding
            (fewer results than asked) and never counts as a hit.
        exact: (n, >=k) integer ground-truth neighbour ids, no padding.
        k: cut-off, >= 1.

    Returns:
        ``mean_i |set(approx[i, :k]) ∩ set(exact[i, :k])| / k`` in [0, 1] as a Python float.
    """
    _check_k(k)
    approx = np.asarray(approx)
    exact = np.asarray(exact)
    for name, arr in (("approx", approx), ("exact", exact)):
        if arr.ndim != 2:
            raise ValueError(f"{name} must be a 2-D (n, >=k) id array, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must hold integer ids, got dtype {arr.dtype}")
        if arr.shape[1] < k:
            raise ValueError(f"{name} has {arr.shape[1]} columns, fewer than k={k}")
    if approx.shape[0] != exact.shape[0]:
        raise ValueError(
            f"length mismatch: approx has {approx.shape[0]} rows but exact has {exact.shape[0]}"
        )
    if approx.shape[0] == 0:
        raise ValueError("no queries: approx and exact have 0 rows")
    total = 0
    for a_row, e_row in zip(approx[:, :k], exact[:, :k], strict=True):
        a = {int(x) for x in a_row if x != -1}
        total += len(a & {int(x) for x in e_row})
    return total / (approx.shape[0] * k)


_TOPK_BLOCK = 1024  # query rows scored at once, bounding the (block, n) score matrix


def _topk_block(q: np.ndarray, db: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``kk`` (1 <= kk <= n) of one query block: scores (b, kk) float32, ids (b, kk) int64."""
    b, n = q.shape[0], db.shape[0]
    sims = q @ db.T  # (b, n) float32
    cand = np.broadcast_to(np.arange(n, dtype=np.int64), (b, n))
    if kk < n:
        part = np.sort(np.argpartition(-sims, kk - 1, axis=1)[:, :kk], axis=1)
        # argpartition may split ties at the k-th score arbitrarily: keep the cheap candidate set
        # only when no score outside it equals the k-th value, so ties break by smaller index.
        kth = np.take_along_axis(sims, part, axis=1).min(axis=1, keepdims=True)
        if int((sims >= kth).sum()) == b * kk:
            cand = part
    cand_scores = np.take_along_axis(sims, cand, axis=1)
    order = np.argsort(-cand_scores, axis=1, kind="stable")[:, :kk]
    return (
        np.take_along_axis(cand_scores, order, axis=1),
        np.take_along_axis(cand, order, axis=1).astype(np.int64, copy=False),
    )


def exact_topk(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force maximum-inner-product search.

    Args:
        queries: (m, d) float32 query vectors (other float dtypes are cast to float32).
        database: (n, d) float32 database vectors.
        k: number of neighbours per query, >= 1; ``k > n`` pads the tail.

    Returns:
        ``(scores, ids)``: scores (m, k) float32 inner products in descending order per row, ids
        (m, k) int64 database row indices; positions beyond ``n`` hold ``-inf`` / ``-1``. Ties are
        broken by the smaller database index. Queries are scored in blocks of 1024 rows, so memory
        is O(1024 * n) beyond the inputs.
    """
    _check_k(k)
    q = np.asarray(queries)
    db = np.asarray(database)
    if q.ndim != 2 or db.ndim != 2:
        raise ValueError(
            f"queries and database must be 2-D (m, d) and (n, d), got {q.shape} and {db.shape}"
        )
    if q.shape[1] != db.shape[1]:
        raise ValueError(
            f"dimension mismatch: queries have d={q.shape[1]}, database d={db.shape[1]}"
        )
    q = q.astype(np.float32, copy=False)
    db = db.astype(np.float32, copy=False)
    m, n = q.shape[0], db.shape[0]
    scores = np.full((m, k), -np.inf, dtype=np.float32)
    ids = np.full((m, k), -1, dtype=np.int64)
    kk = min(k, n)
    if kk == 0:
        return scores, ids
    for start in range(0, m, _TOPK_BLOCK):
        stop = min(start + _TOPK_BLOCK, m)
        scores[start:stop, :kk], ids[start:stop, :kk] = _topk_block(q[start:stop], db, kk)
    return scores, ids


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default method) of an ascending list."""
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """Summarise request latencies.

    Args:
        seconds: per-request latencies in seconds (non-empty, finite, >= 0).

    Returns:
        ``{"count", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms"}``: ``count`` is the number of
        samples (as a float), the rest are milliseconds; percentiles interpolate linearly between
        order statistics (numpy's default ``linear`` method).
    """
    values = [float(s) for s in seconds]
    if not values:
        raise ValueError("latency_summary needs at least one sample; got an empty sequence")
    bad = [v for v in values if not math.isfinite(v) or v < 0]
    if bad:
        raise ValueError(f"latencies must be finite and >= 0 seconds; got e.g. {bad[:3]}")
    ms = sorted(v * 1000.0 for v in values)
    return {
        "count": float(len(ms)),
        "mean_ms": math.fsum(ms) / len(ms),
        "p50_ms": _percentile(ms, 50),
        "p90_ms": _percentile(ms, 90),
        "p99_ms": _percentile(ms, 99),
        "max_ms": ms[-1],
    }
