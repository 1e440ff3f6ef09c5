"""Query policy shared by the service and offline evaluation: which category shards a photo is
searched in, and how many images to fetch for ``k`` products.

Routing follows Alibaba's visual search: the query's predicted category decides which shards are
searched. Here the category head's softmax picks the most probable categories until their
probability adds up to ``mass`` (at most ``max_categories``); a model without a category head, or
a caller that names categories, searches as asked.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "HYBRID_POOL",
    "IMAGES_PER_PRODUCT",
    "images_to_fetch",
    "products_to_rank",
    "route_categories",
]

#: Images fetched per product wanted: several images of one product may precede the next one.
IMAGES_PER_PRODUCT = 4
#: A hybrid (photo + text) query ranks this many times ``k`` products by the photo before the
#: text re-scores them, so words can lift a product from that far down.
HYBRID_POOL = 5


def products_to_rank(k: int, hybrid: bool = False) -> int:
    """Products ranked by the photo for ``k`` answers (more when text re-scores them)."""
    return k * HYBRID_POOL if hybrid else k


def images_to_fetch(k: int, hybrid: bool = False) -> int:
    """Catalogue images to retrieve so that ``k`` distinct products can be returned."""
    return products_to_rank(k, hybrid) * IMAGES_PER_PRODUCT


def route_categories(
    probs: np.ndarray, categories: Sequence[str], mass: float, max_categories: int
) -> list[str] | None:
    """The categories to search for one query, most probable first: the fewest whose
    probabilities add up to at least ``mass``, and at most ``max_categories``. None (search
    every shard) when there is no category model (``categories`` or ``probs`` empty) or
    ``mass`` is 0."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    if mass <= 0 or len(categories) == 0 or probs.size == 0:
        return None
    if probs.size != len(categories):
        raise ValueError(f"{probs.size} probabilities for {len(categories)} categories")
    order = np.argsort(-probs, kind="stable")
    reached = np.cumsum(probs[order]) >= mass - 1e-9
    n = int(np.argmax(reached)) + 1 if reached.any() else len(order)
    return [categories[i] for i in order[: max(1, min(n, max_categories))]]
