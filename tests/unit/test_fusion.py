"""Category fusion: the kNN vote, the fused probabilities and the weight tuning."""

from __future__ import annotations

import numpy as np
import pytest

from vsearch.rank.fusion import (
    fit_temperature,
    fuse,
    knn_vote,
    predict_categories,
    soften,
    tune_fusion_weight,
)


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


def test_soften_keeps_the_top_class_and_flattens_towards_uniform() -> None:
    probs = np.array([[0.95, 0.04, 0.01], [0.2, 0.5, 0.3]], np.float32)
    np.testing.assert_array_equal(soften(probs, 1.0), probs)
    for t in (0.5, 2.0, 5.0):
        out = soften(probs, t)
        np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-6)
        np.testing.assert_array_equal(out.argmax(1), probs.argmax(1))
    assert soften(probs, 5.0)[0, 0] < 0.95 < soften(probs, 0.5)[0, 0]
    np.testing.assert_allclose(soften(probs, 1e6), 1 / 3, atol=1e-4)
    # exp(log(p) / t) renormalised: p ** (1 / t) over the row's sum.
    expected = probs[1] ** 0.5 / (probs[1] ** 0.5).sum()
    np.testing.assert_allclose(soften(probs, 2.0)[1], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="> 0"):
        soften(probs, 0.0)


def test_fused_with_a_softened_head_the_vote_can_overturn_it() -> None:
    model = np.array([[0.95, 0.05]], np.float32)
    vote = np.array([[0.1, 0.9]], np.float32)
    assert fuse(model, vote, 0.5).argmax() == 0  # 0.525 against 0.475
    assert fuse(model, vote, 0.5, temperature=5.0).argmax() == 1
    np.testing.assert_allclose(
        fuse(model, vote, 0.5, 5.0), 0.5 * soften(model, 5.0) + 0.5 * vote, rtol=1e-6
    )


def test_fit_temperature_softens_an_over_confident_head() -> None:
    # Always 99% sure, right 7 times in 10: the log-loss is least well above temperature 1.
    probs = np.tile(np.array([[0.99, 0.01]], np.float32), (10, 1))
    truth = np.array([0] * 7 + [1] * 3)
    t = fit_temperature(probs, truth)
    assert t > 2.0
    assert soften(probs, t)[0, 0] == pytest.approx(0.7, abs=0.05)  # calibrated: about 70%
    # A head as sure as it is right keeps about its temperature; unknown rows are left out.
    calibrated = np.tile(np.array([[0.7, 0.3]], np.float32), (10, 1))
    assert 0.8 <= fit_temperature(calibrated, truth) <= 1.25
    assert fit_temperature(calibrated, np.full(10, -1)) == 1.0
