"""Category fusion: the kNN vote, the fused probabilities and the weight tuning."""

from __future__ import annotations

import numpy as np
import pytest

from vsearch.rank.fusion import fuse, knn_vote, predict_categories, tune_fusion_weight


def test_knn_vote_weighs_nearer_neighbours_more() -> None:
    sims = np.array([[0.9, 0.8, 0.8], [0.5, 0.4, 0.0]], np.float32)
    labels = np.array([[0, 1, 1], [-1, -1, -1]])
    vote = knn_vote(sims, labels, classes=2, temperature=0.1)
    w0, w1 = 1.0, 2 * np.exp(-1.0)  # exp((s - max) / t)
    np.testing.assert_allclose(vote[0], [w0 / (w0 + w1), w1 / (w0 + w1)], rtol=1e-5)
    np.testing.assert_allclose(vote[1], [0.5, 0.5])  # no labelled neighbour: uniform


def test_fuse_and_predict() -> None:
    model = np.array([[0.9, 0.1], [0.4, 0.6]], np.float32)
    vote = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    np.testing.assert_allclose(fuse(model, vote, 0.25), [[0.225, 0.775], [0.85, 0.15]])
    np.testing.assert_allclose(fuse(np.zeros((2, 0)), vote, 0.5), vote)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fuse(model, vote, 1.5)
    fused, v = predict_categories(
        model, np.array([[0.9, 0.1], [0.9, 0.8]]), [["b", "x"], ["a", "a"]], ["a", "b"], 0.5
    )
    assert v[0].argmax() == 1 and v[1].argmax() == 0  # unknown category "x" does not vote
    np.testing.assert_allclose(fused, 0.5 * model + 0.5 * v)


def test_tuning_picks_the_best_weight() -> None:
    truth = np.array([0, 1, 1, 0])
    model = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.8, 0.2]])
    vote = np.array([[0.2, 0.8], [0.1, 0.9], [0.3, 0.7], [0.9, 0.1]])
    best, scores = tune_fusion_weight(model, vote, truth)
    assert scores[best] == 1.0 and scores[0.0] == 0.75 and scores[1.0] == 0.75
