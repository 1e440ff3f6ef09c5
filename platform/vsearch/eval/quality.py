"""Quality figures on real photos: photo -> photo retrieval, category accuracy (model, search,
fused), box IoU, and the Markdown summary of an evaluation report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vsearch.eval.metrics import exact_topk, mean_average_precision, recall_at_k
from vsearch.eval.retrieval import canonical_ranking, recall_curve
from vsearch.rank.fusion import fit_temperature, fuse, tune_fusion_weight


def photo_to_photo(
    queries: np.ndarray,
    query_products: Sequence[str],
    gallery: np.ndarray,
    gallery_products: Sequence[str],
    canonical: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Exact search of ``(m, d)`` L2-normalised queries in an ``(n, d)`` gallery, at product
    level (a product counts once, at its best image): Recall@1/5/10, mAP@10 and the curve."""
    canonical = dict(canonical or {})
    k_images = min(len(gallery), 200)
    _, rows = exact_topk(queries, gallery, k_images)
    ranked = [
        canonical_ranking([gallery_products[r] for r in row if r >= 0], canonical, 10)
        for row in rows
    ]
    truth = [canonical.get(p, p) for p in query_products]
    return {
        "queries": len(truth),
        "gallery_images": len(gallery),
        "recall_at_1": recall_at_k(ranked, truth, 1),
        "recall_at_5": recall_at_k(ranked, truth, 5),
        "recall_at_10": recall_at_k(ranked, truth, 10),
        "map_at_10": mean_average_precision(ranked, [{t} for t in truth], 10),
        "recall_curve": recall_curve(ranked, truth),
    }


def category_report(
    truth: Sequence[str],
    categories: Sequence[str],
    model_probs: np.ndarray,
    vote_probs: np.ndarray | None,
    weight: float,
    fine_truth: Sequence[str] | None = None,
    fine_search: Sequence[str] | None = None,
    model_temperature: float = 1.0,
) -> dict[str, Any]:
    """Top-1 category accuracy of the model head, the kNN vote and their fusion at ``weight``
    (the head softened at ``model_temperature``, as the query pipeline fuses); the accuracy of
    every weight (``by_weight``: choose it on a split you do not report) and the head's
    temperature of least log-loss here (``fitted_temperature_here``: likewise); and the fine
    (product) accuracy of the search's top hit when given. Without a vote (``vote_probs`` None)
    the fusion is the head alone and the vote's accuracy is NaN."""
    index = {c: i for i, c in enumerate(categories)}
    labels = np.asarray([index.get(c, -1) for c in truth], dtype=np.int64)
    has_model = model_probs.shape[1] > 0

    def top1(probs: np.ndarray) -> float:
        return float((probs.argmax(1) == labels).mean()) if len(labels) else 0.0

    if vote_probs is None:
        if not has_model:
            raise ValueError("no category head and no vote: nothing predicts a category")
        fused_top1, weight = top1(model_probs), 1.0
    else:
        fused_top1 = top1(fuse(model_probs, vote_probs, weight, model_temperature))
    out: dict[str, Any] = {
        "queries": len(labels),
        "unknown_category": int((labels < 0).sum()),
        "model_top1": top1(model_probs) if has_model else float("nan"),
        "search_top1": top1(vote_probs) if vote_probs is not None else float("nan"),
        "fused_top1": fused_top1,
        "fusion_weight": weight,
        "model_temperature": model_temperature,
    }
    if has_model and vote_probs is not None:
        best, scores = tune_fusion_weight(
            model_probs, vote_probs, labels, model_temperature=model_temperature
        )
        out["by_weight"] = {f"{w:.2f}": s for w, s in scores.items()}
        out["best_weight_here"] = best
    if has_model:
        out["fitted_temperature_here"] = fit_temperature(model_probs, labels)
    if fine_truth is not None and fine_search is not None:
        out["fine_search_top1"] = float(
            np.mean([a == b for a, b in zip(fine_truth, fine_search, strict=True)])
        )
    return out


def box_iou_mean(
    predicted: np.ndarray, truth_px: Sequence[Sequence[float] | None], shapes: Sequence[tuple]
) -> float:
    """Mean IoU of predicted boxes ``(n, 4)`` (fractions) against pixel boxes of the stored
    images (``shapes`` the decoded ``(H, W, 3)``); rows without a true box are left out."""
    ious = []
    for pred, box, shape in zip(predicted, truth_px, shapes, strict=True):
        if box is None:
            continue
        h, w = shape[:2]
        t = np.asarray([box[0] / w, box[1] / h, box[2] / w, box[3] / h])
        iw = max(0.0, min(pred[2], t[2]) - max(pred[0], t[0]))
        ih = max(0.0, min(pred[3], t[3]) - max(pred[1], t[1]))
        inter = iw * ih
        union = (pred[2] - pred[0]) * (pred[3] - pred[1]) + (t[2] - t[0]) * (t[3] - t[1]) - inter
        ious.append(inter / max(union, 1e-9))
    return float(np.mean(ious)) if ious else float("nan")


def quality_markdown(report: Mapping[str, Any]) -> str:
    """A short Markdown summary of an evaluation report."""
    lines = [
        f"# vsearch evaluation: model {report['model_version']}, index {report['index_version']}",
        "",
        f"Backbone {report['backbone']}; {report['queries']} photos of split "
        f"`{report['eval_split']}` ({report['unreadable_queries']} unreadable).",
        "",
        "| protocol | Recall@1 | Recall@5 | Recall@10 | mAP@10 |",
        "|---|---:|---:|---:|---:|",
    ]
    p2c = report["photo_to_catalog"]
    lines.append(
        f"| photo -> catalogue (index) | {p2c['recall_at_1']:.3f} | "
        f"{p2c['recall_curve'][4]:.3f} | {p2c['recall_at_10']:.3f} | {p2c['map_at_10']:.3f} |"
    )
    if "photo_to_train" in report:
        p = report["photo_to_train"]
        lines.append(
            f"| photo -> train photos | {p['recall_at_1']:.3f} | {p['recall_at_5']:.3f} | "
            f"{p['recall_at_10']:.3f} | {p['map_at_10']:.3f} |"
        )
    base = report.get("baseline_pooled_backbone")
    if base:
        for key, label in (("photo_to_catalog", "catalogue"), ("photo_to_train", "train photos")):
            b = base[key]
            lines.append(
                f"| baseline: pooled frozen backbone, photo -> {label} | {b['recall_at_1']:.3f} | "
                f"{b['recall_at_5']:.3f} | {b['recall_at_10']:.3f} | {b['map_at_10']:.3f} |"
            )
    cat = report.get("category")
    if cat:
        lines += [
            "",
            "| category top-1 | model | search (kNN vote) | fused |",
            "|---|---:|---:|---:|",
            f"| coarse | {cat['model_top1']:.3f} | {cat['search_top1']:.3f} | "
            f"{cat['fused_top1']:.3f} |",
        ]
        if "fine_search_top1" in cat:
            lines.append(f"| fine (product) | | {cat['fine_search_top1']:.3f} | |")
        lines.append(
            f"\nFusion weight {cat['fusion_weight']:.2f} (model share), the head softened at "
            f"temperature {cat.get('model_temperature', 1.0):g}."
        )
        if "vote_gallery" in cat:
            gallery = "reference photos" if cat["vote_gallery"] == "reference" else "catalogue"
            lines.append(
                f"The kNN vote searched the {gallery} ({cat['vote_gallery_images']} images)."
            )
        if "best_weight_here" in cat:
            lines.append(
                f"Fitted on this split (choose them on one you do not report): weight "
                f"{cat['best_weight_here']:.2f}, temperature {cat['fitted_temperature_here']:g}."
            )
    if "box" in report:
        lines.append(f"Subject box IoU: {report['box']['iou']:.3f}.")
    return "\n".join(lines) + "\n"


def report_value(report: Mapping[str, Any], key: str) -> float:
    """The number at dotted ``key`` of an evaluation report (``"photo_to_catalog.recall_at_10"``)."""
    value: Any = report
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(f"the evaluation report has no {key!r} (missing {part!r})")
        value = value[part]
    return float(value)


def quality_gate(new: float, published: float | None, tolerance: float) -> tuple[bool, str]:
    """Whether a new index version may replace the published one: its metric may fall below the
    published version's by at most ``tolerance``. With nothing published it passes."""
    if published is None:
        return True, f"nothing published yet: new {new:.4f}"
    delta = new - published
    passed = delta >= -tolerance - 1e-12
    verdict = "passed" if passed else "failed"
    return passed, (
        f"{verdict}: new {new:.4f} vs published {published:.4f} "
        f"(change {delta:+.4f}, tolerance {tolerance:.4f})"
    )
