"""Tests for ``vsearch.eval.metrics`` with hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vsearch.eval import metrics
from vsearch.eval.metrics import (
    ann_recall,
    exact_topk,
    latency_summary,
    mean_average_precision,
    recall_at_k,
)

# Three queries, three results each.
RANKED = [["a", "b", "c"], ["x", "y", "z"], ["p", "q", "r"]]
TRUTH = ["a", "y", "s"]
RELEVANT = [{"a", "c"}, {"y"}, {"q", "r", "s"}]


def test_recall_at_k_hand_computed() -> None:
    # q0: "a" at rank 1; q1: "y" at rank 2; q2: "s" never retrieved.
    assert recall_at_k(RANKED, TRUTH, 1) == pytest.approx(1 / 3)  # q0 only
    assert recall_at_k(RANKED, TRUTH, 2) == pytest.approx(2 / 3)  # q0, q1
    assert recall_at_k(RANKED, TRUTH, 3) == pytest.approx(2 / 3)
    assert recall_at_k(RANKED, TRUTH, 10) == pytest.approx(2 / 3)  # k beyond the list length


def test_recall_at_k_accepts_short_and_empty_rankings() -> None:
    assert recall_at_k([[], ["t"]], ["t", "t"], 5) == pytest.approx(0.5)


def test_map_hand_computed() -> None:
    # q0: hits at ranks 1 (P=1/1) and 3 (P=2/3); |R|=2 -> AP = (1 + 2/3) / 2 = 5/6
    # q1: hit at rank 2 (P=1/2); |R|=1 -> AP = 1/2
    # q2: hits at ranks 2 (P=1/2) and 3 (P=2/3); |R|=3 ("s" never found) -> AP = (7/6) / 3 = 7/18
    # mAP = (15/18 + 9/18 + 7/18) / 3 = 31/54
    assert mean_average_precision(RANKED, RELEVANT) == pytest.approx(31 / 54)


def test_map_at_k_hand_computed() -> None:
    # k=2: q0 hit at 1 -> 1 / min(2, 2) = 1/2; q1 hit at 2 -> (1/2) / min(1, 2) = 1/2;
    # q2 hit at 2 -> (1/2) / min(3, 2) = 1/4. mAP@2 = (1/2 + 1/2 + 1/4) / 3 = 5/12
    assert mean_average_precision(RANKED, RELEVANT, k=2) == pytest.approx(5 / 12)
    # k=1: only q0 hits at rank 1 -> AP 1; others 0. mAP@1 = 1/3
    assert mean_average_precision(RANKED, RELEVANT, k=1) == pytest.approx(1 / 3)


def test_map_perfect_and_edge_cases() -> None:
    assert mean_average_precision([["a", "b"]], [{"a", "b"}]) == pytest.approx(1.0)
    # A repeated id counts once: hits at rank 1 only -> AP = 1 / 2.
    assert mean_average_precision([["a", "a", "z"]], [{"a", "b"}]) == pytest.approx(0.5)
    # An empty relevant set contributes AP 0 but still counts in the mean.
    assert mean_average_precision([["a"], ["a"]], [{"a"}, set()]) == pytest.approx(0.5)


@pytest.mark.parametrize("k", [0, -1])
def test_bad_k_raises(k: int) -> None:
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        recall_at_k(RANKED, TRUTH, k)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        mean_average_precision(RANKED, RELEVANT, k=k)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        ann_recall(np.zeros((1, 2), np.int64), np.zeros((1, 2), np.int64), k)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        exact_topk(np.zeros((1, 2), np.float32), np.zeros((3, 2), np.float32), k)


def test_length_mismatch_and_empty_raise() -> None:
    with pytest.raises(ValueError, match="length mismatch: ranked has 3 queries but truth has 2"):
        recall_at_k(RANKED, TRUTH[:2], 1)
    with pytest.raises(ValueError, match=r"length mismatch.*relevant has 1"):
        mean_average_precision(RANKED, RELEVANT[:1])
    with pytest.raises(ValueError, match="ranked is empty"):
        recall_at_k([], [], 1)
    with pytest.raises(ValueError, match="ranked is empty"):
        mean_average_precision([], [])


def test_ann_recall_hand_computed() -> None:
    approx = np.array([[1, 2, 3], [4, -1, -1]], dtype=np.int64)
    exact = np.array([[3, 2, 9], [4, 5, 6]], dtype=np.int64)
    # k=3: row 0 {1,2,3} & {3,2,9} = 2; row 1 {4} & {4,5,6} = 1 (padding ignored) -> 3 / 6
    assert ann_recall(approx, exact, 3) == pytest.approx(0.5)
    # k=1: row 0 {1} & {3} = 0; row 1 {4} & {4} = 1 -> 1 / 2
    assert ann_recall(approx, exact, 1) == pytest.approx(0.5)
    # k=2: row 0 {1,2} & {3,2} = 1; row 1 {4} & {4,5} = 1 -> 2 / 4
    assert ann_recall(approx, exact, 2) == pytest.approx(0.5)
    assert ann_recall(exact, exact, 3) == pytest.approx(1.0)


def test_ann_recall_uses_only_first_k_columns() -> None:
    approx = np.array([[7, 1]], dtype=np.int64)
    exact = np.array([[1, 7]], dtype=np.int64)
    assert ann_recall(approx, exact, 1) == pytest.approx(0.0)
    assert ann_recall(approx, exact, 2) == pytest.approx(1.0)


def test_ann_recall_validation() -> None:
    a = np.zeros((2, 3), np.int64)
    with pytest.raises(ValueError, match="fewer than k=4"):
        ann_recall(a, a, 4)
    with pytest.raises(ValueError, match="approx has 2 rows but exact has 1"):
        ann_recall(a, a[:1], 2)
    with pytest.raises(ValueError, match="2-D"):
        ann_recall(a[0], a, 1)
    with pytest.raises(ValueError, match="integer ids"):
        ann_recall(a.astype(np.float32), a, 1)
    with pytest.raises(ValueError, match="0 rows"):
        ann_recall(a[:0], a[:0], 1)


def _reference_topk(q: np.ndarray, db: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = q @ db.T
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, axis=1), ids


@pytest.mark.parametrize("k", [1, 5, 64, 200])
def test_exact_topk_matches_argsort(k: int) -> None:
    rng = np.random.default_rng(0)
    q = rng.standard_normal((17, 32)).astype(np.float32)
    db = rng.standard_normal((200, 32)).astype(np.float32)
    scores, ids = exact_topk(q, db, k)
    ref_scores, ref_ids = _reference_topk(q, db, k)
    assert scores.shape == (17, k) and scores.dtype == np.float32
    assert ids.shape == (17, k) and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-6)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_exact_topk_blocks_give_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    q = rng.standard_normal((10, 8)).astype(np.float32)
    db = rng.standard_normal((30, 8)).astype(np.float32)
    whole = exact_topk(q, db, 4)
    monkeypatch.setattr(metrics, "_TOPK_BLOCK", 3)
    blocked = exact_topk(q, db, 4)
    np.testing.assert_array_equal(whole[1], blocked[1])
    # BLAS may round a (3, d) product differently from a (10, d) one in the last bit.
    np.testing.assert_allclose(whole[0], blocked[0], rtol=1e-5)


def test_exact_topk_ties_break_by_smaller_index() -> None:
    db = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.5, 0.0]], np.float32)
    q = np.array([[1.0, 0.0]], np.float32)
    scores, ids = exact_topk(q, db, 2)  # rows 0, 2, 3 all score 1.0
    np.testing.assert_array_equal(ids, [[0, 2]])
    np.testing.assert_array_equal(scores, [[1.0, 1.0]])


def test_exact_topk_pads_when_k_exceeds_n() -> None:
    db = np.array([[1.0, 0.0], [2.0, 0.0]], np.float32)
    q = np.array([[1.0, 0.0], [-1.0, 0.0]], np.float64)  # float64 input is cast
    scores, ids = exact_topk(q, db, 4)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, [[1, 0, -1, -1], [0, 1, -1, -1]])
    np.testing.assert_array_equal(scores[:, :2], [[2.0, 1.0], [-1.0, -2.0]])
    assert np.all(np.isneginf(scores[:, 2:]))


def test_exact_topk_empty_database_and_queries() -> None:
    scores, ids = exact_topk(np.ones((2, 3), np.float32), np.zeros((0, 3), np.float32), 2)
    assert np.all(ids == -1) and np.all(np.isneginf(scores))
    scores, ids = exact_topk(np.zeros((0, 3), np.float32), np.ones((4, 3), np.float32), 2)
    assert scores.shape == (0, 2) and ids.shape == (0, 2)


def test_exact_topk_validation() -> None:
    with pytest.raises(ValueError, match="dimension mismatch"):
        exact_topk(np.zeros((1, 3), np.float32), np.zeros((2, 4), np.float32), 1)
    with pytest.raises(ValueError, match="2-D"):
        exact_topk(np.zeros(3, np.float32), np.zeros((2, 3), np.float32), 1)


def test_latency_summary_known_list() -> None:
    # Sorted ms: [10, 20, 30, 40, 100]; linear interpolation at position (n-1) * q / 100:
    # p50 -> pos 2 -> 30; p90 -> pos 3.6 -> 40 + 0.6 * 60 = 76; p99 -> pos 3.96 -> 97.6.
    out = latency_summary([0.040, 0.010, 0.100, 0.030, 0.020])
    assert set(out) == {"count", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms"}
    assert out["count"] == 5
    assert out["mean_ms"] == pytest.approx(40.0)
    assert out["p50_ms"] == pytest.approx(30.0)
    assert out["p90_ms"] == pytest.approx(76.0)
    assert out["p99_ms"] == pytest.approx(97.6)
    assert out["max_ms"] == pytest.approx(100.0)
    assert all(isinstance(v, float) for v in out.values())


def test_latency_summary_matches_numpy_percentile() -> None:
    rng = np.random.default_rng(2)
    xs = rng.exponential(0.02, size=1001)
    out = latency_summary(xs.tolist())
    for q in (50, 90, 99):
        assert out[f"p{q}_ms"] == pytest.approx(float(np.percentile(xs * 1000, q)))
    assert out["max_ms"] == pytest.approx(float(xs.max() * 1000))


def test_latency_summary_single_and_invalid() -> None:
    out = latency_summary([0.005])
    assert out["p50_ms"] == out["p99_ms"] == out["max_ms"] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="at least one sample"):
        latency_summary([])
    with pytest.raises(ValueError, match="finite and >= 0"):
        latency_summary([0.1, -0.2])
    with pytest.raises(ValueError, match="finite and >= 0"):
        latency_summary([math.nan])


def test_quality_gate_and_report_values() -> None:
    from vsearch.eval.quality import quality_gate, report_value

    assert quality_gate(0.5, None, 0.0)[0]
    assert quality_gate(0.80, 0.81, 0.01)[0] and quality_gate(0.82, 0.81, 0.0)[0]
    passed, reason = quality_gate(0.79, 0.81, 0.01)
    assert not passed and reason.startswith("failed") and "-0.0200" in reason
    report = {"photo_to_catalog": {"recall_at_10": 0.9}}
    assert report_value(report, "photo_to_catalog.recall_at_10") == 0.9
    with pytest.raises(KeyError, match="recall_at_5"):
        report_value(report, "photo_to_catalog.recall_at_5")
