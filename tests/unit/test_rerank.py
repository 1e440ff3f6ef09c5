"""Unit tests for the product re-ranker on hand-made hits."""

from __future__ import annotations

import faiss
import pytest

from vsearch.index import Hit
from vsearch.rank import RankedProduct, Reranker

faiss.omp_set_num_threads(1)


def _hit(image_id: str, product_id: str, score: float, quality: float = 0.0, pop: float = 0.0):
    return Hit(
        score=score,
        image_id=image_id,
        product_id=product_id,
        category="shoes",
        title=f"title {product_id}",
        quality=quality,
        popularity=pop,
        shard="shoes-0000000000-b000",
    )


HITS = [
    _hit("a1", "A", 0.90, quality=0.1, pop=0.0),
    _hit("b1", "B", 0.85, quality=0.9, pop=1.0),
    _hit("a2", "A", 0.80, quality=1.0, pop=0.5),
    _hit("c1", "C", 0.70, quality=0.0, pop=0.2),
    _hit("a3", "A", 0.60, quality=0.0, pop=0.0),
]


def test_similarity_only_groups_by_product() -> None:
    ranked = Reranker().rerank(HITS, k=10)
    assert [r.product_id for r in ranked] == ["A", "B", "C"]
    assert ranked[0] == RankedProduct(
        product_id="A",
        image_id="a1",
        category="shoes",
        title="title A",
        score=0.90,
        similarity=0.90,
        matched_images=3,
    )
    assert [r.matched_images for r in ranked] == [3, 1, 1]


def test_weights_change_order_and_best_image() -> None:
    ranked = Reranker(quality_weight=0.2, popularity_weight=0.1).rerank(HITS, k=10)
    # A: a1 0.92, a2 0.80+0.2+0.05=1.05; B: 0.85+0.18+0.1=1.13; C: 0.70+0.02=0.72
    assert [r.product_id for r in ranked] == ["B", "A", "C"]
    assert ranked[0].score == pytest.approx(1.13)
    assert ranked[1].image_id == "a2" and ranked[1].similarity == pytest.approx(0.80)
    assert ranked[1].score == pytest.approx(1.05) and ranked[1].matched_images == 3
    assert ranked[2].score == pytest.approx(0.72)


def test_cut_at_k_and_ungrouped() -> None:
    assert [r.product_id for r in Reranker().rerank(HITS, k=2)] == ["A", "B"]
    assert Reranker().rerank(HITS, k=0) == []
    assert Reranker().rerank([], k=5) == []
    flat = Reranker(group_by_product=False).rerank(HITS, k=4)
    assert [r.image_id for r in flat] == ["a1", "b1", "a2", "c1"]
    assert all(r.matched_images == 1 for r in flat)
    with pytest.raises(ValueError):
        Reranker().rerank(HITS, k=-1)
    with pytest.raises(ValueError):
        Reranker(quality_weight=float("nan"))


def test_duplicate_images_counted_once_and_order_deterministic() -> None:
    hits = [_hit("x1", "X", 0.5), _hit("x1", "X", 0.5), _hit("y1", "Y", 0.5)]
    ranked = Reranker().rerank(hits, k=5)
    assert [(r.product_id, r.matched_images) for r in ranked] == [("X", 1), ("Y", 1)]
    assert Reranker().rerank(hits[::-1], k=5) == ranked
    negative = Reranker(popularity_weight=-1.0).rerank([_hit("p", "P", 0.9, pop=1.0)], k=1)
    assert negative[0].score == pytest.approx(-0.1)
