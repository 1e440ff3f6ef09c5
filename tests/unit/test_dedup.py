"""Dedup core: the self-join against brute force, BM25, the union, the combiner, clusters, the
pipeline on exact small cases, and the batch-query mode."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from vsearch.config import DedupConfig
from vsearch.dedup.candidates import candidate_union, code_agreement
from vsearch.dedup.clusters import cluster_pairs
from vsearch.dedup.combiner import Combiner, choose_threshold, fit_combiner
from vsearch.dedup.lexical import Bm25Index
from vsearch.dedup.neighbours import Neighbours, merge_neighbours, vector_neighbours
from vsearch.dedup.pipeline import catalog_listings, decide_duplicates, photo_listings
from vsearch.dedup.tokens import SoftTfidf, model_codes, title_tokens, token_similarity
from vsearch.eval.dedup import (
    candidate_set,
    complement_table,
    pairwise_scores,
    precision_recall_curve,
    recall_at_precision,
)
from vsearch.schema import LISTING_SCHEMA, MATCH_SCHEMA, QUERY_SCHEMA


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(x: np.ndarray, k: int, allowed: np.ndarray) -> dict[int, list[int]]:
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    sims[~allowed] = -np.inf
    out = {}
    for i in range(len(x)):
        order = np.lexsort((np.arange(len(x)), -sims[i]))
        out[i] = [int(j) for j in order[:k] if np.isfinite(sims[i, j])]
    return out


@pytest.mark.parametrize("cross", [False, True])
def test_exact_self_join_equals_brute_force(cross: bool) -> None:
    rng = np.random.default_rng(0)
    x = _unit(rng, 300, 16)
    cats = np.array(["a", "b", "c"])[rng.integers(0, 3, 300)]
    srcs = np.array(["s", "t"])[rng.integers(0, 2, 300)]
    found = vector_neighbours(x, cats, srcs, 5, cross_source_only=cross)
    allowed = cats[:, None] == cats[None, :]
    if cross:
        allowed &= srcs[:, None] != srcs[None, :]
    want = _brute(x, 5, allowed)
    got: dict[int, list[int]] = {}
    for q, nb, r in zip(found.query, found.neighbour, found.rank, strict=True):
        got.setdefault(int(q), []).append(int(nb))
        assert r == len(got[int(q)]) - 1
    assert got == {i: v for i, v in want.items() if v}
    assert not np.any(found.query == found.neighbour)


def test_ivf_self_join_recall_against_brute_force() -> None:
    rng = np.random.default_rng(1)
    centres = _unit(rng, 40, 32)
    x = centres[rng.integers(0, 40, 4000)] + 0.15 * rng.normal(size=(4000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ones = np.full(4000, "x")
    exact = vector_neighbours(x, ones, ones, 10, exact_below=10_000)
    approx = vector_neighbours(x, ones, ones, 10, exact_below=100, nprobe=8)
    truth = set(zip(exact.query.tolist(), exact.neighbour.tolist(), strict=True))
    got = set(zip(approx.query.tolist(), approx.neighbour.tolist(), strict=True))
    assert len(truth & got) / len(truth) >= 0.9


def test_batch_query_mode_returns_only_requested_rows() -> None:
    rng = np.random.default_rng(2)
    x = _unit(rng, 50, 8)
    ones = np.full(50, "x")
    asked = np.zeros(50, bool)
    asked[[3, 17]] = True
    found = vector_neighbours(x, ones, ones, 4, queries=asked)
    assert set(found.query.tolist()) == {3, 17}
    full = vector_neighbours(x, ones, ones, 4)
    keep = np.isin(full.query, [3, 17])
    assert found.neighbour.tolist() == full.neighbour[keep].tolist()


def test_invalid_rows_are_neither_searched_nor_found() -> None:
    rng = np.random.default_rng(3)
    x = _unit(rng, 20, 8)
    valid = np.ones(20, bool)
    valid[5] = False
    ones = np.full(20, "x")
    found = vector_neighbours(x, ones, ones, 19, valid=valid)
    assert 5 not in found.query and 5 not in found.neighbour


def test_merge_keeps_best_k_and_drops_repeats() -> None:
    a = Neighbours(
        np.array([0, 0]), np.array([1, 2]), np.array([0.9, 0.5], np.float32), np.zeros(2, np.int32)
    )
    b = Neighbours(
        np.array([0, 0]), np.array([2, 3]), np.array([0.7, 0.8], np.float32), np.zeros(2, np.int32)
    )
    m = merge_neighbours([a, b], 2)
    assert m.neighbour.tolist() == [1, 3] and m.rank.tolist() == [0, 1]


def test_model_codes_and_tokens() -> None:
    assert model_codes("Sony Turntable - PS-LX350H/") == {"pslx350h"}
    assert model_codes("Bose 5 Series III") == set()
    assert title_tokens("Sony PS-LX350H") == ["sony", "ps", "lx350h", "pslx350h"]


def test_bm25_finds_the_reworded_listing_across_sources() -> None:
    texts = [
        "Sony Turntable - PSLX350H",
        "Sony PS-LX350H Belt-Drive Turntable",
        "Sony Bravia 40in LCD TV KDL40",
        "Panasonic Lumix camera DMC-FX35",
        "",
    ]
    sources = ["abt", "buy", "buy", "buy", "buy"]
    index = Bm25Index(texts, ["all"] * 5, sources)
    found = index.neighbours(2, cross_source_only=True, within_category=False)
    first = {
        int(q): int(n)
        for q, n, r in zip(found.query, found.neighbour, found.rank, strict=True)
        if r == 0
    }
    assert first[0] == 1
    assert 4 not in found.query and 4 not in found.neighbour
    # Cross-source: buy rows never get buy rows.
    for q, n in zip(found.query, found.neighbour, strict=True):
        assert sources[q] != sources[n]
    assert found.score.max() <= 1.5 and found.score.min() > 0


def _listings(titles: list[str], sources: list[str] | None = None) -> pa.Table:
    n = len(titles)
    return pa.Table.from_pylist(
        [
            {"listing_id": f"l{i:02d}", "source": (sources or ["s"] * n)[i], "category": "c",
             "title": t, "attributes": "{}", "image_uri": None, "quality": 1.0}
            for i, t in enumerate(titles)
        ],
        schema=LISTING_SCHEMA,
    )  # fmt: skip


def test_union_keeps_each_channels_evidence() -> None:
    text = Neighbours(
        np.array([0, 1, 2]),
        np.array([1, 0, 0]),
        np.array([0.9, 0.9, 0.4], np.float32),
        np.array([0, 0, 1], np.int32),
    )
    lex = Neighbours(
        np.array([2]), np.array([3]), np.array([0.7], np.float32), np.array([0], np.int32)
    )
    u = candidate_union({"text": text, "lexical": lex}, k=5)
    assert u[["a", "b"]].values.tolist() == [[0, 1], [0, 2], [2, 3]]
    assert u["text_both"].tolist() == [True, False, False]
    assert u["text_worst"].tolist() == [0, 5, 5] or np.isnan(u["text_worst"].iloc[2])
    assert np.isnan(u["lexical_score"].iloc[0]) and u["lexical_score"].iloc[2] == pytest.approx(0.7)
    agree = code_agreement(
        ["TV KDL40", "kdl-40 tv", "TV XBR9", "tv"], np.array([0, 0, 0]), np.array([1, 2, 3])
    )
    assert agree.tolist() == [1.0, -1.0, 0.0]


def test_threshold_reaches_target_precision_or_best_f1() -> None:
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    y = np.array([1, 1, 0, 1, 0], bool)
    assert choose_threshold(p, y, 3, 1.0) == 0.8
    assert choose_threshold(p, y, 3, 0.75) == 0.6
    # Best F1: cutting at 0.6 gives P 3/4, R 1 -> 0.857; at 0.8 P 1, R 2/3 -> 0.8.
    assert choose_threshold(p, y, 3, None) == 0.6


def test_combiner_separates_and_round_trips() -> None:
    rng = np.random.default_rng(4)
    n = 400
    label = rng.random(n) < 0.3
    score = np.where(label, rng.normal(0.8, 0.05, n), rng.normal(0.5, 0.1, n))
    pairs = pd.DataFrame(
        {"a": np.arange(n), "b": np.arange(n) + n, "text_score": score,
         "text_rank": np.where(label, 0, 3).astype(float), "text_worst": np.where(label, 0, 10).astype(float),
         "text_both": label}
    )  # fmt: skip
    comb = fit_combiner(pairs, label, ["text"], int(label.sum()))
    decided = comb.decide(pairs)
    assert (decided == label).mean() > 0.97
    again = Combiner.from_json(comb.to_json())
    assert np.allclose(again.probability(pairs), comb.probability(pairs))
    stale = Combiner.from_json(comb.to_json())
    stale.feature_names = ["text_score"]
    with pytest.raises(ValueError, match="expects features"):
        stale.probability(pairs)


def test_clusters_stable_under_input_order_and_capped() -> None:
    ids = [f"l{i}" for i in range(8)]
    a = np.array([0, 1, 2, 3, 5, 6])
    b = np.array([1, 2, 3, 4, 6, 7])
    s = np.array([0.9, 0.8, 0.3, 0.95, 0.7, 0.7])
    first = cluster_pairs(ids, a, b, s, max_size=10)
    perm = np.array([5, 3, 0, 4, 1, 2])
    second = cluster_pairs(ids, b[perm], a[perm], s[perm], max_size=10)
    assert first.clusters == second.clusters == [["l0", "l1", "l2", "l3", "l4"], ["l5", "l6", "l7"]]
    assert first.representatives == second.representatives
    # The guard: at most 3 per cluster; the weakest link (2-3, 0.3) is the one refused.
    capped = cluster_pairs(ids, a, b, s, max_size=3)
    assert max(len(c) for c in capped.clusters) <= 3
    assert ["l0", "l1", "l2"] in capped.clusters and ["l3", "l4"] in capped.clusters
    assert capped.refused == 1
    with pytest.raises(ValueError):
        cluster_pairs(ids, a, b, s, max_size=1)


def test_pipeline_exact_small_case() -> None:
    """Four products, each listed twice under reworded titles by two shops."""
    titles = [
        "Sony Turntable PSLX350H", "Bose speaker AM53BK", "Canon camera SD1100", "LG fridge LRFD25850",
        "Sony PS-LX350H belt drive turntable", "Bose Acoustimass AM-53BK speakers",
        "Canon PowerShot SD-1100 IS digital camera", "LG LRFD25850 refrigerator stainless",
    ]  # fmt: skip
    sources = ["abt"] * 4 + ["buy"] * 4
    listings = _listings(titles, sources)
    matches = pa.Table.from_pylist(
        [{"a": f"l{i:02d}", "b": f"l{i + 4:02d}"} for i in range(4)], schema=MATCH_SCHEMA
    )
    index = Bm25Index(titles, ["c"] * 8, sources)
    lex = index.neighbours(3, cross_source_only=True)
    cfg = DedupConfig(channels=["lexical"], k=3, cross_source_only=True, folds=2)
    out = decide_duplicates(listings, {"lexical": lex}, cfg, matches)
    pairs = out.pairs.to_pylist()
    assert all(p["a"] < p["b"] for p in pairs)
    assert all(p["lexical_score"] is not None for p in pairs)
    found = {(p["a"], p["b"]) for p in pairs}
    assert {(f"l{i:02d}", f"l{i + 4:02d}") for i in range(4)} <= found
    ev = out.evaluation
    assert ev is not None and ev["union"]["recall_at_k"] == 1.0
    assert ev["channels"]["lexical"]["recall_at_k"] == 1.0
    # A fitted combiner decides an unlabelled run without ground truth.
    again = decide_duplicates(listings, {"lexical": lex}, cfg, None, out.combiner)
    assert again.evaluation is None and again.pairs.num_rows == out.pairs.num_rows
    with pytest.raises(ValueError, match="ground truth"):
        decide_duplicates(listings, {"lexical": lex}, cfg)


def test_pairwise_scores_and_complement() -> None:
    truth = {(0, 1), (2, 3), (4, 5)}
    s = pairwise_scores({(0, 1), (2, 3), (6, 7)}, truth)
    assert (s["precision"], s["recall"]) == (
        pytest.approx(2 / 3, abs=1e-4),
        pytest.approx(2 / 3, abs=1e-4),
    )
    comp = complement_table(
        {"image": {(0, 1), (4, 5)}, "text": {(0, 1)}, "lexical": {(0, 1), (2, 3)}}, truth
    )
    assert comp["image"]["missed_by_lexical"] == 1
    assert comp["image_and_text"] == {"both": 1, "image_only": 1, "text_only": 0}
    assert comp["none"]["true_missed_by_all"] == 0
    found = Neighbours(
        np.array([0, 0]),
        np.array([1, 2]),
        np.array([0.9, 0.1], np.float32),
        np.array([0, 1], np.int32),
    )
    assert candidate_set(found, 1) == {(0, 1)}


def test_catalog_listings_and_duplicate_truth() -> None:
    catalog = pa.Table.from_pylist(
        [
            {"product_id": p, "image_id": i, "image_uri": f"{i}.jpg", "category": "c", "title": p,
             "attributes": json.dumps({}), "quality": 0.5, "popularity": 0.1}
            for p, i in [("p1", "a"), ("p1", "b"), ("p2", "c"), ("d1", "d")]
        ]
    )  # fmt: skip
    dups = pa.table({"product_id": ["d1"], "duplicate_of": ["p2"], "kind": ["crop"]})
    listings, matches = catalog_listings(catalog, dups)
    assert listings["listing_id"].to_pylist() == ["p1", "p2", "d1"]
    assert listings["image_uri"].to_pylist() == ["a.jpg", "c.jpg", "d.jpg"]
    assert matches.to_pylist() == [{"a": "d1", "b": "p2"}]


def test_photo_listings_pick_per_product_independent_of_order() -> None:
    rows = [
        {"query_id": f"q{p}{i}", "product_id": f"p{p}", "image_uri": f"/img/{p}{i}.jpg",
         "category": "fruit", "split": split, "box": None}
        for p in range(3) for i in range(4 if p else 1) for split in ("val",)
    ] + [
        {"query_id": "t0", "product_id": "p1", "image_uri": "/img/t0.jpg", "category": "fruit",
         "split": "train", "box": None}
    ]  # fmt: skip
    queries = pa.Table.from_pylist(rows, schema=QUERY_SCHEMA)
    listings, matches = photo_listings(queries, "val", per_product=3)
    # p0 has one val photo (no pair, left out); p1 and p2 keep 3 of their 4: 3 pairs each.
    assert listings.num_rows == 6 and matches.num_rows == 6
    assert set(listings["title"].to_pylist()) == {""}
    ids = set(listings["listing_id"].to_pylist())
    assert "t0" not in ids and all(r["a"] < r["b"] for r in matches.to_pylist())
    assert {r["a"][:2] for r in matches.to_pylist()} == {"q1", "q2"}
    again, _ = photo_listings(queries.take(list(range(queries.num_rows))[::-1]), "val", 3)
    assert set(again["listing_id"].to_pylist()) == ids
    with pytest.raises(ValueError, match="no photos of split 'test'"):
        photo_listings(queries, "test", per_product=3)
    with pytest.raises(ValueError, match="no product has two photos"):
        photo_listings(queries, "train", per_product=3)


def test_token_similarity_tolerates_typos_not_other_numbers() -> None:
    assert token_similarity("zagzu", "zaguz") == pytest.approx(0.8)  # two letters swapped
    assert token_similarity("fogl", "fogal") == pytest.approx(0.8)  # one letter dropped
    assert token_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert token_similarity("350ml", "330ml") == 0.0  # sizes and codes must agree exactly
    assert token_similarity("abc", "abc") == 1.0


def test_soft_tfidf_keeps_typos_and_drops_other_brands() -> None:
    titles = [
        "ZAGZU Pink Striped Cereal Box 250g",
        "ZAGUZ Pink Striped Cereal Box 250g",  # the same listing with a typo in the brand
        "BALAP Pink Striped Cereal Box 250g",  # another brand's product
        "ROMO Blue Dotted Mug 350ml",
        "KELI Green Checked Bottle 500ml",
    ]
    soft = SoftTfidf(titles)
    assert soft.score(0, 1) > soft.score(0, 2) + 0.1
    assert soft.score(0, 1) == pytest.approx(soft.score(1, 0))
    assert soft.score(0, 0) == pytest.approx(1.0)
    assert soft.score(0, 3) < 0.05


def test_precision_recall_curve_and_recall_at_precision() -> None:
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    label = np.array([1, 1, 0, 1, 0], bool)
    # 4 true pairs, one never scored.
    p, r = precision_recall_curve(score, label, 4)
    assert np.allclose(p, [1, 1, 2 / 3, 3 / 4, 3 / 5]) and np.allclose(
        r, [0.25, 0.5, 0.5, 0.75, 0.75]
    )
    assert recall_at_precision(score, label, 4, 1.0) == 0.5
    assert recall_at_precision(score, label, 4, 0.7) == 0.75
    assert recall_at_precision(score, label, 4, 0.0) == 0.75
    # Thinned for plots: one point per recall level, its best precision.
    p2, r2 = precision_recall_curve(score, label, 4, points=10)
    assert np.allclose(r2, [0.25, 0.5, 0.75]) and np.allclose(p2, [1, 1, 0.75])
