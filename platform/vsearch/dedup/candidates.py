"""The candidate union: every pair any channel proposed, with each channel's evidence side by side.

A channel proposes ``b`` for ``a`` (and maybe ``a`` for ``b``); the union keys pairs by
``(min row, max row)`` and keeps, per channel, the best score over both directions, the best and
the worst rank of the two directions (a pair ranked first both ways is a mutual best match) and
whether both directions proposed it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vsearch.dedup.neighbours import Neighbours
from vsearch.dedup.tokens import SoftTfidf, model_codes

__all__ = ["CHANNELS", "candidate_union", "code_agreement", "title_similarity"]

#: Every channel the dedup job knows, in report order.
CHANNELS = ("image", "text", "lexical")


def _channel_pairs(name: str, found: Neighbours, k: int) -> pd.DataFrame:
    a = np.minimum(found.query, found.neighbour)
    b = np.maximum(found.query, found.neighbour)
    frame = pd.DataFrame({"a": a, "b": b, "score": found.score, "rank": found.rank})
    grouped = frame.groupby(["a", "b"], sort=True)
    out = grouped.agg(score=("score", "max"), rank=("rank", "min"), worst=("rank", "max"))
    both = grouped.size() > 1
    # A direction that did not propose the pair ranks it beyond the list: k.
    out["worst"] = np.where(both, out["worst"], k)
    out["both"] = both
    return out.rename(columns=lambda c: f"{name}_{c}")


def candidate_union(channels: dict[str, Neighbours], k: int) -> pd.DataFrame:
    """One row per pair any channel proposed, sorted by ``(a, b)``.

    Columns: ``a < b`` (int64 rows) and, for each channel ``c`` in ``channels``: ``c_score``
    (float, NaN when ``c`` did not propose it), ``c_rank`` (best rank of the two directions, NaN
    when absent), ``c_worst`` (the other direction's rank, ``k`` when only one direction proposed
    it) and ``c_both`` (bool).
    """
    frames = [_channel_pairs(name, found, k) for name, found in channels.items()]
    if not frames:
        return pd.DataFrame({"a": np.zeros(0, np.int64), "b": np.zeros(0, np.int64)})
    union = pd.concat(frames, axis=1, join="outer").sort_index()
    for name in channels:
        union[f"{name}_both"] = union[f"{name}_both"].astype("boolean").fillna(False).astype(bool)
    union.index.names = ["a", "b"]
    return union.reset_index()


def code_agreement(titles: list[str], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(m,) float32`` per pair: 1 when the two titles share a model code, -1 when both have
    codes and share none, 0 when either has none (``vsearch.dedup.tokens.model_codes``)."""
    codes = [model_codes(t) for t in titles]
    out = np.zeros(len(a), np.float32)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        ca, cb = codes[int(x)], codes[int(y)]
        if ca and cb:
            out[i] = 1.0 if ca & cb else -1.0
    return out


def title_similarity(titles: list[str], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(m,) float32`` soft TF-IDF similarity of the two titles of every pair
    (``vsearch.dedup.tokens.SoftTfidf``, IDF over ``titles``)."""
    soft = SoftTfidf(titles)
    return np.array([soft.score(int(x), int(y)) for x, y in zip(a, b, strict=True)], np.float32)
