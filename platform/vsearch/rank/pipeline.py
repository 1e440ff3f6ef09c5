"""The query pipeline: the one sequence of stages a photo goes through, shared by the service and
offline evaluation so that their figures agree by construction.

    decode -> embed (one forward pass: embedding, subject box, category probabilities)
      -> categorise: the category head's softmax fused with a kNN vote of the query's nearest
         labelled images over every shard (Alibaba's category prediction): catalogue images,
         or the index's reference photos (``category.vote_gallery``)
      -> plan: route to the shards of the most probable categories (a request's filter wins),
         and how many images each searcher returns for k products (the over-fetch policy)
      -> search: shortlist + rescore in each routed shard, per searcher
      -> rank: merge the searchers' hits, one row per product, similarity blended with quality
         and popularity, re-scored by the query's text for a hybrid query

:meth:`QueryPipeline.categorise`, :meth:`QueryPipeline.plan` and :meth:`QueryPipeline.rank` are
the policy; the stages in between run where the caller puts them (Serve deployments, or this
process). :meth:`QueryPipeline.run` drives the whole sequence in one process from a prediction
and a search function: evaluation and the in-process benchmarks call it, and the service's
ingress and re-ranker call the same ``categorise``, ``plan`` and ``rank``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from vsearch.index.manifest import CATALOG, Role
from vsearch.index.searcher import Hit
from vsearch.index.text import TextChannel
from vsearch.rank.fusion import predict_categories
from vsearch.rank.hybrid import rank_products
from vsearch.rank.rerank import RankedProduct, Reranker
from vsearch.rank.routing import images_to_fetch, route_categories

__all__ = ["QueryAnswer", "QueryPipeline", "QueryPlan", "QueryPolicy"]


class QueryPolicy(BaseModel):
    """Every setting of the query path, from the config (``category.*``, ``rank.*``,
    ``serve.text_weight``): :meth:`of` builds it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Category fusion: the head's softmax weighs ``fusion_weight``, the similarity-weighted
    #: vote of the query's ``vote_neighbours`` nearest labelled images (every shard searched,
    #: ``vote_shortlist`` candidates rescored per shard, softmax ``vote_temperature``) the
    #: rest; 0 neighbours: the head alone, no vote search.
    fusion_weight: float = Field(0.5, ge=0, le=1)
    #: The head's probabilities are softened at this temperature before the fusion.
    model_temperature: float = Field(1.0, gt=0)
    vote_neighbours: int = Field(10, ge=0)
    vote_temperature: float = Field(0.05, gt=0)
    vote_shortlist: int = Field(64, ge=1)
    #: The images that vote: the catalogue's, or the labelled reference photos the index holds
    #: (``category.vote_gallery``; an index without them votes with the catalogue).
    vote_gallery: Role = CATALOG
    #: Route to the most probable categories until their probability reaches ``route_mass``
    #: (at most ``route_max``); 0 searches every shard.
    route_mass: float = Field(0.9, ge=0, le=1)
    route_max: int = Field(3, ge=1)
    #: Weights of the quality and popularity (sales) signals in a product's score.
    quality_weight: float = 0.0
    popularity_weight: float = 0.0
    #: Weight of a hybrid query's text in the score of the products the photo found.
    text_weight: float = Field(0.0, ge=0, le=1)

    @classmethod
    def of(cls, cfg: Any) -> QueryPolicy:
        """The policy of a :class:`vsearch.config.Config`."""
        return cls(
            fusion_weight=cfg.category.fusion_weight,
            model_temperature=cfg.category.model_temperature,
            vote_neighbours=cfg.category.vote_neighbours,
            vote_temperature=cfg.category.vote_temperature,
            vote_shortlist=cfg.category.vote_shortlist,
            vote_gallery=cfg.category.vote_gallery,
            route_mass=cfg.category.route_mass,
            route_max=cfg.category.route_max,
            quality_weight=cfg.rank.quality_weight,
            popularity_weight=cfg.rank.popularity_weight,
            text_weight=cfg.serve.text_weight,
        )


@dataclass(frozen=True)
class QueryPlan:
    """What one query searches: ``k`` products from ``images`` images per searcher in the
    ``gallery`` shards of ``categories`` (None: all), and why (``routed_by``); ``shortlist``:
    candidates rescored per shard (None: each shard's tuned one, or the caller's override).
    Product searches read the catalogue; the category vote may read the reference photos."""

    k: int
    categories: list[str] | None
    routed_by: Literal["request", "model", "all"]
    images: int
    hybrid: bool
    shortlist: int | None = None
    gallery: Role = CATALOG

    def shortlist_or(self, default: int | None) -> int | None:
        """This plan's shortlist, else ``default`` (a caller's ``index.shortlist``)."""
        return self.shortlist if self.shortlist is not None else default


@dataclass(frozen=True)
class QueryAnswer:
    """One query's answer from :meth:`QueryPipeline.run`."""

    plan: QueryPlan
    products: list[RankedProduct]
    #: The predicted category (fused) and its probability (None without a category head).
    category: tuple[str, float] | None
    box: list[float]
    #: The fused category probabilities the query was routed by (the head's alone without a
    #: vote), and the vote's (None: no vote).
    category_probs: np.ndarray
    vote_probs: np.ndarray | None


#: A search stage: (the query's embedding, its plan) -> the hit lists of the searchers asked.
SearchFn = Callable[[np.ndarray, QueryPlan], Sequence[Sequence[Hit]]]


class QueryPipeline:
    """The query path's policy (routing, over-fetch, merge and ranking) for one config."""

    def __init__(self, policy: QueryPolicy) -> None:
        self.policy = policy
        self.reranker = Reranker(policy.quality_weight, policy.popularity_weight)

    def votes(self, category_names: Sequence[str]) -> bool:
        """Whether a query runs the vote search (a category model and ``vote_neighbours`` > 0)."""
        return self.policy.vote_neighbours > 0 and len(category_names) > 0

    def vote_plan(self, galleries: Collection[str] = (CATALOG,)) -> QueryPlan:
        """The vote's search: the ``vote_neighbours`` nearest images over every shard of the
        policy's ``vote_gallery`` (the catalogue's when the index, holding ``galleries``, has
        no reference photos), each shard rescoring ``vote_shortlist`` candidates (neighbours
        that vote need to be near, not exact, and every shard is searched)."""
        n = self.policy.vote_neighbours
        gallery = self.policy.vote_gallery if self.policy.vote_gallery in galleries else CATALOG
        return QueryPlan(n, None, "all", n, False, self.policy.vote_shortlist, gallery)

    def vote_gallery(self, galleries: Collection[str]) -> Role:
        """The gallery that votes for an index holding ``galleries``."""
        return self.vote_plan(galleries).gallery

    def categorise(
        self,
        category_probs: np.ndarray,
        category_names: Sequence[str],
        vote_hits: Sequence[Sequence[Hit]],
    ) -> tuple[np.ndarray, np.ndarray]:
        """The fused category probabilities ``(c,)`` of one query and the vote's alone, from the
        head's ``category_probs`` and the hit lists of :meth:`vote_plan`'s search (merged,
        the best ``vote_neighbours`` vote)."""
        probs = np.asarray(category_probs, dtype=np.float32).reshape(1, -1)
        if probs.shape[1] != len(category_names):
            raise ValueError(f"{probs.shape[1]} probabilities for {len(category_names)} categories")
        merged = sorted(
            (h for hits in vote_hits for h in hits), key=lambda h: (-h.score, h.shard, h.image_id)
        )[: self.policy.vote_neighbours]
        sims = np.asarray([[h.score for h in merged]], dtype=np.float32).reshape(1, len(merged))
        fused, vote = predict_categories(
            probs,
            sims,
            [[h.category for h in merged]],
            category_names,
            self.policy.fusion_weight,
            self.policy.vote_temperature,
            self.policy.model_temperature,
        )
        return fused[0], vote[0]

    def plan(
        self,
        category_probs: np.ndarray,
        category_names: Sequence[str],
        k: int,
        categories: Sequence[str] | None = None,
        hybrid: bool = False,
    ) -> QueryPlan:
        """Plan a query for ``k`` products: ``categories`` (a request's filter) when given,
        else the model's most probable ones (:func:`route_categories`), else all shards."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        images = images_to_fetch(k, hybrid)
        if categories:
            return QueryPlan(k, list(categories), "request", images, hybrid)
        wanted = route_categories(
            category_probs, category_names, self.policy.route_mass, self.policy.route_max
        )
        return QueryPlan(k, wanted, "model" if wanted is not None else "all", images, hybrid)

    def rank(
        self,
        plan: QueryPlan,
        hit_lists: Sequence[Sequence[Hit]],
        text_vector: np.ndarray | None = None,
        channel: TextChannel | None = None,
    ) -> list[RankedProduct]:
        """Merge the searchers' hits into the plan's best ``images`` and rank the plan's ``k``
        products from them (re-scored by the text of a hybrid query against ``channel``).

        Each searcher returns its own best ``images``; keeping the best ``images`` of their union
        makes the pool exactly one search over all the routed shards would give, so a service
        with any number of searchers ranks what an in-process search ranks."""
        merged = sorted(
            (h for hits in hit_lists for h in hits), key=lambda h: (-h.score, h.shard, h.image_id)
        )
        hits = merged[: plan.images]
        vector = text_vector if plan.hybrid else None
        return rank_products(self.reranker, hits, plan.k, vector, channel, self.policy.text_weight)

    def run(
        self,
        prediction: Mapping[str, np.ndarray],
        category_names: Sequence[str],
        k: int,
        search: SearchFn,
        categories: Sequence[str] | None = None,
        text_vector: np.ndarray | None = None,
        channel: TextChannel | None = None,
        galleries: Collection[str] = (CATALOG,),
    ) -> QueryAnswer:
        """The whole path in this process, from one photo's ``prediction`` (``embedding``,
        ``category_probs``, ``box``: the query model's forward pass) and a ``search`` stage
        (called twice with a vote: the vote's plan, then the routed one) over an index holding
        ``galleries``."""
        probs = np.asarray(prediction["category_probs"], dtype=np.float32).reshape(-1)
        embedding = np.asarray(prediction["embedding"])
        vote = None
        if self.votes(category_names) and probs.size:
            probs, vote = self.categorise(
                probs, category_names, search(embedding, self.vote_plan(galleries))
            )
        plan = self.plan(probs, category_names, k, categories, hybrid=text_vector is not None)
        hit_lists = search(embedding, plan)
        top = int(np.argmax(probs)) if probs.size and len(category_names) else None
        return QueryAnswer(
            plan=plan,
            products=self.rank(plan, hit_lists, text_vector, channel),
            category=(category_names[top], float(probs[top])) if top is not None else None,
            box=[float(v) for v in np.asarray(prediction.get("box", [])).reshape(-1)],
            category_probs=probs,
            vote_probs=vote,
        )
