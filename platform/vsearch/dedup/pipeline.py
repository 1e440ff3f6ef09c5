"""From channel candidates to decided pairs, clusters and (with ground truth) the evaluation.

``decide_duplicates`` is the dedup policy in one place: the candidate union, the combiner (cross-
fitted on labelled pairs, or given), the decisions, the clusters and, where true matches exist,
every figure of the report. The job feeds it the channels' ``Neighbours`` (computed on Ray) and
writes what it returns.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from vsearch.config import DedupConfig
from vsearch.dedup.candidates import (
    CHANNELS,
    candidate_union,
    code_agreement,
    title_similarity,
)
from vsearch.dedup.clusters import Clustering, cluster_pairs
from vsearch.dedup.combiner import Combiner, cross_fit, fit_combiner, row_folds
from vsearch.dedup.neighbours import Neighbours
from vsearch.eval.dedup import (
    candidate_set,
    complement_table,
    pair_set,
    pairwise_scores,
    precision_recall_curve,
    recall_at_precision,
)
from vsearch.schema import DEDUP_CLUSTER_SCHEMA, DEDUP_PAIR_SCHEMA, LISTING_SCHEMA, MATCH_SCHEMA

__all__ = [
    "DedupOutcome",
    "catalog_listings",
    "decide_duplicates",
    "listing_texts",
    "photo_listings",
    "true_pairs",
]


def listing_texts(listings: pa.Table, attributes: list[str]) -> list[str]:
    """Each listing's title followed by the values of the ``attributes`` keys it has."""
    titles = listings["title"].to_pylist()
    if not attributes:
        return [t or "" for t in titles]
    out = []
    for title, raw in zip(titles, listings["attributes"].to_pylist(), strict=True):
        try:
            values = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            values = {}
        extra = [str(values[a]) for a in attributes if isinstance(values, dict) and values.get(a)]
        out.append(" ".join([title or "", *extra]).strip())
    return out


def true_pairs(ids: list[str], matches: pa.Table) -> np.ndarray:
    """``(t, 2) int64`` rows of the true pairs whose two listings are both in ``ids``."""
    row = {v: i for i, v in enumerate(ids)}
    pairs = {
        (min(row[a], row[b]), max(row[a], row[b]))
        for a, b in zip(matches["a"].to_pylist(), matches["b"].to_pylist(), strict=True)
        if a in row and b in row and a != b
    }
    return np.asarray(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def _components(n: int, pairs: np.ndarray) -> list[list[int]]:
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        parent[root(int(a))] = root(int(b))
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


@dataclass
class DedupOutcome:
    """``pairs``: ``DEDUP_PAIR_SCHEMA`` rows; ``clusters``: ``DEDUP_CLUSTER_SCHEMA`` rows;
    ``combiner``: fitted on every labelled pair (or the one given), reusable on unlabelled
    catalogues; ``evaluation``: the report's figures, None without ground truth."""

    pairs: pa.Table
    clusters: pa.Table
    clustering: Clustering
    combiner: Combiner
    evaluation: dict[str, Any] | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def _decisions_per_channel(
    cands: pd.DataFrame, label: np.ndarray, truth: np.ndarray, folds: np.ndarray,
    channels: list[str], cfg: DedupConfig,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    out = {}
    for name in channels:
        prob, dec, _ = cross_fit(
            cands, label, truth, folds, [name], cfg.folds, cfg.target_precision
        )
        out[name] = (prob, dec)
    return out


def decide_duplicates(
    listings: pa.Table,
    neighbours: dict[str, Neighbours],
    cfg: DedupConfig,
    matches: pa.Table | None = None,
    combiner: Combiner | None = None,
    queries: np.ndarray | None = None,
) -> DedupOutcome:
    """Combine the channels' candidates into decided pairs and clusters.

    Args:
        listings: ``LISTING_SCHEMA`` rows; ``Neighbours`` rows index it.
        neighbours: candidates per channel name (a subset of ``CHANNELS``).
        matches: ``MATCH_SCHEMA`` ground truth; with it the combiner is cross-fitted (no pair
            is decided by a model fitted on it) and the evaluation is filled in.
        combiner: a fitted combiner for catalogues without ground truth.
        queries: ``(n,) bool`` the requested listings (batch-query mode); the evaluation then
            counts only true pairs that involve one of them.
    Raises:
        ValueError: neither ``matches`` nor ``combiner`` is given (nothing to fit thresholds on).
    """
    channels = [c for c in CHANNELS if c in neighbours]
    ids = listings["listing_id"].to_pylist()
    n = len(ids)
    cands = candidate_union({c: neighbours[c] for c in channels}, cfg.k)
    a = cands["a"].to_numpy(np.int64)
    b = cands["b"].to_numpy(np.int64)
    if "lexical" in channels:
        titles = listings["title"].to_pylist()
        cands["code_agreement"] = code_agreement(titles, a, b)
        cands["title_similarity"] = title_similarity(titles, a, b)
    evaluation = None
    if matches is not None:
        truth = true_pairs(ids, matches)
        if queries is not None:
            asked = np.asarray(queries, bool)
            truth = truth[asked[truth[:, 0]] | asked[truth[:, 1]]] if len(truth) else truth
        truth_set = {(int(x), int(y)) for x, y in truth}
        label = np.array([(int(x), int(y)) in truth_set for x, y in zip(a, b, strict=True)])
        folds = row_folds(n, _components(n, truth), cfg.folds)
        probability, decision, _ = cross_fit(
            cands, label, truth, folds, channels, cfg.folds, cfg.target_precision
        )
        combiner = fit_combiner(cands, label, channels, len(truth), cfg.target_precision)
        per_channel = _decisions_per_channel(cands, label, truth, folds, channels, cfg)
        any_rule = np.zeros(len(cands), bool)
        for _, dec in per_channel.values():
            any_rule |= dec
        if cfg.combiner == "any":
            decision = any_rule
            probability = np.max([p for p, _ in per_channel.values()], axis=0)
        evaluation = _evaluate(
            cands, label, probability, decision, any_rule, per_channel, neighbours, channels,
            truth_set, cfg,
        )  # fmt: skip
    elif combiner is not None:
        missing = [c for c in combiner.channels if c not in channels]
        if missing:
            raise ValueError(f"the combiner needs channels {missing}, which this run did not run")
        probability = combiner.probability(cands)
        decision = probability >= combiner.threshold
    else:
        raise ValueError(
            "dedup needs ground truth to fit its thresholds (a dataset with duplicates or "
            "matches) or a fitted combiner (dedup.combiner_url)"
        )
    clustering = cluster_pairs(
        ids, a[decision], b[decision], probability[decision], cfg.max_cluster_size,
        listings["quality"].to_numpy(),
    )  # fmt: skip
    return DedupOutcome(
        pairs=_pair_table(cands, ids, channels, probability, decision),
        clusters=pa.Table.from_pylist(
            [
                {"cluster_id": f"dup:{rep}", "members": members, "representative": rep}
                for members, rep in zip(
                    clustering.clusters, clustering.representatives, strict=True
                )
            ],
            schema=DEDUP_CLUSTER_SCHEMA,
        ),
        clustering=clustering,
        combiner=combiner,
        evaluation=evaluation,
        stats={"candidate_pairs": len(cands), "duplicate_pairs": int(decision.sum())},
    )


def _pair_table(
    cands: pd.DataFrame, ids: list[str], channels: list[str], probability: np.ndarray,
    decision: np.ndarray,
) -> pa.Table:  # fmt: skip
    names = np.asarray(ids, dtype=object)
    a, b = cands["a"].to_numpy(np.int64), cands["b"].to_numpy(np.int64)
    first, second = names[a], names[b]
    swap = first > second  # rows were ordered by row number; the table orders each pair by id
    columns: dict[str, Any] = {
        "a": np.where(swap, second, first).tolist(),
        "b": np.where(swap, first, second).tolist(),
    }
    for c in CHANNELS:
        if c in channels:
            columns[f"{c}_score"] = pa.array(cands[f"{c}_score"].to_numpy(float), from_pandas=True)
            columns[f"{c}_rank"] = pa.array(cands[f"{c}_rank"].to_numpy(float), from_pandas=True)
        else:
            columns[f"{c}_score"] = pa.nulls(len(cands))
            columns[f"{c}_rank"] = pa.nulls(len(cands))
    columns["probability"] = probability.astype(np.float32)
    columns["duplicate"] = decision
    table = pa.table(columns)
    return table.select(DEDUP_PAIR_SCHEMA.names).cast(DEDUP_PAIR_SCHEMA)


def _evaluate(
    cands: pd.DataFrame, label: np.ndarray, probability: np.ndarray, decision: np.ndarray,
    any_rule: np.ndarray,
    per_channel: dict[str, tuple[np.ndarray, np.ndarray]], neighbours: dict[str, Neighbours],
    channels: list[str], truth: set[tuple[int, int]], cfg: DedupConfig,
) -> dict[str, Any]:  # fmt: skip
    a, b = cands["a"].to_numpy(np.int64), cands["b"].to_numpy(np.int64)
    found = {c: candidate_set(neighbours[c], cfg.k) for c in channels}
    decided = {c: pair_set(a[dec], b[dec]) for c, (_, dec) in per_channel.items()}
    union_found = set().union(*found.values())
    channel_rows = {}
    for c in channels:
        recall_at_k = len(found[c] & truth) / len(truth) if truth else 0.0
        row = {"recall_at_k": round(recall_at_k, 4), **pairwise_scores(decided[c], truth)}
        # The union at this channel's operating point: the most recall a threshold on the
        # union's held-out (cross-fitted) probabilities reaches at the channel's precision.
        row["union_recall_at_this_precision"] = round(
            recall_at_precision(probability, label, len(truth), row["precision"]), 4
        )
        channel_rows[c] = row
    curves = {}
    for name, score in [("union", probability)] + [(c, p) for c, (p, _) in per_channel.items()]:
        prec, rec = precision_recall_curve(score, label, len(truth), points=60)
        curves[name] = {"precision": prec.round(4).tolist(), "recall": rec.round(4).tolist()}
    union = {
        "recall_at_k": round(len(union_found & truth) / len(truth), 4) if truth else 0.0,
        **pairwise_scores(pair_set(a[decision], b[decision]), truth),
    }
    target = cfg.target_precision
    return {
        "true_pairs": len(truth),
        "combiner": cfg.combiner,
        "fitting": (
            f"{cfg.folds}-fold cross-fitting over the true clusters (each pair decided by a model "
            f"fitted on the other folds); thresholds "
            + (f"at precision >= {target}" if target else "at the best F1 of the fitted folds")
        ),
        "channels": channel_rows,
        "union": union,
        "any_rule": pairwise_scores(pair_set(a[any_rule], b[any_rule]), truth),
        "curves": curves,
        "complement": {
            "candidates": complement_table(found, truth),
            "decisions": complement_table(decided, truth),
        },
    }


def catalog_listings(
    catalog: pa.Table, duplicates: pa.Table | None
) -> tuple[pa.Table, pa.Table | None]:
    """A catalogue as dedup listings (one per product: its first image) and, when the dataset
    records re-uploads, the true pairs (``product_id`` duplicates ``duplicate_of``)."""
    seen: set[str] = set()
    rows = []
    for row in catalog.to_pylist():
        if row["product_id"] in seen:
            continue
        seen.add(row["product_id"])
        rows.append(
            {
                "listing_id": row["product_id"],
                "source": "catalog",
                "category": row["category"],
                "title": row["title"],
                "attributes": row["attributes"],
                "image_uri": row["image_uri"],
                "quality": row["quality"],
            }
        )
    listings = pa.Table.from_pylist(rows, schema=LISTING_SCHEMA)
    if duplicates is None:
        return listings, None
    matches = pa.Table.from_pylist(
        [
            {
                "a": min(r["product_id"], r["duplicate_of"]),
                "b": max(r["product_id"], r["duplicate_of"]),
            }
            for r in duplicates.to_pylist()
            if r["product_id"] in seen and r["duplicate_of"] in seen
        ],
        schema=MATCH_SCHEMA,
    )
    return listings, matches


def photo_listings(queries: pa.Table, split: str, per_product: int) -> tuple[pa.Table, pa.Table]:
    """Photos of ``split`` as re-uploaded listings, and their true pairs.

    Up to ``per_product`` photos of every product become listings (one ``source`` "photo", no
    title); every two photos of one product are a true pair. Which photos is fixed by a hash of
    their ids, so it does not depend on the table's order.

    Raises:
        ValueError: the split has no photos, or no product has two of them.
    """
    rows = [r for r in queries.to_pylist() if r["split"] == split]
    if not rows:
        found = sorted(set(queries["split"].to_pylist())) if queries.num_rows else []
        raise ValueError(f"no photos of split {split!r} (the dataset has splits {found})")
    by_product: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: (zlib.crc32(r["query_id"].encode()), r["query_id"])):
        chosen = by_product.setdefault(row["product_id"], [])
        if len(chosen) < per_product:
            chosen.append(row)
    listings, matches = [], []
    for product in sorted(by_product):
        chosen = sorted(by_product[product], key=lambda r: r["query_id"])
        if len(chosen) < 2:
            continue
        ids = [r["query_id"] for r in chosen]
        listings += [
            {
                "listing_id": r["query_id"],
                "source": "photo",
                "category": r["category"],
                "title": "",
                "attributes": "{}",
                "image_uri": r["image_uri"],
                "quality": 1.0,
            }
            for r in chosen
        ]
        matches += [
            {"a": min(x, y), "b": max(x, y)} for i, x in enumerate(ids) for y in ids[i + 1 :]
        ]
    if not matches:
        raise ValueError(f"no product has two photos in split {split!r}: nothing is a duplicate")
    return (
        pa.Table.from_pylist(listings, schema=LISTING_SCHEMA),
        pa.Table.from_pylist(matches, schema=MATCH_SCHEMA),
    )
