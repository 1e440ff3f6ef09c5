"""Title tokens for the lexical channel, the model codes the combiner compares and a typo-tolerant
title similarity (soft TF-IDF) it weighs beside them."""

from __future__ import annotations

import math
import re
from collections import Counter

__all__ = ["SoftTfidf", "model_codes", "title_tokens", "token_similarity"]

_WORD = re.compile(r"[a-z0-9]+")
_CHUNK = re.compile(r"[^\s,;()\[\]]+")


def model_codes(text: str) -> set[str]:
    """Model-number-like chunks of ``text``: letters and digits mixed, 4+ characters once their
    punctuation is removed ("PS-LX350H/" -> "pslx350h")."""
    codes = set()
    for chunk in _CHUNK.findall(text.lower()):
        code = "".join(_WORD.findall(chunk))
        if len(code) >= 4 and any(c.isdigit() for c in code) and any(c.isalpha() for c in code):
            codes.add(code)
    return codes


def title_tokens(text: str) -> list[str]:
    """Lower-case alphanumeric words of ``text`` followed by its ``model_codes`` (sorted) not
    already among them."""
    words = _WORD.findall(text.lower())
    seen = set(words)
    return words + sorted(c for c in model_codes(text) if c not in seen)


def token_similarity(x: str, y: str) -> float:
    """``1 - d / max(len)`` with ``d`` the optimal-string-alignment distance (an inserted, deleted or
    replaced letter, or two neighbouring letters swapped, each cost 1); 0 for two different tokens
    of which one has a digit: sizes and model numbers must agree exactly."""
    if x == y:
        return 1.0
    if any(c.isdigit() for c in x + y):
        return 0.0
    n, m = len(x), len(y)
    prev2: list[int] = []
    prev = list(range(m + 1))
    for i in range(1, n + 1):
        row = [i] + [0] * m
        for j in range(1, m + 1):
            cost = 0 if x[i - 1] == y[j - 1] else 1
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and x[i - 1] == y[j - 2] and x[i - 2] == y[j - 1]:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return 1.0 - prev[m] / max(n, m)


class SoftTfidf:
    """Soft TF-IDF similarity of titles (Cohen, Ravikumar and Fienberg, 2003).

    Each title is an L2-normalised TF-IDF vector over its ``title_tokens`` (IDF from ``titles``
    themselves). Two titles score the sum, over the tokens of one, of its weight times the weight
    of its most similar token in the other times their ``token_similarity``, counting only pairs
    at least ``threshold`` similar; the score is the mean of both directions, in [0, 1]. A typo
    in a brand keeps the score high, a different brand (a rare, heavily weighted token) lowers it.
    """

    def __init__(self, titles: list[str], threshold: float = 0.8) -> None:
        self.threshold = threshold
        tokens = [title_tokens(t) for t in titles]
        df = Counter(tok for toks in tokens for tok in set(toks))
        n = len(titles)
        self.vectors: list[dict[str, float]] = []
        for toks in tokens:
            tf = Counter(toks)
            vec = {t: c * (math.log((n + 1) / (df[t] + 1)) + 1.0) for t, c in tf.items()}
            norm = math.sqrt(sum(w * w for w in vec.values())) or 1.0
            self.vectors.append({t: w / norm for t, w in vec.items()})
        self._similar: dict[tuple[str, str], float] = {}

    def _sim(self, x: str, y: str) -> float:
        if abs(len(x) - len(y)) > (1.0 - self.threshold) * max(len(x), len(y)):
            return 0.0
        key = (x, y) if x < y else (y, x)
        if key not in self._similar:
            self._similar[key] = token_similarity(x, y)
        return self._similar[key]

    def _directed(self, va: dict[str, float], vb: dict[str, float]) -> float:
        total = 0.0
        for t, w in va.items():
            if t in vb:
                total += w * vb[t]
                continue
            best, weight = 0.0, 0.0
            for u, wu in vb.items():
                sim = self._sim(t, u)
                if sim >= self.threshold and sim > best:
                    best, weight = sim, wu
            total += w * weight * best
        return total

    def score(self, i: int, j: int) -> float:
        """Similarity of titles ``i`` and ``j`` (rows of ``titles``)."""
        va, vb = self.vectors[i], self.vectors[j]
        return min(1.0, 0.5 * (self._directed(va, vb) + self._directed(vb, va)))
