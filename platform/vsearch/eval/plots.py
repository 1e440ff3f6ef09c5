"""Report figures as PNG bytes (matplotlib, headless). Storage writes them; nothing here does I/O."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from vsearch.eval.metrics import latency_summary


def _png(fig: plt.Figure) -> bytes:
    """The figure as PNG bytes (110 dpi); closes it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def recall_and_latency_figure(
    curves: Mapping[str, Sequence[float]], latencies_ms: Sequence[float], title: str
) -> bytes:
    """Left: Recall@K (K = 1..len) for each named curve. Right: a latency histogram with p50/p99.

    Returns the PNG bytes.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, values in curves.items():
        ks = list(range(1, len(values) + 1))
        left.plot(ks, list(values), marker="o", label=name)
    left.set(xlabel="K", ylabel="Recall@K", ylim=(0, 1.02), title="Recall@K, held-out queries")
    left.set_xticks(range(1, max((len(v) for v in curves.values()), default=1) + 1))
    left.grid(alpha=0.3)
    left.legend(loc="lower right")
    if latencies_ms:
        summary = latency_summary([ms / 1000 for ms in latencies_ms])
        p50, p99 = summary["p50_ms"], summary["p99_ms"]
        right.hist(list(latencies_ms), bins=30, color="#4c72b0")
        right.axvline(p50, color="black", linestyle="--", label=f"p50 {p50:.1f} ms")
        right.axvline(p99, color="red", linestyle="--", label=f"p99 {p99:.1f} ms")
        right.legend()
    right.set(xlabel="ms per request (client side)", ylabel="requests", title="HTTP latency")
    fig.suptitle(title)
    fig.tight_layout()
    return _png(fig)


def recall_figure(curves: Mapping[str, Sequence[float]], title: str) -> bytes:
    """Recall@K (K = 1..len) for each named curve, as PNG bytes."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), list(values), marker="o", label=name)
    ax.set(xlabel="K", ylabel="Recall@K", ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return _png(fig)


def dedup_figure(evaluation: Mapping, k: int, title: str) -> bytes:
    """Left: candidate recall@k, precision, recall and F1 of each channel and of the union.
    Middle: true pairs each channel found among its candidates, split into those the lexical
    baseline also found and those it missed (Coupang's complement). Right (when the evaluation
    has them): precision-recall curves of the held-out probabilities. Returns PNG bytes."""
    curves = evaluation.get("curves") or {}
    fig, axes = plt.subplots(1, 3 if curves else 2, figsize=(16.5 if curves else 11.5, 4.2))
    left, right = axes[0], axes[1]
    rows = {**evaluation["channels"], "union": evaluation["union"]}
    metrics = [("recall_at_k", f"cand. recall@{k}"), ("precision", "precision"),
               ("recall", "recall"), ("f1", "F1")]  # fmt: skip
    width = 0.8 / len(metrics)
    for j, (key, label) in enumerate(metrics):
        xs = [i + (j - (len(metrics) - 1) / 2) * width for i in range(len(rows))]
        left.bar(xs, [r[key] for r in rows.values()], width, label=label)
    left.set_xticks(range(len(rows)), list(rows))
    left.set(ylim=(0, 1.05), title="per channel and union")
    left.grid(axis="y", alpha=0.3)
    left.legend(loc="lower right", fontsize=8)
    comp = {
        n: r for n, r in evaluation["complement"]["candidates"].items()
        if n not in ("none", "image_and_text")
    }  # fmt: skip
    names = list(comp)
    missed = [r.get("missed_by_lexical", 0) for r in comp.values()]
    shared = [r["true_found"] - m for r, m in zip(comp.values(), missed, strict=True)]
    right.bar(names, shared, label="also found by lexical", color="#8da0cb")
    right.bar(names, missed, bottom=shared, label="missed by lexical", color="#fc8d62")
    right.set(ylabel="true pairs among top-k candidates", title="what each channel adds")
    right.legend(fontsize=8)
    if curves:
        pr = axes[2]
        for name, curve in curves.items():
            (line,) = pr.plot(curve["recall"], curve["precision"], label=name,
                              linewidth=2.2 if name == "union" else 1.2)  # fmt: skip
            row = evaluation["channels"].get(name)
            if row is not None:  # the channel's own decision
                pr.scatter([row["recall"]], [row["precision"]], s=22, color=line.get_color())
        u = evaluation["union"]
        pr.scatter([u["recall"]], [u["precision"]], marker="*", s=90, color="k",
                   label="union decision")  # fmt: skip
        pr.set(xlim=(0, 1.02), ylim=(0, 1.05), xlabel="recall", ylabel="precision",
               title="held-out precision-recall")  # fmt: skip
        pr.grid(alpha=0.3)
        pr.legend(fontsize=8, loc="lower left")
    fig.suptitle(title)
    fig.tight_layout()
    return _png(fig)
