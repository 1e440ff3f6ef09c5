from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from vsearch.eval.quality import category_report
from vsearch.eval.retrieval import PRODUCTS_ASKED, canonical_ranking, evaluate_retrieval
from vsearch.rank.pipeline import QueryPolicy


def _meta(products: list[str], categories: list[str]) -> pa.Table:
    n = len(products)
    return pa.table(
        {
            "image_id": [f"img{i}" for i in range(n)],
            "product_id": products,
            "category": categories,
            "title": ["t"] * n,
            "quality": pa.array([1.0] * n, pa.float32()),
            "popularity": pa.array([0.0] * n, pa.float32()),
        }
    )


def test_canonical_ranking_folds_duplicates() -> None:
    ranked = ["d1", "p2", "p1", "p3"]
    assert canonical_ranking(ranked, {"d1": "p1"}) == ["p1", "p2", "p3"]
    assert canonical_ranking(ranked, {}, 2) == ["d1", "p2"]


def _two_halves(seed: int, n: int = 40) -> tuple[np.ndarray, list[str], pa.Table]:
    """``n`` random unit vectors, one product each, in categories "a" (first half) and "b"."""
    rng = np.random.default_rng(seed)
    catalog = rng.normal(size=(n, 32)).astype(np.float32)
    catalog /= np.linalg.norm(catalog, axis=1, keepdims=True)
    products = [f"p{i}" for i in range(n)]
    return catalog, products, _meta(products, ["a" if i < n // 2 else "b" for i in range(n)])


def test_perfect_and_shifted_queries() -> None:
    n = 40
    catalog, products, meta = _two_halves(0, n)
    # Queries equal to their catalogue vectors: everything is found first (float32 rescoring,
    # so that the index's top 10 is exact search's to the last near-tie).
    report = evaluate_retrieval(
        catalog[:10], products[:10], catalog, meta, shortlist=n, rescore_dtype="float32"
    )
    assert report.recall_at_1 == report.exact_recall_at_1 == 1.0
    assert report.map_at_10 == pytest.approx(1.0)
    assert report.ann_recall_at_10 == pytest.approx(1.0)
    # Labels pointing at the wrong product: never found at rank 1.
    wrong = evaluate_retrieval(catalog[:10], products[10:20], catalog, meta, shortlist=n)
    assert wrong.recall_at_1 == 0.0


def test_duplicate_listing_counts_as_the_product() -> None:
    base = np.eye(8, dtype=np.float32)
    catalog = np.stack([base[0], base[1], base[2], base[0] * 0.9 + base[3] * 0.1])
    catalog /= np.linalg.norm(catalog, axis=1, keepdims=True)
    meta = _meta(["p0", "p1", "p2", "dup0"], ["a"] * 4)
    # The query is closest to the duplicate listing "dup0" of p0.
    query = (base[0] * 0.8 + base[3] * 0.6)[None, :]
    plain = evaluate_retrieval(query, ["p0"], catalog, meta, shortlist=4)
    folded = evaluate_retrieval(query, ["p0"], catalog, meta, {"dup0": "p0"}, shortlist=4)
    assert plain.recall_at_1 == 0.0
    assert folded.recall_at_1 == 1.0


def test_recall_curve_is_monotone_and_ends_at_recall_at_10() -> None:
    rng = np.random.default_rng(1)
    catalog = rng.normal(size=(30, 16)).astype(np.float32)
    catalog /= np.linalg.norm(catalog, axis=1, keepdims=True)
    products = [f"p{i}" for i in range(30)]
    queries = catalog[:12] + rng.normal(scale=0.6, size=(12, 16)).astype(np.float32)
    report = evaluate_retrieval(queries, products[:12], catalog, _meta(products, ["a"] * 30))
    curve = report.recall_curve
    assert len(curve) == 10 and curve == sorted(curve)
    assert curve[0] == report.recall_at_1 and curve[-1] == report.recall_at_10


def test_report_figure_is_a_png() -> None:
    from vsearch.eval.plots import recall_and_latency_figure

    png = recall_and_latency_figure({"a": [0.1, 0.5, 0.9]}, [10.0, 12.0, 30.0], "t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_queries_are_categorised_and_routed_by_the_fused_prediction() -> None:
    # Catalogue "a" and "b" halves; the head says "b" for every query of "a", half-sure. The
    # vote of the nearest images (the query's own) wins the fusion and routes the search.
    n = 40
    catalog, products, meta = _two_halves(2, n)
    head = np.tile(np.array([[0.4, 0.6]], np.float32), (10, 1))
    args = {"shortlist": n, "rescore_dtype": "float32", "category_names": ["a", "b"]}
    fused = evaluate_retrieval(catalog[:10], products[:10], catalog, meta,
                               category_probs=head, **args)  # fmt: skip
    assert fused.vote_probs is not None and (fused.vote_probs.argmax(1) == 0).all()
    assert fused.category_probs is not None and (fused.category_probs.argmax(1) == 0).all()
    assert fused.recall_at_1 == 1.0  # routed to "a", where the products are
    alone = evaluate_retrieval(catalog[:10], products[:10], catalog, meta, category_probs=head,
                               policy=QueryPolicy(vote_neighbours=0, route_max=1), **args)  # fmt: skip
    assert alone.vote_probs is None and alone.recall_at_1 == 0.0  # the head routes to "b"
    assert "category_probs" not in fused.as_dict()


def test_category_report_without_a_vote_is_the_head_alone() -> None:
    model = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]], np.float32)
    rep = category_report(["a", "b", "b"], ["a", "b"], model, None, 0.5)
    assert rep["fused_top1"] == rep["model_top1"] == pytest.approx(2 / 3)
    assert np.isnan(rep["search_top1"]) and "by_weight" not in rep
    vote = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]], np.float32)
    with_vote = category_report(["a", "b", "b"], ["a", "b"], model, vote, 0.5)
    assert with_vote["search_top1"] == pytest.approx(2 / 3) and "by_weight" in with_vote
    with pytest.raises(ValueError, match="nothing predicts a category"):
        category_report(["a"], [], np.zeros((1, 0), np.float32), None, 0.5)


def test_category_report_fuses_the_head_softened_at_the_temperature() -> None:
    # A confident head, right once in three; a vote right every time.
    model = np.array([[0.95, 0.05], [0.95, 0.05], [0.95, 0.05]], np.float32)
    vote = np.array([[0.9, 0.1], [0.1, 0.9], [0.1, 0.9]], np.float32)
    truth = ["a", "b", "b"]
    sharp = category_report(truth, ["a", "b"], model, vote, 0.5)
    soft = category_report(truth, ["a", "b"], model, vote, 0.5, model_temperature=5.0)
    assert sharp["fused_top1"] == pytest.approx(1 / 3) and soft["fused_top1"] == 1.0
    assert soft["model_top1"] == sharp["model_top1"]  # the head's top-1 does not move
    assert soft["model_temperature"] == 5.0 and sharp["fitted_temperature_here"] > 1.0


def test_duplicates_folded_before_the_cut_at_10_do_not_push_the_product_out() -> None:
    # The query's ranking: p0, its three duplicate listings, p4 ... p9, then the true p10.
    # Ten products asked for and then folded would leave seven and miss p10 (as the service
    # asked for PRODUCTS_ASKED does not).
    dim = 16
    catalog = np.zeros((12, dim), np.float32)
    for i in range(12):
        angle = 0.05 * (i + 1)
        catalog[i, 0], catalog[i, i + 1] = np.cos(angle), np.sin(angle)
    products = [f"p{i}" for i in range(12)]
    meta = _meta(products, ["a"] * 12)
    query = np.eye(dim, dtype=np.float32)[:1]
    dups = {"p1": "p0", "p2": "p0", "p3": "p0"}
    report = evaluate_retrieval(query, ["p10"], catalog, meta, dups, shortlist=12,
                                rescore_dtype="float32")  # fmt: skip
    assert PRODUCTS_ASKED > 10
    assert report.recall_at_10 == report.exact_recall_at_10 == 1.0
    assert report.recall_curve[6] == 0.0 and report.recall_curve[7] == 1.0  # p10 is 8th
