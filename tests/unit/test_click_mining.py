"""Click-log triplets on a hand-made log: the multi-click policies, hard and easy negatives, counts."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from vsearch.config import Config, MiningConfig
from vsearch.schema import CLICK_SCHEMA
from vsearch.training.click_mining import (
    STAT_NAMES,
    TRIPLET_SCHEMA,
    ProductCategories,
    mine_click_log,
)

CATEGORY = {"A1": "a", "A2": "a", "A3": "a", "B1": "b", "B2": "b", "C1": "c"}
# One row per catalogue image: A1 has two images.
PRODUCTS = ProductCategories(["A1", *CATEGORY], ["a", *CATEGORY.values()])


def _click(qid: str, shown: list[str], clicked: str, minute: int) -> dict:
    return {
        "query_id": qid,
        "query_image_uri": f"{qid}.jpg",
        "shown_product_ids": shown,
        "clicked_product_id": clicked,
        "timestamp": datetime(2026, 1, 1, 0, minute, tzinfo=UTC),
    }


CLICKS = pa.Table.from_pylist(
    [
        _click("s4", ["Z", "A1"], "Z", 0),  # clicked product not in the catalogue
        _click("s2", ["A1", "A2", "A3", "X9"], "A2", 5),  # two clicks (listed out of time order)
        _click("s1", ["A1", "A2", "B1"], "A1", 1),  # one clean click
        _click("s3", ["B1", "B2", "C1"], "B1", 2),  # the same product clicked twice
        _click("s2", ["A1", "A2", "A3", "X9"], "A1", 3),
        _click("s3", ["B1", "B2", "C1"], "B1", 4),
    ],
    schema=CLICK_SCHEMA,
)


def _mine(**policy: object) -> tuple[pa.Table, dict[str, int]]:
    return mine_click_log(CLICKS, PRODUCTS, MiningConfig(**policy))


def _rows(table: pa.Table, kind: str | None = None) -> list[tuple]:
    return [
        (r["query_image_uri"], r["positive_product_id"], r["negative_product_id"], r["weight"])
        for r in table.to_pylist()
        if kind is None or r["kind"] == kind
    ]


def test_drop_policy_leaves_out_multi_click_sessions() -> None:
    table, stats = _mine(multi_click="drop")
    assert table.schema.equals(TRIPLET_SCHEMA)
    assert _rows(table, "hard") == [
        ("s1.jpg", "A1", "A2", 1.0), ("s1.jpg", "A1", "B1", 1.0),
        ("s3.jpg", "B1", "B2", 1.0), ("s3.jpg", "B1", "C1", 1.0),
    ]  # fmt: skip
    assert stats == {
        **dict.fromkeys(STAT_NAMES, 0),
        "sessions": 4, "click_rows": 6, "repeat_clicks": 1, "sessions_kept": 3,
        "sessions_dropped_multi_click": 1, "clicks_dropped_multi_click": 2,
        "clicks_dropped_unknown_product": 1, "hard_triplets": 4, "easy_triplets": 4,
    }  # fmt: skip
    assert table.num_rows == 8


def test_a_higher_click_limit_keeps_the_session() -> None:
    _, stats = _mine(multi_click="drop", max_clicks=2)
    assert stats["sessions_kept"] == 4 and stats["sessions_dropped_multi_click"] == 0


@pytest.mark.parametrize(("policy", "weight"), [("downweight", 0.5), ("keep", 1.0)])
def test_downweight_and_keep_policies(policy: str, weight: float) -> None:
    table, stats = _mine(multi_click=policy)
    # s2's clicks in time order (A1 at minute 3, then A2); A1 and A2 were both clicked, so
    # neither is a negative of the other; X9 is shown but unknown.
    assert [r for r in _rows(table, "hard") if r[0] == "s2.jpg"] == [
        ("s2.jpg", "A1", "A3", weight), ("s2.jpg", "A2", "A3", weight)
    ]  # fmt: skip
    assert {r[3] for r in _rows(table) if r[0] != "s2.jpg"} == {1.0}
    assert [r[3] for r in _rows(table, "easy") if r[0] == "s2.jpg"] == [weight] * 4
    assert stats["sessions_kept"] == 4 and stats["sessions_dropped_multi_click"] == 0
    assert stats["shown_unknown_product"] == 1 and stats["repeat_clicks"] == 1
    assert stats["hard_triplets"] == 6 and stats["easy_triplets"] == 8


@pytest.mark.parametrize("policy", ["drop", "downweight", "keep"])
def test_negatives_are_valid(policy: str) -> None:
    table, _ = _mine(multi_click=policy, easy_negatives=3)
    clicked: dict[str, set[str]] = {}
    for r in CLICKS.to_pylist():
        clicked.setdefault(r["query_image_uri"], set()).add(r["clicked_product_id"])
    for r in table.to_pylist():
        assert r["negative_product_id"] not in clicked[r["query_image_uri"]]
        if r["kind"] == "easy":
            assert CATEGORY[r["negative_product_id"]] != CATEGORY[r["positive_product_id"]]
        else:
            assert r["kind"] == "hard"
    # Easy negatives of one click are distinct.
    easy = Counter(
        (r["query_image_uri"], r["positive_product_id"], r["negative_product_id"])
        for r in table.to_pylist()
        if r["kind"] == "easy"
    )
    assert set(easy.values()) == {1}


def test_easy_negatives_are_seeded_per_session() -> None:
    first, _ = _mine(seed=3)
    again, _ = _mine(seed=3)
    assert first.equals(again)
    others = [_mine(seed=s)[0] for s in range(6)]
    assert any(not t.equals(others[0]) for t in others[1:])
    # A session's triplets do not depend on the rest of the log or on the row order.
    alone, _ = mine_click_log(
        CLICKS.filter(pc.equal(CLICKS["query_id"], "s1")), PRODUCTS, MiningConfig(seed=3)
    )
    assert _rows(alone) == [r for r in _rows(first) if r[0] == "s1.jpg"]
    shuffled, _ = mine_click_log(CLICKS.take([5, 4, 3, 2, 1, 0]), PRODUCTS, MiningConfig(seed=3))
    assert shuffled.equals(first)


def test_too_few_other_products_are_counted() -> None:
    one_category = ProductCategories(["A1", "A2", "B1"], ["a", "a", "b"])
    table, stats = mine_click_log(
        CLICKS.filter(pc.equal(CLICKS["query_id"], "s1")),
        one_category,
        MiningConfig(easy_negatives=2),
    )
    # Only B1 lies outside category "a": one easy negative instead of two.
    assert _rows(table, "easy") == [("s1.jpg", "A1", "B1", 1.0)]
    assert stats["easy_negatives_short"] == 1


def test_a_click_without_any_negative_is_counted() -> None:
    lonely = pa.Table.from_pylist([_click("q", ["A1"], "A1", 0)], schema=CLICK_SCHEMA)
    table, stats = mine_click_log(lonely, PRODUCTS, MiningConfig(easy_negatives=0))
    assert table.num_rows == 0 and stats["clicks_without_negatives"] == 1
    empty, stats = mine_click_log(CLICK_SCHEMA.empty_table(), PRODUCTS, MiningConfig())
    assert empty.num_rows == 0 and stats["sessions"] == 0


def test_sample_outside_is_uniform_over_the_other_categories() -> None:
    rng = np.random.default_rng(0)
    counts = Counter(p for _ in range(3000) for p in PRODUCTS.sample_outside("b", 1, rng))
    assert set(counts) == {"A1", "A2", "A3", "C1"}
    assert all(abs(c / 3000 - 0.25) < 0.04 for c in counts.values())
    assert sorted(PRODUCTS.sample_outside("a", 10, rng)) == ["B1", "B2", "C1"]
    assert len(PRODUCTS) == 6 and PRODUCTS.category("A1") == "a" and "Z" not in PRODUCTS


def test_config_has_a_mining_section() -> None:
    cfg = Config.model_validate({"mine": {"multi_click": "downweight", "easy_negatives": 0}})
    assert cfg.mine.multi_click == "downweight" and cfg.mine.max_clicks == 1
    with pytest.raises(ValueError):
        Config.model_validate({"mine": {"multi_click": "sometimes"}})
