"""Batch composition and triplet mining: P x K label batches and click-log triplets."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np


class PKBatchSampler:
    """Batches of ``p`` labels x ``k`` items each, the shape batch-hard mining needs.

    Every epoch shuffles the labels, cuts them into groups of ``p`` and draws ``k`` items per label
    (with replacement when a label has fewer). An epoch has enough batches to visit every label
    once and to draw as many items as the data has (``max(labels / p, items / (p k))``), so a set
    with many photos per product is not cut short. Batches are dealt to ``world_size`` ranks
    round-robin and every rank gets the same number, so data-parallel steps stay in lockstep.
    """

    def __init__(
        self,
        labels: np.ndarray,
        p: int,
        k: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        batches_per_rank: int | None = None,
    ) -> None:
        """``batches_per_rank`` fixes the epoch's length; by default it follows from ``labels``.
        Ranks that each hold a different shard of the data pass the same number, computed from
        the whole set, so that their data-parallel steps stay in lockstep."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        # Negative labels mark rows that are never drawn.
        self.by_label: list[np.ndarray] = [
            np.flatnonzero(labels == lab) for lab in np.unique(labels) if lab >= 0
        ]
        if len(self.by_label) < 2:
            raise ValueError("PK batches need at least two distinct labels")
        self.p = min(p, len(self.by_label))
        self.k = k
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        if batches_per_rank is not None and batches_per_rank < 1:
            raise ValueError(f"batches_per_rank must be >= 1, got {batches_per_rank}")
        self.fixed_batches = batches_per_rank

    def batches_per_rank(self) -> int:
        if self.fixed_batches is not None:
            return self.fixed_batches
        return self.natural_batches(
            sum(len(rows) for rows in self.by_label),
            len(self.by_label),
            self.p,
            self.k,
            self.world_size,
        )

    @staticmethod
    def natural_batches(items: int, labels: int, p: int, k: int, world_size: int = 1) -> int:
        """Batches per rank that visit every label once and draw as many items as there are."""
        p = min(p, labels)
        total = max(labels // p, items // (p * k))
        return max(1, total // world_size)

    def epoch(self, epoch: int) -> Iterator[np.ndarray]:
        """The ``(p * k,) int64`` item-index batches of this rank for ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.by_label))
        n_batches = self.batches_per_rank() * self.world_size
        for b in range(n_batches):
            # Wrap around when there are fewer labels than batches x p (tiny datasets, many ranks).
            groups = [order[(b * self.p + j) % len(order)] for j in range(self.p)]
            picks = [
                rng.choice(self.by_label[g], size=self.k, replace=len(self.by_label[g]) < self.k)
                for g in groups
            ]
            if b % self.world_size == self.rank:
                yield np.concatenate(picks).astype(np.int64)


def hard_negatives(shown: Iterable[Sequence[str]], clicked: Iterable[str]) -> list[str]:
    """The shown-but-not-clicked products of one search session: the union of its ``shown``
    lists, in first-shown order, each once, without any product of ``clicked``."""
    not_negative = set(clicked)
    return [p for p in dict.fromkeys(p for ids in shown for p in ids) if p not in not_negative]


def mine_click_triplets(
    query_rows: Mapping[str, int],
    catalog_rows: Mapping[str, int],
    sessions: Sequence[tuple[str, Sequence[str], str]],
) -> np.ndarray:
    """Triplets of training-image rows from single clicks (Alibaba's click mining).

    ``sessions`` are ``(query_image_uri, shown_product_ids, clicked_product_id)``, each taken as a
    one-click session; ``query_rows`` maps a query image URI and ``catalog_rows`` a product id to a
    row of the training images. Each shown-but-not-clicked product (``hard_negatives``) gives one
    triplet (query, clicked product's image, shown product's image). Sessions whose query or
    clicked product has no row are skipped, and so are negatives without a row. The multi-click
    policies and easy negatives of the mine job are in ``vsearch.training.click_mining``.
    Returns ``(t, 3) int64``.
    """
    triplets: list[tuple[int, int, int]] = []
    for uri, shown, clicked in sessions:
        anchor = query_rows.get(uri)
        positive = catalog_rows.get(clicked)
        if anchor is None or positive is None:
            continue
        for other in hard_negatives([shown], [clicked]):
            negative = catalog_rows.get(other)
            if negative is not None:
                triplets.append((anchor, positive, negative))
    return np.asarray(triplets, dtype=np.int64).reshape(-1, 3)
