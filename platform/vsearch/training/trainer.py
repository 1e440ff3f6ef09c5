"""``TripletTrainer``: one epoch of batch-hard label triplets plus click-log triplets.

It knows nothing about Ray: rank and world size are arguments, and the model may already be wrapped
for data parallelism by the caller. Gradients are averaged by that wrapper, not here.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vsearch.augment import RandomAugment
from vsearch.config import TrainConfig
from vsearch.models.losses import BatchHardTripletLoss, SupConLoss, TripletMarginLoss
from vsearch.models.miners import PKBatchSampler
from vsearch.training.dataset import TrainingSet


@dataclass
class EpochStats:
    """What one epoch did on this rank."""

    epoch: int
    steps: int
    loss: float
    label_loss: float
    click_loss: float
    active_fraction: float
    images_per_s: float
    #: Learning rate at the last step of the epoch.
    lr: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


class TripletTrainer:
    """Trains ``model`` on ``data`` with a label loss (supervised contrastive or batch-hard triplet)
    plus the click-triplet loss; call ``train_epoch`` once per epoch."""

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        data: TrainingSet,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.model = model
        self.cfg = cfg
        self.data = data
        self.rank = rank
        self.sampler = PKBatchSampler(
            data.labels,
            cfg.products_per_batch,
            cfg.images_per_product,
            seed=cfg.seed,
            rank=rank,
            world_size=world_size,
        )
        self.label_loss: BatchHardTripletLoss | SupConLoss = (
            SupConLoss(cfg.temperature)
            if cfg.label_loss == "supcon"
            else BatchHardTripletLoss(cfg.margin)
        )
        self.click_loss = TripletMarginLoss(cfg.margin)
        self.augment = RandomAugment(mode=cfg.augment, paste_prob=cfg.paste_prob)
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
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

    def train_epoch(self, epoch: int) -> EpochStats:
        self.model.train()
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch * 97 + self.rank)
        rng = np.random.default_rng([self.cfg.seed, epoch, self.rank])
        use_clicks = self.cfg.click_weight > 0 and len(self.data.click_triplets) > 0
        totals = np.zeros(4)
        steps = 0
        images = 0
        start = time.perf_counter()
        steps_per_epoch = self.sampler.batches_per_rank()
        for batch in self.sampler.epoch(epoch):
            lr = self.lr_at(epoch + steps / steps_per_epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            x = self.augment(self.data.images[batch], gen)
            labels = torch.from_numpy(self.data.labels[batch])
            n_label = len(batch)
            if use_clicks:
                pick = rng.choice(len(self.data.click_triplets), size=self.clicks_per_step)
                rows = self.data.click_triplets[pick].reshape(-1)
                x = torch.cat([x, self.augment(self.data.images[rows], gen)])
            emb = self.model(x)
            label_loss = self.label_loss(emb[:n_label], labels)
            click_loss = torch.zeros(())
            if use_clicks:
                a, p, n = emb[n_label:].view(-1, 3, emb.shape[1]).unbind(1)
                click_loss = self.click_loss(a, p, n)
            loss = label_loss + self.cfg.click_weight * click_loss
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            totals += (
                loss.item(),
                label_loss.item(),
                click_loss.item(),
                self.label_loss.last_active,
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
            active_fraction=float(mean[3]),
            images_per_s=images / elapsed if elapsed > 0 else 0.0,
            lr=float(self.optimizer.param_groups[0]["lr"]),
        )
