"""Re-rank retrieved images into a product list, blending similarity with quality signals.

Final score of a hit = ``similarity + quality_weight * quality + popularity_weight * popularity``.
With grouping on, a product is represented by its best-scoring image and remembers how many
distinct images of it matched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from vsearch.index.searcher import Hit


@dataclass(frozen=True)
class RankedProduct:
    """One result row: a product, the image that represents it, and its scores.

    ``score`` is the blended final score, ``similarity`` the raw similarity of ``image_id``,
    ``matched_images`` the number of distinct retrieved images of this product, and
    ``text_similarity`` (hybrid queries only) that of the query text to the product's title.
    """

    product_id: str
    image_id: str
    category: str
    title: str
    score: float
    similarity: float
    matched_images: int
    text_similarity: float | None = None


class Reranker:
    """Blend similarity with quality and popularity, optionally one row per product."""

    def __init__(
        self,
        quality_weight: float = 0.0,
        popularity_weight: float = 0.0,
        group_by_product: bool = True,
    ) -> None:
        """Weights must be finite (negative weights are allowed, they penalise the signal)."""
        for name, w in (
            ("quality_weight", quality_weight),
            ("popularity_weight", popularity_weight),
        ):
            if not math.isfinite(w):
                raise ValueError(f"{name} must be finite, got {w}")
        self.quality_weight = float(quality_weight)
        self.popularity_weight = float(popularity_weight)
        self.group_by_product = bool(group_by_product)

    def __repr__(self) -> str:
        return (
            f"Reranker(quality_weight={self.quality_weight}, "
            f"popularity_weight={self.popularity_weight}, group_by_product={self.group_by_product})"
        )

    def score(self, hit: Hit) -> float:
        """Final score of one hit."""
        return (
            hit.score + self.quality_weight * hit.quality + self.popularity_weight * hit.popularity
        )

    def rerank(self, hits: Sequence[Hit], k: int) -> list[RankedProduct]:
        """Top-``k`` products (or images, when not grouping) of one query's hits, best first.

        Ties are broken by higher similarity, then by product id and image id, so the order is
        deterministic whatever the input order.
        """
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        ranked = [self._ranked(h, 1) for h in hits]
        if self.group_by_product:
            ranked = self._group(ranked)
        ranked.sort(key=lambda r: (-r.score, -r.similarity, r.product_id, r.image_id))
        return ranked[:k]

    def _ranked(self, hit: Hit, matched: int) -> RankedProduct:
        return RankedProduct(
            product_id=hit.product_id,
            image_id=hit.image_id,
            category=hit.category,
            title=hit.title,
            score=self.score(hit),
            similarity=hit.score,
            matched_images=matched,
        )

    @staticmethod
    def _group(ranked: list[RankedProduct]) -> list[RankedProduct]:
        best: dict[str, RankedProduct] = {}
        images: dict[str, set[str]] = {}
        for r in ranked:
            images.setdefault(r.product_id, set()).add(r.image_id)
            cur = best.get(r.product_id)
            if cur is None or (-r.score, -r.similarity, r.image_id) < (
                -cur.score,
                -cur.similarity,
                cur.image_id,
            ):
                best[r.product_id] = r
        return [replace(r, matched_images=len(images[pid])) for pid, r in best.items()]
