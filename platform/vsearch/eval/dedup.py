"""Dedup evaluation: pairwise precision/recall/F1, candidate recall at k, and Coupang's complement
analysis (what each channel found that the lexical baseline missed), as a dict and as Markdown.

Pairs are sets of ``(a, b)`` row tuples with ``a < b``; true pairs are the benchmark's as listed
(not closed transitively: a two-shop mapping has no same-shop pairs to close over).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vsearch.dedup.combiner import ranked_cuts
from vsearch.dedup.neighbours import Neighbours

__all__ = [
    "candidate_set",
    "complement_table",
    "dedup_markdown",
    "pair_set",
    "pairwise_scores",
    "precision_recall_curve",
    "recall_at_precision",
]

Pairs = set[tuple[int, int]]


def pair_set(a: np.ndarray, b: np.ndarray) -> Pairs:
    """``{(min, max)}`` of row pairs."""
    return {(int(min(x, y)), int(max(x, y))) for x, y in zip(a, b, strict=True)}


def candidate_set(found: Neighbours, k: int) -> Pairs:
    """Pairs a channel proposed within each query's top ``k``, either direction."""
    top = found.rank < k
    return pair_set(found.query[top], found.neighbour[top])


def pairwise_scores(decided: Pairs, truth: Pairs) -> dict[str, float]:
    """Precision, recall and F1 of ``decided`` against ``truth`` (0 where undefined)."""
    tp = len(decided & truth)
    precision = tp / len(decided) if decided else 0.0
    recall = tp / len(truth) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
        "decided": len(decided), "true_positives": tp, "true_pairs": len(truth),
    }  # fmt: skip


def precision_recall_curve(
    score: np.ndarray, label: np.ndarray, true_total: int, points: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of deciding every pair whose ``score`` is at least each distinct
    score, highest first; recall counts all ``true_total`` true pairs (also those never scored).
    ``points``: only the best precision of each recall level, about this many of them (for plots
    and reports)."""
    if len(score) == 0 or true_total == 0:
        return np.zeros(0), np.zeros(0)
    _, tp, decided = ranked_cuts(score, label)
    precision, recall = tp / decided, tp / true_total
    if points:
        # Per recall level its best precision (the first cut reaching it), thinned evenly.
        first = np.r_[True, recall[1:] != recall[:-1]]
        precision, recall = precision[first], recall[first]
        if len(recall) > points:
            keep = np.unique(np.linspace(0, len(recall) - 1, points).round().astype(int))
            precision, recall = precision[keep], recall[keep]
    return precision, recall


def recall_at_precision(
    score: np.ndarray, label: np.ndarray, true_total: int, precision: float
) -> float:
    """The most recall any threshold on ``score`` reaches at ``precision`` or better (0: none)."""
    p, r = precision_recall_curve(score, label, true_total)
    ok = p >= precision - 1e-12
    return float(r[ok].max()) if ok.any() else 0.0


def complement_table(found: dict[str, Pairs], truth: Pairs, baseline: str = "lexical") -> dict:
    """True pairs each channel found, and how many of them ``baseline`` missed (Coupang's
    "found by embeddings, missed by Elasticsearch"), plus the image/text overlap."""
    hits = {name: pairs & truth for name, pairs in found.items()}
    table: dict[str, Any] = {}
    for name, got in hits.items():
        row = {"true_found": len(got)}
        if baseline in hits and name != baseline:
            row[f"missed_by_{baseline}"] = len(got - hits[baseline])
        others = set().union(*(v for n, v in hits.items() if n != name)) if len(hits) > 1 else set()
        row["only_this_channel"] = len(got - others)
        table[name] = row
    if "image" in hits and "text" in hits:
        table["image_and_text"] = {
            "both": len(hits["image"] & hits["text"]),
            "image_only": len(hits["image"] - hits["text"]),
            "text_only": len(hits["text"] - hits["image"]),
        }
    table["none"] = {"true_missed_by_all": len(truth - set().union(*hits.values()))}
    return table


def dedup_markdown(report: dict) -> str:
    """A Markdown summary of a dedup report (``jobs.dedup`` writes the dict as JSON beside it)."""
    ev = report.get("evaluation")
    lines = [
        f"# Dedup run {report['run']}",
        "",
        f"- listings: {report['listings']} ({report['source']}), channels: "
        f"{', '.join(report['channels_run'])}, k = {report['k']}",
        f"- candidate pairs: {report['candidate_pairs']}, judged duplicates: "
        f"{report['duplicate_pairs']}, clusters: {report['clusters']} (largest "
        f"{report['largest_cluster']}; {report['refused_merges']} merges refused by the size cap)",
        f"- skipped: {report['skipped'] or 'nothing'}",
        f"- timings (s): {report['timings']}",
    ]
    if not ev:
        lines += ["", "No ground truth: no precision or recall."]
        return "\n".join(lines) + "\n"
    k = report["k"]
    lines += [
        "",
        f"Decisions: {ev['fitting']}",
        "",
        f"| channel | candidate recall@{k} | precision | recall | F1 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in ev["channels"].items():
        lines.append(
            f"| {name} | {row['recall_at_k']:.3f} | {row['precision']:.3f} | "
            f"{row['recall']:.3f} | {row['f1']:.3f} |"
        )
    u = ev["union"]
    lines.append(
        f"| **union ({ev['combiner']})** | **{u['recall_at_k']:.3f}** | **{u['precision']:.3f}** | "
        f"**{u['recall']:.3f}** | **{u['f1']:.3f}** |"
    )
    if "any_rule" in ev:
        r = ev["any_rule"]
        lines.append(
            f"| union (any channel's threshold) | {u['recall_at_k']:.3f} | {r['precision']:.3f} | "
            f"{r['recall']:.3f} | {r['f1']:.3f} |"
        )
    at_precision = {
        n: r for n, r in ev["channels"].items() if "union_recall_at_this_precision" in r
    }
    if at_precision:
        lines += [
            "",
            "The union at each channel's operating point (the most recall a threshold on the "
            "union's held-out probabilities reaches at that channel's precision; a comparison of "
            "curves, not a decision rule):",
            "",
            "| channel | its precision | its recall | union recall at that precision |",
            "|---|---:|---:|---:|",
        ]
        for name, row in at_precision.items():
            lines.append(
                f"| {name} | {row['precision']:.3f} | {row['recall']:.3f} | "
                f"{row['union_recall_at_this_precision']:.3f} |"
            )
    for level in ("candidates", "decisions"):
        comp = ev["complement"][level]
        lines += [
            "",
            f"Complement ({level}; true pairs):",
            "",
            "| channel | found | missed by lexical | only this channel |",
            "|---|---:|---:|---:|",
        ]
        for name, row in comp.items():
            if name in ("none", "image_and_text"):
                continue
            lines.append(
                f"| {name} | {row['true_found']} | {row.get('missed_by_lexical', '–')} | "
                f"{row['only_this_channel']} |"
            )
        if "image_and_text" in comp:
            it = comp["image_and_text"]
            lines.append(
                f"\nImage and text: both {it['both']}, image only {it['image_only']}, "
                f"text only {it['text_only']}."
            )
        lines.append(f"\nMissed by every channel: {comp['none']['true_missed_by_all']}.")
    return "\n".join(lines) + "\n"
