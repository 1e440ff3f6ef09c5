"""The query pipeline the service and offline evaluation share: routing, over-fetch, merging the
searchers' hits and ranking them, driven in one process by ``run``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from vsearch.config import load_config
from vsearch.index import Hit
from vsearch.index.builder import build_shards
from vsearch.index.searcher import ShardedIndex
from vsearch.rank.fusion import predict_categories
from vsearch.rank.pipeline import QueryPipeline, QueryPlan, QueryPolicy
from vsearch.rank.routing import images_to_fetch

NAMES = ["bags", "drinks", "shoes"]


def _hit(image_id: str, product_id: str, score: float, quality: float = 0.0) -> Hit:
    return Hit(score, image_id, product_id, "shoes", f"title {product_id}", quality, 0.0, "s0")


def test_plan_routes_by_the_model_unless_the_request_names_categories() -> None:
    pipe = QueryPipeline(QueryPolicy(route_mass=0.8, route_max=2))
    probs = np.array([0.1, 0.6, 0.3])
    plan = pipe.plan(probs, NAMES, 5)
    assert plan == QueryPlan(5, ["drinks", "shoes"], "model", images_to_fetch(5), False)
    assert pipe.plan(probs, NAMES, 5, ["bags"]).routed_by == "request"
    assert pipe.plan(probs, NAMES, 5, ["bags"]).categories == ["bags"]
    unrouted = pipe.plan(np.zeros(0), [], 5)
    assert unrouted.categories is None and unrouted.routed_by == "all"
    hybrid = pipe.plan(probs, NAMES, 5, hybrid=True)
    assert hybrid.images == images_to_fetch(5, hybrid=True) > plan.images
    with pytest.raises(ValueError, match="k must be"):
        pipe.plan(probs, NAMES, 0)


def test_rank_merges_searchers_and_applies_the_configured_weights() -> None:
    lists = [[_hit("a1", "A", 0.9, 0.0), _hit("c1", "C", 0.5)], [_hit("b1", "B", 0.85, 1.0)]]
    plan = QueryPlan(2, None, "all", 8, False)
    by_similarity = QueryPipeline(QueryPolicy()).rank(plan, lists)
    assert [p.product_id for p in by_similarity] == ["A", "B"]
    with_quality = QueryPipeline(QueryPolicy(quality_weight=0.2)).rank(plan, lists)
    assert [p.product_id for p in with_quality] == ["B", "A"]


def test_policy_comes_from_the_config(tmp_path) -> None:
    cfg = load_config(None, [f"storage={tmp_path}", "rank.quality_weight=0.1",
                             "category.route_max=2", "serve.text_weight=0.3",
                             "category.model_temperature=4"])  # fmt: skip
    policy = QueryPolicy.of(cfg)
    assert (policy.quality_weight, policy.route_max, policy.text_weight) == (0.1, 2, 0.3)
    assert policy.model_temperature == 4.0
    assert (policy.fusion_weight, policy.vote_neighbours) == (
        cfg.category.fusion_weight, cfg.category.vote_neighbours,
    )  # fmt: skip
    assert policy.route_mass == cfg.category.route_mass


def test_run_searches_the_routed_shards_and_returns_products_box_and_category() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cats = [NAMES[i % 3] for i in range(90)]
    meta = pa.table({
        "image_id": [f"i{i}" for i in range(90)], "product_id": [f"p{i // 2}" for i in range(90)],
        "category": cats, "title": ["t"] * 90,
        "quality": pa.array([0.5] * 90, pa.float32()), "popularity": pa.array([0.0] * 90, pa.float32()),
    })  # fmt: skip
    index = ShardedIndex.from_built(build_shards(x, meta, 1, rescore_dtype="float32"))
    asked: list[QueryPlan] = []

    def search(vector: np.ndarray, plan: QueryPlan) -> list[list[Hit]]:
        asked.append(plan)
        return [index.search(vector[None], plan.images, None, plan.categories)[0]]

    pipe = QueryPipeline(QueryPolicy(route_mass=0.5, route_max=1, vote_neighbours=0))
    pred = {"embedding": x[3], "category_probs": np.array([0.7, 0.2, 0.1]), "box": np.ones(4)}
    answer = pipe.run(pred, NAMES, 3, search)
    assert len(asked) == 1 and answer.vote_probs is None  # no vote: one search
    assert asked[-1].categories == ["bags"] and answer.category == pytest.approx(("bags", 0.7))
    assert answer.products[0].product_id == "p1" and answer.products[0].image_id == "i3"
    assert all(p.category == "bags" for p in answer.products) and len(answer.products) == 3
    assert answer.box == [1.0, 1.0, 1.0, 1.0]
    # Routed to the wrong category, the photo's own product cannot be found.
    wrong = pipe.run({**pred, "category_probs": np.array([0.0, 0.9, 0.1])}, NAMES, 3, search)
    assert all(p.category == "drinks" for p in wrong.products)


def _catalogue(n: int = 90) -> tuple[np.ndarray, ShardedIndex]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    meta = pa.table({
        "image_id": [f"i{i}" for i in range(n)], "product_id": [f"p{i}" for i in range(n)],
        "category": [NAMES[i % 3] for i in range(n)], "title": ["t"] * n,
        "quality": pa.array([0.0] * n, pa.float32()), "popularity": pa.array([0.0] * n, pa.float32()),
    })  # fmt: skip
    return x, ShardedIndex.from_built(build_shards(x, meta, 1, rescore_dtype="float32"))


def test_the_vote_of_the_nearest_images_fuses_with_the_head_and_routes_the_search() -> None:
    x, index = _catalogue()
    asked: list[QueryPlan] = []

    def search(vector: np.ndarray, plan: QueryPlan) -> list[list[Hit]]:
        asked.append(plan)
        return [index.search(vector[None], plan.images, plan.shortlist, plan.categories)[0]]

    pipe = QueryPipeline(QueryPolicy(route_mass=0.5, route_max=1, fusion_weight=0.5))
    # The photo is catalogue image 0 ("bags"), but the head leans to "drinks".
    pred = {"embedding": x[0], "category_probs": np.array([0.3, 0.6, 0.1]), "box": np.ones(4)}
    answer = pipe.run(pred, NAMES, 3, search)
    vote_plan = asked[0]
    assert vote_plan.categories is None and vote_plan.images == 10  # every shard, 10 voters
    assert vote_plan.shortlist == 64 and asked[1].shortlist is None  # the routed: tuned
    assert asked[1].categories == ["bags"] and answer.plan.routed_by == "model"
    assert answer.vote_probs is not None and answer.vote_probs.argmax() == 0
    assert answer.category is not None and answer.category[0] == "bags"
    # The fusion is exactly the core function's, on the vote search's hits.
    hits = index.search(x[0][None], 10, 64, None)[0]
    fused, vote = predict_categories(
        np.array([[0.3, 0.6, 0.1]], np.float32), np.array([[h.score for h in hits]]),
        [[h.category for h in hits]], NAMES, 0.5, 0.05,
    )  # fmt: skip
    np.testing.assert_allclose(answer.category_probs, fused[0], rtol=1e-5)
    np.testing.assert_allclose(answer.vote_probs, vote[0], rtol=1e-5)
    assert answer.products[0].product_id == "p0"
    # The head alone (weight 1) keeps its own guess and routes there.
    head = QueryPipeline(QueryPolicy(route_mass=0.5, route_max=1, fusion_weight=1.0))
    assert head.run(pred, NAMES, 3, search).category == pytest.approx(("drinks", 0.6))


def test_categorise_merges_searchers_and_refuses_a_wrong_width() -> None:
    pipe = QueryPipeline(QueryPolicy(vote_neighbours=2, fusion_weight=0.0))
    lists = [[Hit(0.9, "a", "A", "shoes", "", 0, 0, "s1"), Hit(0.1, "c", "C", "bags", "", 0, 0,
              "s1")], [Hit(0.8, "b", "B", "shoes", "", 0, 0, "s2")]]  # fmt: skip
    fused, vote = pipe.categorise(np.array([1.0, 0.0, 0.0]), NAMES, lists)
    assert vote[2] == pytest.approx(1.0) and fused.argmax() == 2  # the best 2 voters: shoes
    empty, _ = pipe.categorise(np.array([1.0, 0.0, 0.0]), NAMES, [])
    np.testing.assert_allclose(empty, 1 / 3)  # no voters: a uniform vote
    with pytest.raises(ValueError, match="2 probabilities for 3 categories"):
        pipe.categorise(np.array([0.5, 0.5]), NAMES, lists)


def test_categorise_softens_the_head_at_the_policy_temperature() -> None:
    # A confident head (drinks) against a vote of 0.9 for shoes: at temperature 1 the head
    # wins, softened at 5 the vote does; the fusion is the core function's at that temperature.
    lists = [[Hit(0.9, "a", "A", "shoes", "", 0, 0, "s1"), Hit(0.79, "b", "B", "drinks", "", 0, 0,
              "s1")]]  # fmt: skip
    head = np.array([0.02, 0.95, 0.03], np.float32)
    sharp, _ = QueryPipeline(QueryPolicy(vote_neighbours=2)).categorise(head, NAMES, lists)
    soft, vote = QueryPipeline(QueryPolicy(vote_neighbours=2, model_temperature=5.0)).categorise(
        head, NAMES, lists
    )
    assert NAMES[sharp.argmax()] == "drinks" and NAMES[soft.argmax()] == "shoes"
    fused, _ = predict_categories(
        head[None], np.array([[0.9, 0.79]]), [["shoes", "drinks"]], NAMES, 0.5, 0.05, 5.0
    )
    np.testing.assert_allclose(soft, fused[0], rtol=1e-5)
    assert vote.argmax() == NAMES.index("shoes")


def test_rank_keeps_the_best_images_of_all_searchers_as_one_search_would() -> None:
    # Two searchers each return their best 2 images; the pool is the best 2 overall, so the
    # product whose only image is third overall is not ranked, whatever searcher found it.
    lists = [[_hit("a1", "A", 0.9), _hit("c1", "C", 0.6)], [_hit("b1", "B", 0.8),
             _hit("d1", "D", 0.7)]]  # fmt: skip
    plan = QueryPlan(3, None, "all", 2, False)
    ranked = QueryPipeline(QueryPolicy()).rank(plan, lists)
    assert [p.product_id for p in ranked] == ["A", "B"]
