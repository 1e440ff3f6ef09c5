"""Ranking one query's hits into products, with or without query text (the service and offline
evaluation call this).

A hybrid query's photo ranks ``products_to_rank(k, hybrid=True)`` products; each is then
re-scored ``(1 - weight) * score + weight * text_similarity``, the cosine similarity of the query
text to the product's title in the index version's text channel (0 for a product the channel
does not hold), and the best ``k`` are kept. Text re-scores what the photo found; it does not add
products the photo search did not return.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from vsearch.index.searcher import Hit
from vsearch.index.text import TextChannel
from vsearch.rank.rerank import RankedProduct, Reranker
from vsearch.rank.routing import products_to_rank

__all__ = ["rank_products"]


def rank_products(
    reranker: Reranker,
    hits: Sequence[Hit],
    k: int,
    text_vector: np.ndarray | None = None,
    channel: TextChannel | None = None,
    weight: float = 0.0,
) -> list[RankedProduct]:
    """The top ``k`` products of ``hits``; re-scored by ``text_vector`` (the L2-normalised
    embedding of the query text) against ``channel`` when both are given."""
    if not 0.0 <= weight <= 1.0 or not math.isfinite(weight):
        raise ValueError(f"text weight must be in [0, 1], got {weight}")
    if text_vector is None or channel is None:
        return reranker.rerank(hits, k)
    pool = reranker.rerank(hits, products_to_rank(k, hybrid=True))
    sims = channel.similarities(text_vector, [p.product_id for p in pool])
    fused = []
    for product, sim in zip(pool, sims, strict=True):
        known = not math.isnan(float(sim))
        text = float(sim) if known else 0.0
        fused.append(
            replace(
                product,
                score=(1.0 - weight) * product.score + weight * text,
                text_similarity=round(text, 6) if known else None,
            )
        )
    fused.sort(key=lambda r: (-r.score, -r.similarity, r.product_id, r.image_id))
    return fused[:k]
