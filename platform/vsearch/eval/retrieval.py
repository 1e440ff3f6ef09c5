"""Offline retrieval evaluation: query photos against the catalogue, through the binary sharded
index and through exact float search (the reference), at product level.

Duplicate listings are folded into the product they duplicate before scoring, so finding a
re-upload of the right product counts as finding the product.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from vsearch.eval.metrics import ann_recall, exact_topk, mean_average_precision, recall_at_k
from vsearch.index.builder import build_shards
from vsearch.index.searcher import ShardedIndex
from vsearch.index.tuning import TuningSpec
from vsearch.rank.routing import images_to_fetch


@dataclass
class RetrievalReport:
    """Product-level Recall@1/@10 and mAP@10 through the binary index and by exact search, and
    the image-level recall@10 of the binary index against exact search."""

    queries: int
    catalog_images: int
    recall_at_1: float
    recall_at_10: float
    map_at_10: float
    exact_recall_at_1: float
    exact_recall_at_10: float
    ann_recall_at_10: float
    #: Recall@K for K = 1..10 through the binary index (for plots).
    recall_curve: list[float]

    def as_dict(self) -> dict[str, float | list[float]]:
        return {k: v if isinstance(v, list) else float(v) for k, v in asdict(self).items()}


def canonical_ranking(
    ranked: Sequence[str], canonical: Mapping[str, str], k: int | None = None
) -> list[str]:
    """Map each id to its canonical product (duplicates -> original), keep first occurrences."""
    seen: dict[str, None] = {}
    for pid in ranked:
        seen.setdefault(canonical.get(pid, pid), None)
    out = list(seen)
    return out if k is None else out[:k]


def _products_by_score(image_rows: np.ndarray, product_of_row: Sequence[str]) -> list[str]:
    ranked: dict[str, None] = {}
    for row in image_rows:
        if row >= 0:
            ranked.setdefault(product_of_row[row], None)
    return list(ranked)


def evaluate_retrieval(
    query_vectors: np.ndarray,
    query_products: Sequence[str],
    catalog_vectors: np.ndarray,
    catalog_meta: pa.Table,
    canonical: Mapping[str, str] | None = None,
    shortlist: int | None = None,
    buckets_per_category: int = 1,
    tuning: TuningSpec | None = TuningSpec(),  # noqa: B008 (frozen)
    ivf_above: int | None = None,
    large_engine: str = "rabitq",
    rescore_dtype: str = "int8",
    routes: Sequence[list[str] | None] | None = None,
) -> RetrievalReport:
    """Score ``(m, d)`` query vectors against ``(n, d)`` catalogue vectors (both L2-normalised).

    ``catalog_meta`` has the index metadata columns (image_id, product_id, category, title,
    quality, popularity); ``canonical`` maps duplicate product ids to the product they copy.
    The shards are built and searched as the reindex job and the service do: each shard's
    shortlist tuned to ``tuning`` unless ``shortlist`` overrides it. ``routes[i]``: the categories
    query ``i`` is searched in (``vsearch.rank.routing``, as the service routes it; None: all),
    for Recall and mAP; the index's recall against exact search is measured unrouted.
    """
    canonical = dict(canonical or {})
    k_images = images_to_fetch(10)  # the service's over-fetch for 10 products
    product_of_row = catalog_meta["product_id"].to_pylist()
    row_of_image = {img: i for i, img in enumerate(catalog_meta["image_id"].to_pylist())}
    index = ShardedIndex.from_built(
        build_shards(
            catalog_vectors, catalog_meta, buckets_per_category, tuning, ivf_above, large_engine,
            rescore_dtype,
        )
    )  # fmt: skip

    def rows_of(hits: list[list]) -> np.ndarray:
        out = np.full((len(hits), k_images), -1, dtype=np.int64)
        for i, row_hits in enumerate(hits):
            for j, hit in enumerate(row_hits):
                out[i, j] = row_of_image[hit.image_id]
        return out

    unrouted = rows_of(index.search(query_vectors, k_images, shortlist))
    approx_rows = unrouted
    if routes is not None and any(r is not None for r in routes):
        routed: list[list] = [[] for _ in range(len(query_vectors))]
        groups: dict[tuple[str, ...] | None, list[int]] = {}
        for i, route in enumerate(routes):
            groups.setdefault(tuple(route) if route is not None else None, []).append(i)
        for key, members in groups.items():
            found = index.search(
                query_vectors[members], k_images, shortlist, list(key) if key else None
            )
            for i, row_hits in zip(members, found, strict=True):
                routed[i] = row_hits
        approx_rows = rows_of(routed)
    _, exact_rows = exact_topk(query_vectors, catalog_vectors, k_images)
    truth = [canonical.get(p, p) for p in query_products]
    approx_ranked = [
        canonical_ranking(_products_by_score(r, product_of_row), canonical, 10) for r in approx_rows
    ]
    exact_ranked = [
        canonical_ranking(_products_by_score(r, product_of_row), canonical, 10) for r in exact_rows
    ]
    k_ann = min(10, len(product_of_row))
    return RetrievalReport(
        queries=len(truth),
        catalog_images=len(product_of_row),
        recall_at_1=recall_at_k(approx_ranked, truth, 1),
        recall_at_10=recall_at_k(approx_ranked, truth, 10),
        map_at_10=mean_average_precision(approx_ranked, [{t} for t in truth], 10),
        exact_recall_at_1=recall_at_k(exact_ranked, truth, 1),
        exact_recall_at_10=recall_at_k(exact_ranked, truth, 10),
        ann_recall_at_10=ann_recall(unrouted[:, :k_ann], exact_rows[:, :k_ann], k_ann),
        recall_curve=recall_curve(approx_ranked, truth),
    )


def recall_curve(
    ranked: Sequence[Sequence[str]], truth: Sequence[str], k_max: int = 10
) -> list[float]:
    """Recall@K for K = 1..``k_max``."""
    return [recall_at_k(ranked, truth, k) for k in range(1, k_max + 1)]
