"""Triplet losses with a margin (Kakao, Alibaba): explicit triplets and batch-hard mining.

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
