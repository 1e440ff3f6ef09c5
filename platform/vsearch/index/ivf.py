"""How large an inverted file is and what it is trained on: one policy for the index shards'
``IndexBinaryIVF`` and the dedup self-join's ``IndexIVFFlat``."""

from __future__ import annotations

import numpy as np

__all__ = ["ivf_lists", "training_rows"]


def ivf_lists(n: int) -> int:
    """Inverted lists for ``n`` vectors: about ``4 sqrt(n)``, at least 16, and at most one per
    39 vectors (FAISS's minimum of training points per centroid)."""
    return int(min(max(16, 4 * np.sqrt(n)), n // 39))


def training_rows(n: int, nlist: int, seed: int = 0) -> np.ndarray:
    """Sorted rows (a fixed draw) that train ``nlist`` centroids: 64 per list, or all ``n``."""
    return np.sort(np.random.default_rng(seed).choice(n, min(n, 64 * nlist), replace=False))
