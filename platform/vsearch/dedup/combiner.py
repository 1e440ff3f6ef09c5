"""The combiner: a small logistic model over the channels' evidence, with a fitted decision threshold.

Features per channel ``c`` (from ``candidate_union``): the score (0 when absent), whether ``c``
proposed the pair, ``1 / (1 + rank)`` of the better and of the worse direction, and whether both
directions proposed it; with the lexical channel also the model-code agreement of the two titles
and their soft TF-IDF similarity (typo-tolerant, ``vsearch.dedup.tokens.SoftTfidf``).
The threshold is fitted on labelled pairs either to a target precision (the lowest threshold that
still reaches it, i.e. the most recall at that precision) or to the best F1.

``cross_fit`` decides labelled pairs so that no pair is decided by a model fitted on it: the true
clusters are split into folds and each fold's pairs are decided by a model fitted on the others.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

__all__ = [
    "Combiner",
    "choose_threshold",
    "cross_fit",
    "features",
    "fit_combiner",
    "ranked_cuts",
    "row_folds",
]


def features(pairs: pd.DataFrame, channels: list[str]) -> tuple[np.ndarray, list[str]]:
    """``(m, f) float64`` evidence of each pair and the feature names."""
    cols, names = [], []
    for c in channels:
        score = pairs[f"{c}_score"].to_numpy(dtype=float)
        present = ~np.isnan(score)
        rank = pairs[f"{c}_rank"].to_numpy(dtype=float)
        worst = pairs[f"{c}_worst"].to_numpy(dtype=float)
        cols += [
            np.where(present, score, 0.0),
            present.astype(float),
            np.where(present, 1.0 / (1.0 + rank), 0.0),
            np.where(present, 1.0 / (1.0 + worst), 0.0),
            pairs[f"{c}_both"].to_numpy(dtype=float),
        ]
        names += [f"{c}_score", f"{c}_present", f"{c}_best_rank", f"{c}_worst_rank", f"{c}_both"]
    if "lexical" in channels:
        for name in ("code_agreement", "title_similarity"):
            if name in pairs:
                cols.append(pairs[name].to_numpy(dtype=float))
                names.append(name)
    return np.stack(cols, axis=1) if cols else np.zeros((len(pairs), 0)), names


def _logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 50) -> np.ndarray:
    """Ridge logistic regression by Newton steps; ``x`` has a bias column; returns weights."""
    w = np.zeros(x.shape[1])
    reg = l2 * np.eye(x.shape[1])
    reg[-1, -1] = 0.0  # the bias is not shrunk
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
        grad = x.T @ (p - y) + reg @ w
        hess = (x * (p * (1 - p))[:, None]).T @ x + reg + 1e-9 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def ranked_cuts(score: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every way to decide the pairs scoring at least a threshold, one per distinct score,
    highest first: ``(threshold, true positives, pairs decided)``. ``score`` must not be empty."""
    order = np.argsort(-np.asarray(score, float), kind="stable")
    s, y = np.asarray(score, float)[order], np.asarray(label, bool)[order]
    cut = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # only between different scores
    return s[cut], np.cumsum(y)[cut].astype(float), (cut + 1).astype(float)


def choose_threshold(
    probability: np.ndarray, label: np.ndarray, true_total: int, target_precision: float | None
) -> float:
    """The decision threshold on ``probability`` fitted to labelled pairs.

    ``true_total`` counts every true pair of the fitted data, also those no channel proposed, so
    recall is the real one. With ``target_precision`` the lowest threshold whose precision reaches
    it (if none does, the highest-precision one); else the threshold of the best F1.
    """
    if len(probability) == 0 or true_total == 0:
        return 0.5
    threshold, tp, decided = ranked_cuts(probability, label)
    precision = tp / decided
    if target_precision is not None:
        ok = np.flatnonzero(precision >= target_precision)
        at = ok[-1] if len(ok) else int(np.argmax(precision))
    else:
        at = int(np.argmax(2 * tp / (decided + true_total)))
    return float(threshold[at])


@dataclass
class Combiner:
    """A fitted combiner: standardisation, logistic weights (last one the bias) and threshold."""

    channels: list[str]
    feature_names: list[str]
    mean: list[float]
    std: list[float]
    weights: list[float]
    threshold: float
    #: What it was fitted on (pairs, true pairs, target), for the report.
    fitted_on: dict

    def probability(self, pairs: pd.DataFrame) -> np.ndarray:
        """``(m,) float64`` probability that each pair is a duplicate."""
        x, names = features(pairs, self.channels)
        if names != self.feature_names:
            raise ValueError(f"combiner expects features {self.feature_names}, got {names}")
        z = (x - np.asarray(self.mean)) / np.asarray(self.std)
        z = np.hstack([z, np.ones((len(z), 1))])
        return 1.0 / (1.0 + np.exp(-np.clip(z @ np.asarray(self.weights), -30, 30)))

    def decide(self, pairs: pd.DataFrame) -> np.ndarray:
        return self.probability(pairs) >= self.threshold

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Combiner:
        return cls(**json.loads(text))


def fit_combiner(
    pairs: pd.DataFrame,
    label: np.ndarray,
    channels: list[str],
    true_total: int,
    target_precision: float | None = None,
) -> Combiner:
    """Fit weights and threshold on labelled candidate pairs (``label``: ``(m,) bool``)."""
    x, names = features(pairs, channels)
    label = np.asarray(label, bool)
    mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
    std = x.std(axis=0) if len(x) else np.ones(x.shape[1])
    std = np.where(std > 1e-9, std, 1.0)
    z = np.hstack([(x - mean) / std, np.ones((len(x), 1))])
    if label.any() and not label.all():
        weights = _logistic(z, label.astype(float))
    else:
        weights = np.zeros(z.shape[1])
        weights[-1] = 10.0 if label.all() and len(label) else -10.0
    comb = Combiner(
        channels, names, mean.tolist(), std.tolist(), weights.tolist(), 0.5,
        {"pairs": len(label), "true_pairs": int(true_total), "target_precision": target_precision},
    )  # fmt: skip
    comb.threshold = choose_threshold(comb.probability(pairs), label, true_total, target_precision)
    return comb


def row_folds(n: int, clusters: list[list[int]], folds: int) -> np.ndarray:
    """``(n,) int`` fold of every row: the rows of one true cluster share a fold (by a hash of the
    cluster's smallest row, so it does not depend on input order beyond the row numbers)."""
    fold = np.array([zlib.crc32(str(i).encode()) % folds for i in range(n)], dtype=np.int64)
    for members in clusters:
        fold[list(members)] = zlib.crc32(str(min(members)).encode()) % folds
    return fold


def cross_fit(
    pairs: pd.DataFrame,
    label: np.ndarray,
    true_pairs: np.ndarray,
    fold_of_row: np.ndarray,
    channels: list[str],
    folds: int,
    target_precision: float | None = None,
) -> tuple[np.ndarray, np.ndarray, list[Combiner]]:
    """Decide every labelled pair with a model that never saw it.

    ``true_pairs``: ``(t, 2)`` rows of all true pairs (for the recall each fold's threshold sees).
    A pair belongs to the fold of its row ``a``; the model of fold ``f`` is fitted on the pairs
    whose two rows both lie outside ``f``. Returns (probability, decision, the fold models).
    """
    a = pairs["a"].to_numpy()
    b = pairs["b"].to_numpy()
    label = np.asarray(label, bool)
    fold_a, fold_b = fold_of_row[a], fold_of_row[b]
    true_fold = fold_of_row[true_pairs[:, 0]] if len(true_pairs) else np.zeros(0, int)
    probability = np.zeros(len(pairs))
    decision = np.zeros(len(pairs), bool)
    models = []
    for f in range(folds):
        fit = (fold_a != f) & (fold_b != f)
        model = fit_combiner(
            pairs[fit], label[fit], channels, int((true_fold != f).sum()), target_precision
        )
        models.append(model)
        mine = fold_a == f
        if mine.any():
            probability[mine] = model.probability(pairs[mine])
            decision[mine] = probability[mine] >= model.threshold
    return probability, decision, models
