"""Category prediction by fusion (Alibaba): the classifier's softmax fused with a similarity-
weighted vote over the labelled neighbours a search returned. Serving and evaluation both reach
``predict_categories`` through :meth:`vsearch.rank.pipeline.QueryPipeline.categorise`, so their
figures agree by construction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def knn_vote(
    similarities: np.ndarray,
    neighbour_labels: np.ndarray,
    classes: int,
    temperature: float = 0.05,
) -> np.ndarray:
    """Vote of ``(n, k)`` neighbours with labels ``(n, k) int64`` (-1: no label) into ``(n, classes)``
    probabilities; neighbour ``j`` weighs ``exp(s_j / temperature)`` (the nearest counts most).
    Rows with no labelled neighbour are uniform."""
    n = similarities.shape[0]
    votes = np.zeros((n, classes), dtype=np.float64)
    if similarities.size:
        logits = similarities / temperature
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        weights[neighbour_labels < 0] = 0.0
        rows = np.repeat(np.arange(n), neighbour_labels.shape[1])
        labels = neighbour_labels.reshape(-1)
        keep = labels >= 0
        np.add.at(votes, (rows[keep], labels[keep]), weights.reshape(-1)[keep])
    total = votes.sum(axis=1, keepdims=True)
    uniform = np.full((1, classes), 1.0 / max(classes, 1))
    return np.where(total > 0, votes / np.maximum(total, 1e-12), uniform).astype(np.float32)


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities ``(n, c)`` at ``temperature``: ``softmax(log(p) / temperature)``, as if the
    head's logits were divided by it (> 1 softens an over-confident head, 1 changes nothing).
    The top-1 class never changes."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    probs = np.asarray(probs, dtype=np.float32)
    if temperature == 1.0 or probs.shape[1] == 0:
        return probs
    logits = np.log(np.clip(probs.astype(np.float64), 1e-30, None)) / temperature
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def fit_temperature(
    probs: np.ndarray,
    truth: np.ndarray,
    grid: Sequence[float] = tuple(np.round(np.geomspace(0.5, 50, 41), 3)),
) -> float:
    """The temperature of ``grid`` under which ``probs`` ``(n, c)`` give the true classes
    ``truth`` ``(n,) int64`` (-1: unknown, left out) the least negative log-likelihood:
    temperature scaling (Guo et al., 2017), which fits calibration and leaves accuracy alone."""
    known = truth >= 0
    if not known.any():
        return 1.0
    rows = np.flatnonzero(known)

    def nll(t: float) -> float:
        p = soften(probs[rows], t)[np.arange(len(rows)), truth[rows]]
        return float(-np.log(np.clip(p, 1e-30, None)).mean())

    return min(grid, key=lambda t: (nll(float(t)), abs(np.log(float(t)))))


def fuse(
    model_probs: np.ndarray, vote_probs: np.ndarray, weight: float, temperature: float = 1.0
) -> np.ndarray:
    """``weight * soften(model, temperature) + (1 - weight) * vote``, both ``(n, c)``; weight in
    [0, 1]."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")
    if model_probs.shape[1] == 0:
        return vote_probs
    return weight * soften(model_probs, temperature) + (1.0 - weight) * vote_probs


def predict_categories(
    model_probs: np.ndarray,
    similarities: np.ndarray,
    neighbour_categories: Sequence[Sequence[str]],
    categories: Sequence[str],
    weight: float,
    temperature: float = 0.05,
    model_temperature: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Fused category probabilities ``(n, c)`` over ``categories`` and the vote alone.

    ``model_probs`` ``(n, c)`` from the category head (``c = 0``: no head, the vote decides),
    softened at ``model_temperature`` before they are fused; ``similarities`` ``(n, k)`` and
    ``neighbour_categories`` the search hits' categories, voting at ``temperature``.
    """
    index: Mapping[str, int] = {c: i for i, c in enumerate(categories)}
    labels = np.asarray(
        [[index.get(c, -1) for c in row] for row in neighbour_categories], dtype=np.int64
    ).reshape(similarities.shape)
    vote = knn_vote(similarities, labels, len(categories), temperature)
    return fuse(model_probs, vote, weight, model_temperature), vote


def tune_fusion_weight(
    model_probs: np.ndarray,
    vote_probs: np.ndarray,
    truth: np.ndarray,
    grid: Sequence[float] = tuple(np.round(np.linspace(0, 1, 21), 2)),
    model_temperature: float = 1.0,
) -> tuple[float, dict[float, float]]:
    """The weight of ``grid`` with the best top-1 accuracy against ``truth`` ``(n,) int64``
    (ties: the one nearest 0.5), and the accuracy of every weight (the head's probabilities
    softened at ``model_temperature``)."""
    model = soften(model_probs, model_temperature)
    scores = {
        float(w): float((fuse(model, vote_probs, float(w)).argmax(1) == truth).mean()) for w in grid
    }
    best = max(scores, key=lambda w: (scores[w], -abs(w - 0.5)))
    return best, scores
