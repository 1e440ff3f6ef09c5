"""Loss values checked by hand on listed triplets; miners on small hand-made inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vsearch.models.losses import BatchHardTripletLoss, TripletMarginLoss, pairwise_distances
from vsearch.models.miners import PKBatchSampler, mine_click_triplets


def test_pairwise_distances_match_cdist() -> None:
    x, y = torch.randn(5, 7), torch.randn(3, 7)
    torch.testing.assert_close(pairwise_distances(x, y), torch.cdist(x, y), atol=1e-5, rtol=1e-5)


def test_triplet_margin_loss_hand_values() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    p = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    n = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # Triplet 1: d(a,p)=sqrt(2), d(a,n)=0 -> sqrt(2) + 0.2. Triplet 2: d(a,p)=0, d(a,n)=sqrt(2) -> 0.
    loss = TripletMarginLoss(margin=0.2)(a, p, n)
    assert loss.item() == pytest.approx((math.sqrt(2) + 0.2) / 2, rel=1e-5)


def test_batch_hard_picks_farthest_positive_and_nearest_negative() -> None:
    emb = torch.tensor([[0.0, 0.0], [3.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # anchor 0: pos 1 (d=3), neg min(d to 2=1, d to 3=2)=1 -> 3-1+0.5 = 2.5
    # anchor 1: pos 0 (d=3), neg min(2, sqrt(13))=2 -> 1.5
    # anchor 2: pos 3 (d=sqrt(5)), neg min(1, 2)=1 -> sqrt(5)-0.5
    # anchor 3: pos 2 (d=sqrt(5)), neg min(2, sqrt(13))=2 -> sqrt(5)-1.5
    expected = (2.5 + 1.5 + (math.sqrt(5) - 0.5) + (math.sqrt(5) - 1.5)) / 4
    loss_fn = BatchHardTripletLoss(margin=0.5)
    assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-5)
    assert loss_fn.last_active == 1.0


def test_batch_hard_without_valid_anchor_is_zero_with_grad() -> None:
    emb = torch.randn(3, 4, requires_grad=True)
    loss = BatchHardTripletLoss()(emb, torch.tensor([0, 1, 2]))
    assert loss.item() == 0.0
    loss.backward()
    assert emb.grad is not None


def test_pk_sampler_shapes_and_lockstep() -> None:
    labels = np.repeat(np.arange(10), 3)
    batches = [
        list(PKBatchSampler(labels, p=4, k=2, seed=0, rank=r, world_size=2).epoch(0))
        for r in range(2)
    ]
    assert len(batches[0]) == len(batches[1]) >= 1
    for batch in batches[0] + batches[1]:
        assert batch.shape == (8,)
        counts = np.bincount(labels[batch])
        assert sorted(counts[counts > 0].tolist()) == [2, 2, 2, 2]
    # Ranks see different batches; the same seed and epoch give the same batches.
    assert not np.array_equal(batches[0][0], batches[1][0])
    again = list(PKBatchSampler(labels, p=4, k=2, seed=0, rank=0, world_size=2).epoch(0))
    assert all(np.array_equal(a, b) for a, b in zip(again, batches[0], strict=True))


def test_pk_sampler_needs_two_labels() -> None:
    with pytest.raises(ValueError, match="two distinct labels"):
        PKBatchSampler(np.zeros(5, dtype=np.int64), p=2, k=2)


def test_click_triplets() -> None:
    query_rows = {"q1.jpg": 10, "q2.jpg": 11}
    catalog_rows = {"A": 0, "B": 1, "C": 2}
    sessions = [
        ("q1.jpg", ["A", "B", "C"], "A"),  # two negatives
        ("q2.jpg", ["B", "Z"], "B"),  # Z unknown -> no triplet
        ("q3.jpg", ["A", "B"], "A"),  # unknown query -> skipped
    ]
    triplets = mine_click_triplets(query_rows, catalog_rows, sessions)
    assert triplets.tolist() == [[10, 0, 1], [10, 0, 2]]
    assert mine_click_triplets({}, {}, []).shape == (0, 3)


def test_supcon_hand_value() -> None:
    from vsearch.models.losses import SupConLoss

    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    # Anchors 0 and 1: one positive at similarity 1, one negative at 0 (t = 1):
    # -log(e^1 / (e^1 + e^0)) = log(1 + e) - 1. Anchor 2 has no positive and is left out.
    loss = SupConLoss(temperature=1.0)(emb, labels)
    assert loss.item() == pytest.approx(math.log(1 + math.e) - 1, rel=1e-5)


def _line(xs: list[float]) -> torch.Tensor:
    """Points on the x axis, ``(n, 2)``: distances are differences of the listed numbers."""
    return torch.tensor([[x, 0.0] for x in xs])


def test_semi_hard_hand_values() -> None:
    from vsearch.models.losses import SemiHardTripletLoss

    emb = _line([0.0, 1.0, 1.2, 0.4, 3.0])
    labels = torch.tensor([0, 0, 1, 1, 1])
    # margin 0.5; (anchor, positive): d_ap, negatives' distances -> chosen negative -> loss
    # (0,1): 1.0, negs {2: 1.2, 3: 0.4, 4: 3.0}; band (1.0, 1.5) holds 1.2 -> 0.3
    # (1,0): 1.0, negs {0.2, 0.6, 2.0}; band (1.0, 1.5) empty -> hardest 0.2 -> 1.3
    # (2,3): 0.8, negs {0: 1.2, 1: 0.2}; band (0.8, 1.3) holds 1.2 -> 0.1
    # (2,4): 1.8, band (1.8, 2.3) empty -> hardest 0.2 -> 2.1
    # (3,2): 0.8, negs {0: 0.4, 1: 0.6}; band (0.8, 1.3) empty -> hardest 0.4 -> 0.9
    # (3,4): 2.6 -> hardest 0.4 -> 2.7
    # (4,2): 1.8, negs {0: 3.0, 1: 2.0}; band (1.8, 2.3) holds 2.0 -> 0.3
    # (4,3): 2.6, band (2.6, 3.1) holds 3.0 -> 0.1
    expected = (0.3 + 1.3 + 0.1 + 2.1 + 0.9 + 2.7 + 0.3 + 0.1) / 8
    loss_fn = SemiHardTripletLoss(margin=0.5)
    assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-5)
    assert loss_fn.last_active == 1.0
    assert loss_fn.last_triplets.tolist() == [
        [0, 1, 2], [1, 0, 2], [2, 3, 0], [2, 4, 1], [3, 2, 0], [3, 4, 0], [4, 2, 1], [4, 3, 0]
    ]  # fmt: skip


def test_semi_hard_counts_satisfied_pairs_as_inactive() -> None:
    from vsearch.models.losses import SemiHardTripletLoss

    emb = _line([0.0, 0.1, 5.0, 5.1, 0.3])
    labels = torch.tensor([0, 0, 1, 1, 0])
    # Six label-0 pairs, all with d_ap <= 0.3 and negatives >= 4.7 away: no loss.
    # Label-1 pairs (2,3), (3,2): d_ap 0.1, hardest negative 4.7 / 4.8 away: no loss.
    loss_fn = SemiHardTripletLoss(margin=0.5)
    assert loss_fn(emb, labels).item() == 0.0
    assert loss_fn.last_active == 0.0 and len(loss_fn.last_triplets) == 8


def test_batch_hard_records_its_triplets() -> None:
    emb = torch.tensor([[0.0, 0.0], [3.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    loss_fn = BatchHardTripletLoss(margin=0.5)
    loss_fn(emb, torch.tensor([0, 0, 1, 1]))
    assert loss_fn.last_triplets.tolist() == [[0, 1, 2], [1, 0, 2], [2, 3, 0], [3, 2, 0]]


@pytest.mark.parametrize("name", ["batch_hard", "semi_hard", "distance_weighted", "supcon"])
def test_make_label_loss_gives_scalar_with_grad(name: str) -> None:
    from vsearch.models.losses import make_label_loss

    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(8, 16), dim=1).requires_grad_(True)
    labels = torch.arange(4).repeat_interleave(2)
    loss_fn = make_label_loss(name, margin=0.2, temperature=0.1)
    loss = loss_fn(emb, labels)
    assert loss.shape == () and loss.item() > 0
    assert 0.0 <= loss_fn.last_active <= 1.0
    loss.backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all()
    # Without any positive pair every loss is a zero that still has a gradient path.
    emb.grad = None
    zero = loss_fn(emb, torch.arange(8))
    assert zero.item() == 0.0 and loss_fn.last_active == 0.0
    zero.backward()
    assert emb.grad is not None


def test_make_label_loss_rejects_unknown_names() -> None:
    from vsearch.models.losses import make_label_loss

    with pytest.raises(ValueError, match="unknown label loss"):
        make_label_loss("hardest", 0.2, 0.1)


def test_a_fixed_epoch_length_keeps_sharded_ranks_in_lockstep() -> None:
    # Two workers hold different shards (different label counts): with the length fixed from the
    # whole set, both run the same number of steps.
    whole = np.repeat(np.arange(10), 6)
    steps = PKBatchSampler.natural_batches(len(whole), 10, 4, 2, world_size=2)
    shards = [whole[::2][:25], whole[1::2]]
    counts = [len(list(PKBatchSampler(s, 4, 2, batches_per_rank=steps).epoch(0))) for s in shards]
    assert counts == [steps, steps]
    assert PKBatchSampler(whole, 4, 2, world_size=2).batches_per_rank() == steps
    with pytest.raises(ValueError, match="batches_per_rank"):
        PKBatchSampler(whole, 4, 2, batches_per_rank=0)
