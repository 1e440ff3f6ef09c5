"""Metric-learning losses: triplets with a margin (Kakao, Alibaba), explicit or mined in a P x K batch
(batch-hard, semi-hard, distance-weighted), and the supervised contrastive loss.

Distances are Euclidean between L2-normalised embeddings. Every batch loss takes
``forward(embeddings (n, d) float, labels (n,) int64) -> scalar`` and keeps ``last_active``, the
fraction of its anchors (or triplets) that still violate the margin.

Distribution is injected, open_clip style: a batch loss built with ``gather`` (a callable returning
the concatenation of a tensor over all workers, in rank order, differentiable for the local part,
e.g. ``vsearch.training.distributed.all_gather_with_grad``) and ``rank`` takes its anchors from the
local rows and its positives and negatives from the gathered rows of every worker. An anchor's own
row is excluded by its global index ``rank * n + i``, so every worker must pass the same ``n``.
Without ``gather`` the batch is the local one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

#: Concatenation of a tensor over all workers (rank order), as ``all_gather_with_grad`` does.
Gather = Callable[[torch.Tensor], torch.Tensor]

LABEL_LOSSES = ("batch_hard", "semi_hard", "distance_weighted", "supcon")


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


class _BatchLoss(nn.Module):
    """What every P x K batch loss shares: the candidate rows (local or gathered) and the masks."""

    def __init__(self, gather: Gather | None = None, rank: int = 0) -> None:
        super().__init__()
        if rank < 0:
            raise ValueError(f"rank must be >= 0, got {rank}")
        self.gather = gather
        self.rank = rank
        self.last_active = 0.0
        #: Triplets of the last call as ``(t, 3) int64`` (local anchor row, candidate row of the
        #: positive, candidate row of the negative); empty for losses that use no triplets.
        self.last_triplets = torch.zeros((0, 3), dtype=torch.int64)

    def candidates(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Candidate rows ``(N, d)``, their labels ``(N,) int64`` and ``is_self`` ``(n, N) bool``,
        true where a candidate is the anchor itself (global index ``rank * n + i``)."""
        n = len(labels)
        if self.gather is None:
            cand, cand_labels, offset = embeddings, labels, 0
        else:
            cand, cand_labels, offset = self.gather(embeddings), self.gather(labels), self.rank * n
            if len(cand) != len(cand_labels) or offset + n > len(cand):
                raise ValueError(
                    f"gathered {len(cand)} rows and {len(cand_labels)} labels cannot hold rank "
                    f"{self.rank}'s {n} rows: every worker must pass the same batch size"
                )
        rows = torch.arange(n, device=labels.device)
        is_self = torch.zeros(n, len(cand), dtype=torch.bool, device=labels.device)
        is_self[rows, offset + rows] = True
        return cand, cand_labels, is_self

    def distances_and_masks(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Anchor-to-candidate distances ``(n, N)`` and the ``(n, N) bool`` positive (same label,
        not self) and negative (other label) masks."""
        cand, cand_labels, is_self = self.candidates(embeddings, labels)
        same = labels.unsqueeze(1) == cand_labels.unsqueeze(0)
        return pairwise_distances(embeddings, cand), same & ~is_self, ~same

    def empty(self, embeddings: torch.Tensor) -> torch.Tensor:
        """A zero loss that still carries a gradient path (no valid anchor in the batch)."""
        self.last_active = 0.0
        self.last_triplets = torch.zeros((0, 3), dtype=torch.int64, device=embeddings.device)
        return embeddings.sum() * 0.0


class BatchHardTripletLoss(_BatchLoss):
    """For each anchor, its farthest positive and nearest negative in the batch (Hermans et al.).

    ``embeddings`` ``(n, d)``, ``labels`` ``(n,)`` int64. Anchors without a positive or without a
    negative in the batch are left out; a batch with no valid anchor gives a zero loss that still
    carries a gradient path. ``last_active`` holds the fraction of anchors with a positive loss.
    """

    def __init__(self, margin: float = 0.2, *, gather: Gather | None = None, rank: int = 0) -> None:
        super().__init__(gather, rank)
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dist, pos_mask, neg_mask = self.distances_and_masks(embeddings, labels)
        valid = pos_mask.any(1) & neg_mask.any(1)
        if not bool(valid.any()):
            return self.empty(embeddings)
        hardest_pos = dist.masked_fill(~pos_mask, float("-inf")).max(1)
        hardest_neg = dist.masked_fill(~neg_mask, float("inf")).min(1)
        losses = F.relu(hardest_pos.values - hardest_neg.values + self.margin)[valid]
        self.last_active = float((losses > 0).float().mean())
        anchors = torch.arange(len(labels), device=labels.device)
        self.last_triplets = torch.stack([anchors, hardest_pos.indices, hardest_neg.indices], 1)[
            valid
        ].detach()
        return losses.mean()


class SemiHardTripletLoss(_BatchLoss):
    """Semi-hard negatives (Schroff et al., FaceNet) for every anchor-positive pair of the batch.

    For the pair ``(a, p)`` the negative is the nearest ``n`` with ``d(a, p) < d(a, n) <
    d(a, p) + margin`` (farther than the positive, but still inside the margin); when there is
    none, the hardest (nearest) negative of ``a``. The loss is the mean of ``max(0, d(a, p) -
    d(a, n) + margin)`` over all pairs whose anchor has a negative; ``last_active`` is the
    fraction of those pairs with a positive loss. ``embeddings`` ``(n, d)``, ``labels`` ``(n,)``
    int64. Memory is ``O(n * N^2)`` for ``N`` candidate rows.
    """

    def __init__(self, margin: float = 0.2, *, gather: Gather | None = None, rank: int = 0) -> None:
        super().__init__(gather, rank)
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dist, pos_mask, neg_mask = self.distances_and_masks(embeddings, labels)
        pairs = pos_mask & neg_mask.any(1, keepdim=True)
        if not bool(pairs.any()):
            return self.empty(embeddings)
        d_ap = dist.unsqueeze(2)  # (n, N, 1): the positive of the pair
        d_an = dist.unsqueeze(1)  # (n, 1, N): every candidate negative
        band = neg_mask.unsqueeze(1) & (d_an > d_ap) & (d_an < d_ap + self.margin)
        semi = d_an.masked_fill(~band, float("inf")).min(2)  # (n, N)
        hardest = dist.masked_fill(~neg_mask, float("inf")).min(1)  # (n,)
        has_semi = band.any(2)
        chosen = torch.where(has_semi, semi.values, hardest.values.unsqueeze(1))
        losses = F.relu(dist - chosen + self.margin)[pairs]
        self.last_active = float((losses > 0).float().mean())
        with torch.no_grad():
            neg_index = torch.where(has_semi, semi.indices, hardest.indices.unsqueeze(1))
            anchor, positive = pairs.nonzero(as_tuple=True)
            self.last_triplets = torch.stack([anchor, positive, neg_index[anchor, positive]], 1)
        return losses.mean()


class DistanceWeightedTripletLoss(_BatchLoss):
    """Triplets with negatives drawn by distance-weighted sampling (Wu et al., "Sampling matters").

    On the unit sphere in ``d`` dimensions pairwise distances of random points have the density
    ``q(x) ∝ x^(d-2) (1 - x²/4)^((d-3)/2)``; sampling a negative with probability ``∝ 1 / q(x)``
    spreads the chosen negatives over all distances instead of the few that are nearest (noisy,
    collapse-prone) or farthest (no gradient). Distances are clipped below at ``cutoff`` (the
    weights explode near 0) and negatives at or beyond ``nonzero_loss_cutoff`` get no weight
    (they cannot violate a usual margin); an anchor with no such negative samples uniformly among
    its negatives. One negative is drawn per anchor-positive pair from ``generator`` (torch's
    global generator when None), then the loss is the mean triplet margin loss over the pairs.
    ``embeddings`` ``(n, d)`` L2-normalised, ``labels`` ``(n,)`` int64; ``last_active`` is the
    fraction of sampled triplets with a positive loss.
    """

    def __init__(
        self,
        margin: float = 0.2,
        cutoff: float = 0.5,
        nonzero_loss_cutoff: float = 1.4,
        *,
        generator: torch.Generator | None = None,
        gather: Gather | None = None,
        rank: int = 0,
    ) -> None:
        super().__init__(gather, rank)
        if not 0 < cutoff < nonzero_loss_cutoff:
            raise ValueError("need 0 < cutoff < nonzero_loss_cutoff")
        self.margin = margin
        self.cutoff = cutoff
        self.nonzero_loss_cutoff = nonzero_loss_cutoff
        self.generator = generator

    def sampling_weights(
        self, dist: torch.Tensor, neg_mask: torch.Tensor, dim: int
    ) -> torch.Tensor:
        """Unnormalised sampling weights ``(n, N)`` (``>= 0``, zero off ``neg_mask``) from the
        distances ``(n, N)`` of ``dim``-dimensional embeddings; rows without a negative are 1."""
        d = dist.clamp_min(self.cutoff)
        log_q = (dim - 2) * d.log() + ((dim - 3) / 2) * (1 - d * d / 4).clamp_min(1e-8).log()
        allowed = neg_mask & (dist < self.nonzero_loss_cutoff)
        uniform = ~allowed.any(1, keepdim=True)  # nothing within reach: any negative will do
        allowed = torch.where(uniform, neg_mask, allowed)
        log_w = torch.where(uniform, torch.zeros_like(log_q), -log_q)
        log_w = log_w.masked_fill(~allowed, float("-inf"))
        top = log_w.max(1, keepdim=True).values
        weights = (log_w - torch.where(top.isfinite(), top, torch.zeros_like(top))).exp()
        return torch.where(allowed.any(1, keepdim=True), weights, torch.ones_like(weights))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dist, pos_mask, neg_mask = self.distances_and_masks(embeddings, labels)
        pairs = pos_mask & neg_mask.any(1, keepdim=True)
        if not bool(pairs.any()):
            return self.empty(embeddings)
        anchor, positive = pairs.nonzero(as_tuple=True)
        with torch.no_grad():
            weights = self.sampling_weights(dist.detach(), neg_mask, embeddings.shape[1])[anchor]
            if self.generator is not None:
                weights = weights.to(self.generator.device)
            negative = torch.multinomial(weights, 1, generator=self.generator).squeeze(1)
            negative = negative.to(dist.device)
        losses = F.relu(dist[anchor, positive] - dist[anchor, negative] + self.margin)
        self.last_active = float((losses > 0).float().mean())
        self.last_triplets = torch.stack([anchor, positive, negative], 1)
        return losses.mean()


class SupConLoss(_BatchLoss):
    """Supervised contrastive loss (Khosla et al.) on L2-normalised ``(n, d)`` embeddings.

    For each anchor with at least one positive, the mean over its positives ``p`` of
    ``-log(exp(s_ap / t) / sum_{b != a} exp(s_ab / t))``, cosine similarities ``s``. Unlike
    batch-hard triplets it looks at every pair, so it does not collapse to one point early in
    training. ``last_active`` is the fraction of anchors whose nearest neighbour in the batch is
    of another label (the ones batch-hard mining would still call violated).
    """

    def __init__(
        self, temperature: float = 0.1, *, gather: Gather | None = None, rank: int = 0
    ) -> None:
        super().__init__(gather, rank)
        self.temperature = temperature

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cand, cand_labels, is_self = self.candidates(embeddings, labels)
        sim = embeddings @ cand.T
        pos = (labels.unsqueeze(1) == cand_labels.unsqueeze(0)) & ~is_self
        logits = (sim / self.temperature).masked_fill(is_self, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        has_pos = pos.any(1)
        if not bool(has_pos.any()):
            return self.empty(embeddings)
        per_anchor = -(log_prob.masked_fill(~pos, 0.0).sum(1)) / pos.sum(1).clamp(min=1)
        with torch.no_grad():
            nearest = sim.masked_fill(is_self, float("-inf")).argmax(1)
            wrong = cand_labels[nearest] != labels
            self.last_active = float(wrong[has_pos].float().mean())
        return per_anchor[has_pos].mean()


def make_label_loss(
    name: str,
    margin: float,
    temperature: float,
    *,
    gather: Gather | None = None,
    rank: int = 0,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """The label loss ``name`` (``TrainConfig.label_loss``): "batch_hard", "semi_hard" or
    "distance_weighted" triplets with ``margin``, or "supcon" at ``temperature``.

    ``gather`` and ``rank`` make it a cross-worker loss (module docstring); ``generator`` seeds
    the distance-weighted sampling. Raises ``ValueError`` for an unknown name.
    """
    if name == "batch_hard":
        return BatchHardTripletLoss(margin, gather=gather, rank=rank)
    if name == "semi_hard":
        return SemiHardTripletLoss(margin, gather=gather, rank=rank)
    if name == "distance_weighted":
        return DistanceWeightedTripletLoss(margin, generator=generator, gather=gather, rank=rank)
    if name == "supcon":
        return SupConLoss(temperature, gather=gather, rank=rank)
    raise ValueError(f"unknown label loss {name!r}; expected one of {LABEL_LOSSES}")
