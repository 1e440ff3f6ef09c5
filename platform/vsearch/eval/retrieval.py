"""Offline retrieval evaluation: query photos against the catalogue, through the binary sharded
index and through exact float search (the reference), at product level.

Duplicate listings are folded into the product they duplicate before scoring, so finding a
re-upload of the right product counts as finding the product.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import pyarrow as pa

from vsearch.eval.metrics import ann_recall, exact_topk, mean_average_precision, recall_at_k
from vsearch.index.builder import build_shards
from vsearch.index.searcher import Hit, ShardedIndex
from vsearch.index.tuning import TuningSpec
from vsearch.rank.pipeline import QueryPipeline, QueryPlan, QueryPolicy
from vsearch.rank.routing import images_to_fetch

#: Products asked of the query pipeline per query. Folding duplicate listings into the product
#: they copy can shorten a ranking, so more than the 10 that are scored are asked for (the
#: demo asks the service for as many, so its HTTP figures are these).
PRODUCTS_ASKED = 20


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
    #: Per query, the pipeline's fused category probabilities ``(m, c)`` (the head's alone
    #: without a vote) and the vote's (``None``: no vote); not in :meth:`as_dict`.
    category_probs: np.ndarray | None = field(default=None, repr=False)
    vote_probs: np.ndarray | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, float | list[float]]:
        out: dict[str, float | list[float]] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name not in ("category_probs", "vote_probs"):
                out[f.name] = v if isinstance(v, list) else float(v)
        return out


def canonical_ranking(
    ranked: Sequence[str], canonical: Mapping[str, str], k: int | None = None
) -> list[str]:
    """Map each id to its canonical product (duplicates -> original), keep first occurrences."""
    seen: dict[str, None] = {}
    for pid in ranked:
        seen.setdefault(canonical.get(pid, pid), None)
    out = list(seen)
    return out if k is None else out[:k]


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
    large_engine: str = "pq",
    rescore_dtype: str = "float16",
    category_probs: np.ndarray | None = None,
    category_names: Sequence[str] = (),
    policy: QueryPolicy | None = None,
    index: ShardedIndex | None = None,
) -> RetrievalReport:
    """Score ``(m, d)`` query vectors against ``(n, d)`` catalogue vectors (both L2-normalised).

    ``catalog_meta`` has the index metadata columns (image_id, product_id, category, title,
    quality, popularity); ``canonical`` maps duplicate product ids to the product they copy.
    Every query goes through the service's query pipeline (:class:`QueryPipeline` with
    ``policy``): its ``category_probs`` row over ``category_names`` fused with the vote of its
    nearest labelled images (the catalogue's, or the reference photos ``index`` holds),
    routed by the fused probabilities (no category model: every
    shard), searched for the pipeline's over-fetch, and ranked into ``PRODUCTS_ASKED`` products,
    folded and cut at 10; the report keeps each query's fused and vote probabilities. ``index``
    is the index to search (e.g. a published version's shards, whose catalogue shards hold
    exactly ``catalog_meta``'s images); without one the shards are built here as the reindex job
    builds them (each shard's shortlist tuned to ``tuning``). ``shortlist`` overrides the tuned
    ones (a plan's own shortlist, the category vote's, wins over it). The exact
    reference ranks exact search's images through the same pipeline, unrouted; the index's
    recall against exact search is measured unrouted, image by image.
    """
    canonical = dict(canonical or {})
    pipeline = QueryPipeline(policy or QueryPolicy())
    product_of_row = catalog_meta["product_id"].to_pylist()
    row_of_image = {img: i for i, img in enumerate(catalog_meta["image_id"].to_pylist())}
    if index is None:
        index = ShardedIndex.from_built(
            build_shards(
                catalog_vectors, catalog_meta, buckets_per_category, tuning, ivf_above,
                large_engine, rescore_dtype,
            )
        )  # fmt: skip
    names = list(category_names)
    none = np.zeros(0, dtype=np.float32)

    def search(vector: np.ndarray, plan: QueryPlan) -> list[list[Hit]]:
        return [
            index.search(
                vector.reshape(1, -1), plan.images, plan.shortlist_or(shortlist), plan.categories,
                plan.gallery,
            )[0]
        ]  # fmt: skip

    def products(answer: list) -> list[str]:
        return canonical_ranking([p.product_id for p in answer], canonical, 10)

    approx_ranked = []
    fused: list[np.ndarray] = []
    votes: list[np.ndarray] = []
    for i, vector in enumerate(query_vectors):
        probs = category_probs[i] if category_probs is not None else none
        answer = pipeline.run(
            {"embedding": vector, "category_probs": probs}, names, PRODUCTS_ASKED, search,
            galleries=index.galleries,
        )  # fmt: skip
        approx_ranked.append(products(answer.products))
        fused.append(answer.category_probs)
        if answer.vote_probs is not None:
            votes.append(answer.vote_probs)
    k_images = images_to_fetch(PRODUCTS_ASKED)
    unrouted = np.full((len(query_vectors), k_images), -1, dtype=np.int64)
    for i, row_hits in enumerate(index.search(query_vectors, k_images, shortlist)):
        for j, hit in enumerate(row_hits):
            unrouted[i, j] = row_of_image[hit.image_id]
    exact_scores, exact_rows = exact_topk(query_vectors, catalog_vectors, k_images)
    everywhere = pipeline.plan(none, (), PRODUCTS_ASKED)
    exact_ranked = [
        products(pipeline.rank(everywhere, [_hits(catalog_meta, rows, scores)]))
        for rows, scores in zip(exact_rows, exact_scores, strict=True)
    ]
    truth = [canonical.get(p, p) for p in query_products]
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
        category_probs=np.stack(fused) if category_probs is not None and fused else None,
        vote_probs=np.stack(votes) if votes and len(votes) == len(fused) else None,
    )


def _hits(meta: pa.Table, rows: np.ndarray, scores: np.ndarray) -> list[Hit]:
    """Catalogue rows (``-1``: none) with their scores as search hits."""
    keep = [(int(r), float(s)) for r, s in zip(rows, scores, strict=True) if r >= 0]
    if not keep:
        return []
    picked = meta.take(pa.array([r for r, _ in keep])).to_pylist()
    fields = ("image_id", "product_id", "category", "title")
    return [
        Hit(s, *(m[f] for f in fields), float(m["quality"]), float(m["popularity"]), "exact")
        for (_, s), m in zip(keep, picked, strict=True)
    ]


def recall_curve(
    ranked: Sequence[Sequence[str]], truth: Sequence[str], k_max: int = 10
) -> list[float]:
    """Recall@K for K = 1..``k_max``."""
    return [recall_at_k(ranked, truth, k) for k in range(1, k_max + 1)]
