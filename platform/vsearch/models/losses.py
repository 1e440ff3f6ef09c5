"""Metric-learning losses: triplets with a margin (Kakao, Alibaba), explicit or batch-hard mined,
and the supervised contrastive loss over P x K batches.

Distances are Euclidean between L2-normalised embeddings. Distribution (gathering embeddings across
workers) is not done here: a caller that wants it passes gathered tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pairwise_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between rows: ``(n, d), (m, d) -> (n, m)``, numerically safe at 0."""
    sq = (x * x).sum(1, keepdim=True) - 2 * x @ y.T + (y * y).sum(1).unsqueeze(0)
    return sq.clamp_min(1e-12).sqrt()


class TripletMarginLoss(nn.Module):
    """Mean of ``max(0, d(a, p) - d(a, n) + margin)`` over explicit triplets ``(n, d)`` each."""

    def __init__(self, margin: float = 0.2) -> None:
        super().__init__()
        self.margin = margin

    def forward(
        self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor
    ) -> torch.Tensor:
        d_ap = (anchor - positive).pow(2).sum(1).clamp_min(1e-12).sqrt()
        d_an = (anchor - negative).pow(2).sum(1).clamp_min(1e-12).sqrt()
        return F.relu(d_ap - d_an + self.margin).mean()


class BatchHardTripletLoss(nn.Module):
    """For each anchor, its farthest positive and nearest negative in the batch (Hermans et al.).

    ``embeddings`` ``(n, d)``, ``labels`` ``(n,)`` int64. Anchors without a positive or without a
    negative in the batch are left out; a batch with no valid anchor gives a zero loss that still
    carries a gradient path. ``last_active`` holds the fraction of anchors with a positive loss.
    """

    def __init__(self, margin: float = 0.2) -> None:
        super().__init__()
        self.margin = margin
        self.last_active = 0.0

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dist = pairwise_distances(embeddings, embeddings)
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        pos_mask = same & ~eye
        neg_mask = ~same
        valid = pos_mask.any(1) & neg_mask.any(1)
        if not bool(valid.any()):
            self.last_active = 0.0
            return embeddings.sum() * 0.0
        hardest_pos = dist.masked_fill(~pos_mask, float("-inf")).max(1).values
        hardest_neg = dist.masked_fill(~neg_mask, float("inf")).min(1).values
        losses = F.relu(hardest_pos - hardest_neg + self.margin)[valid]
        self.last_active = float((losses > 0).float().mean())
        return losses.mean()


class SupConLoss(nn.Module):
    """Supervised contrastive loss (Khosla et al.) on L2-normalised ``(n, d)`` embeddings.

    For each anchor with at least one positive, the mean over its positives ``p`` of
    ``-log(exp(s_ap / t) / sum_{b != a} exp(s_ab / t))``, cosine similarities ``s``. Unlike
    batch-hard triplets it looks at every pair, so it does not collapse to one point early in
    training. ``last_active`` is the fraction of anchors whose nearest neighbour in the batch is
    of another label (the ones batch-hard mining would still call violated).
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature
        self.last_active = 0.0

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n = len(labels)
        sim = embeddings @ embeddings.T
        eye = torch.eye(n, dtype=torch.bool, device=labels.device)
        pos = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~eye
        logits = (sim / self.temperature).masked_fill(eye, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        has_pos = pos.any(1)
        if not bool(has_pos.any()):
            self.last_active = 0.0
            return embeddings.sum() * 0.0
        per_anchor = -(log_prob.masked_fill(~pos, 0.0).sum(1)) / pos.sum(1).clamp(min=1)
        with torch.no_grad():
            nearest = sim.masked_fill(eye, float("-inf")).argmax(1)
            wrong = labels[nearest] != labels
            self.last_active = float(wrong[has_pos].float().mean())
        return per_anchor[has_pos].mean()
