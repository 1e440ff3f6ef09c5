"""``MetricTrainer``: one epoch of the metric-learning losses on a ``TrainingSet``.

Losses per step: the label loss over a P x K batch (supervised contrastive or mined triplets), the
click-log triplet loss with margin, the category cross-entropy, an optional normalised-softmax loss
over product proxies, and box regression where subject boxes are known.

It knows nothing about Ray: rank and world size are arguments, and the model may already be wrapped
for data parallelism by the caller. Gradients are averaged by that wrapper, not here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vsearch.augment import RandomAugment
from vsearch.config import TrainConfig
from vsearch.models.heads import NetOutput
from vsearch.models.losses import TripletMarginLoss, make_label_loss
from vsearch.models.miners import PKBatchSampler
from vsearch.training.dataset import TrainingSet


@dataclass
class EpochStats:
    """What one epoch did on this rank (losses are means over its steps)."""

    epoch: int
    steps: int
    loss: float
    label_loss: float
    click_loss: float
    category_loss: float
    box_loss: float
    active_fraction: float
    images_per_s: float
    #: Learning rate at the last step of the epoch.
    lr: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of matching rows of two ``(n, 4)`` box tensors ``x0, y0, x1, y1``: ``(n,)``."""
    w = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp_min(0)
    h = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp_min(0)
    inter = w * h
    area = (a[:, 2] - a[:, 0]).clamp_min(0) * (a[:, 3] - a[:, 1]).clamp_min(0)
    area_b = (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)
    return inter / (area + area_b - inter).clamp_min(1e-9)


def box_loss(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """L1 + (1 - IoU) over the rows of ``truth`` without NaN; 0 (with a gradient path) if none."""
    known = ~torch.isnan(truth).any(dim=1)
    if not bool(known.any()):
        return pred.sum() * 0.0
    p, t = pred[known], truth[known]
    return (p - t).abs().sum(dim=1).mean() + (1 - box_iou(p, t)).mean()


def flip_maps(
    x: torch.Tensor, boxes: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror a random half of the feature maps ``(n, C, g, g)`` and their boxes left-right."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    mirrored = torch.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], dim=1)
    return x, torch.where(flip.view(-1, 1), mirrored, boxes)


class MetricTrainer:
    """Trains ``model`` (inputs -> ``NetOutput``) on ``data``; call ``train_epoch`` per epoch.

    ``model`` is the whole ``SearchNetwork`` for image inputs, or its ``head`` for cached maps of
    a frozen backbone (``data.kind == "maps"``), possibly wrapped for data parallelism.
    """

    def __init__(
        self,
        model: nn.Module | Callable[[torch.Tensor], NetOutput],
        cfg: TrainConfig,
        data: TrainingSet,
        rank: int = 0,
        world_size: int = 1,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
        batches_per_rank: int | None = None,
    ) -> None:
        """``gather`` (e.g. ``all_gather_with_grad`` under DDP) lets the label loss see the
        embeddings of every worker's batch; None keeps it local.

        ``data`` is the whole training set (every rank draws its share of the batches from it)
        unless ``batches_per_rank`` is given: then ``data`` is this rank's shard, batches are
        drawn from it alone, and every rank runs that many steps per epoch."""
        self.model = model
        self.cfg = cfg
        self.data = data
        self.rank = rank
        sharded = batches_per_rank is not None
        self.sampler = PKBatchSampler(
            data.sampling_labels() if sharded else data.labels,
            cfg.products_per_batch,
            cfg.images_per_product,
            seed=cfg.seed * 1_000 + rank if sharded else cfg.seed,
            rank=0 if sharded else rank,
            world_size=1 if sharded else world_size,
            batches_per_rank=batches_per_rank,
        )
        self.label_loss = make_label_loss(
            cfg.label_loss,
            cfg.margin,
            cfg.temperature,
            gather=gather if world_size > 1 else None,
            rank=rank,
            generator=torch.Generator().manual_seed(cfg.seed + rank),
        )
        self.click_loss = TripletMarginLoss(cfg.margin)
        # Inputs are augmented on the CPU, then moved to where the model's weights are (a GPU
        # when the caller placed it there).
        first = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
        self.device = first.device if first is not None else torch.device("cpu")
        self.augment = RandomAugment(mode=cfg.augment, paste_prob=cfg.paste_prob)
        # A pretrained backbone tail (parameters under "tail.") learns at a fraction of lr.
        named = list(model.named_parameters()) if isinstance(model, nn.Module) else []
        in_tail = {name: name.startswith("tail.") or ".tail." in name for name, _ in named}
        tail = [p for name, p in named if in_tail[name]]
        rest = [p for name, p in named if not in_tail[name]]
        groups: list[dict] = [{"params": rest, "lr_scale": 1.0}]
        if tail:
            groups.append({"params": tail, "lr_scale": cfg.backbone_lr_scale})
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        # Click triplets per step: half a label batch keeps the two losses comparable in cost.
        self.clicks_per_step = (cfg.products_per_batch * cfg.images_per_product) // 2

    def lr_at(self, progress: float) -> float:
        """Learning rate after ``progress`` epochs (fractional): warm-up, then the schedule.

        A function of the epoch count only, so every rank (and a resumed run) agrees on it.
        """
        cfg = self.cfg
        if cfg.warmup_epochs > 0 and progress < cfg.warmup_epochs:
            return cfg.lr * (progress + 1e-3) / cfg.warmup_epochs
        if cfg.lr_schedule == "constant":
            return cfg.lr
        span = max(cfg.epochs - cfg.warmup_epochs, 1)
        t = min(max((progress - cfg.warmup_epochs) / span, 0.0), 1.0)
        low = cfg.lr * cfg.min_lr_ratio
        return low + (cfg.lr - low) * 0.5 * (1 + math.cos(math.pi * t))

    def _with_catalog(self, batch: np.ndarray) -> np.ndarray:
        """Put each product's catalogue image in the last ``catalog_per_product`` slots of its
        K items (the sampler lays a batch out as P groups of K)."""
        per = min(self.cfg.catalog_per_product, self.cfg.images_per_product - 1)
        if per <= 0:
            return batch
        groups = batch.reshape(-1, self.cfg.images_per_product).copy()
        rows = self.data.catalog_rows[self.data.labels[groups[:, 0]]]
        has = rows >= 0
        groups[has, -per:] = rows[has, None]
        return groups.reshape(-1)

    def _inputs(self, rows: np.ndarray, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.data.inputs[rows]
        boxes = torch.from_numpy(self.data.boxes[rows])
        if self.data.kind == "maps":
            x, boxes = flip_maps(x.float(), boxes, gen)
        else:
            x, boxes = self.augment.with_boxes(x, boxes, gen)
        return x.to(self.device), boxes.to(self.device)

    def train_epoch(self, epoch: int) -> EpochStats:
        if isinstance(self.model, nn.Module):
            self.model.train()
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * 97 + self.rank)
        rng = np.random.default_rng([cfg.seed, epoch, self.rank])
        use_clicks = cfg.click_weight > 0 and len(self.data.click_triplets) > 0
        totals = np.zeros(6)
        steps = images = 0
        start = time.perf_counter()
        steps_per_epoch = self.sampler.batches_per_rank()
        for batch in self.sampler.epoch(epoch):
            lr = self.lr_at(epoch + steps / steps_per_epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            batch = self._with_catalog(batch)
            x, boxes = self._inputs(batch, gen)
            labels = torch.from_numpy(self.data.labels[batch]).to(self.device)
            n_label = len(batch)
            if use_clicks:
                pick = rng.choice(len(self.data.click_triplets), size=self.clicks_per_step)
                click_x, _ = self._inputs(self.data.click_triplets[pick].reshape(-1), gen)
                x = torch.cat([x, click_x])
            out: NetOutput = self.model(x)
            emb = out.embedding
            label_loss = self.label_loss(emb[:n_label], labels)
            click_loss = torch.zeros(())
            if use_clicks:
                a, p, n = emb[n_label:].view(-1, 3, emb.shape[1]).unbind(1)
                click_loss = self.click_loss(a, p, n)
            category_loss = torch.zeros(())
            if out.category_logits.shape[1] and cfg.category_weight > 0:
                cats = torch.from_numpy(self.data.categories[batch]).to(self.device)
                category_loss = F.cross_entropy(out.category_logits[:n_label], cats)
            proxy_loss = torch.zeros(())
            if out.product_logits.shape[1] and cfg.proxy_weight > 0:
                proxy_loss = F.cross_entropy(out.product_logits[:n_label], labels)
            b_loss = box_loss(out.box[:n_label], boxes)
            loss = (
                label_loss
                + cfg.click_weight * click_loss
                + cfg.category_weight * category_loss
                + cfg.proxy_weight * proxy_loss
                + cfg.box_weight * b_loss
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            totals += (
                loss.item(),
                label_loss.item(),
                click_loss.item(),
                category_loss.item(),
                b_loss.item(),
                getattr(self.label_loss, "last_active", 0.0),
            )
            steps += 1
            images += x.shape[0]
        elapsed = time.perf_counter() - start
        mean = totals / max(steps, 1)
        return EpochStats(
            epoch=epoch,
            steps=steps,
            loss=float(mean[0]),
            label_loss=float(mean[1]),
            click_loss=float(mean[2]),
            category_loss=float(mean[3]),
            box_loss=float(mean[4]),
            active_fraction=float(mean[5]),
            images_per_s=images / elapsed if elapsed > 0 else 0.0,
            lr=float(self.optimizer.param_groups[0]["lr"]),
        )
