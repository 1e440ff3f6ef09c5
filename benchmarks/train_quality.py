"""Held-out retrieval quality of the trained embedder for a fixed training budget, per variant.

Trains in-process (no Ray, one thread, ``world_size=1``) on a synthetic catalogue and searches the
held-out "test" views against the catalogue images (exact cosine and the binary index, as
``vsearch evaluate`` does). Every variant gets the same budget in *images*: a short calibration
run measures the variant's images/s, the budget in seconds becomes a whole number of epochs, and
the variant then trains for exactly that many epochs (so its learning-rate schedule, which runs
over ``epochs``, ends where training ends, and the result is deterministic given the epochs).

One thread processes about half the images per second of the demo's 2 workers, so
``--budget-s 300`` here is about the demo's 150 s.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/train_quality.py --seed 1 --budget-s 120 \\
        --variants baseline chosen
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vsearch.config import ModelConfig, SyntheticConfig, TrainConfig
from vsearch.data.synthetic import generate_synthetic
from vsearch.eval.retrieval import evaluate_retrieval
from vsearch.imaging import decode_image
from vsearch.models.artifact import build_network
from vsearch.models.embedder import Embedder
from vsearch.models.registry import backbone_spec
from vsearch.runtime.embedding import META_COLUMNS
from vsearch.training import MetricTrainer, TrainingSet

# The settings before this benchmark (constant lr, white-fill crop/flip/jitter augmentation).
_BEFORE: dict[str, Any] = {
    "train": {
        "augment": "basic",
        "lr_schedule": "constant",
        "warmup_epochs": 0,
        "label_loss": "batch_hard",
    }
}
#: name -> {"model": ModelConfig overrides, "train": TrainConfig overrides}
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": _BEFORE,
    "supcon": {"train": {"augment": "basic", "lr_schedule": "constant", "warmup_epochs": 0}},
    "supcon+cosine": {"train": {"augment": "basic"}},
    "supcon+composite": {
        "train": {"augment": "composite", "lr_schedule": "constant", "warmup_epochs": 0}
    },
    "supcon+cosine+composite": {"train": {"augment": "composite"}},
    "bh+cosine+composite": {"train": {"label_loss": "batch_hard", "augment": "composite"}},
    "chosen": {},  # the current defaults
    "chosen_lr4e-3": {"train": {"lr": 4e-3}},
    "chosen_lr1e-3": {"train": {"lr": 1e-3}},
    "chosen_t0.05": {"train": {"temperature": 0.05}},
    "chosen_p8k8": {"train": {"products_per_batch": 8, "images_per_product": 8}},
    "chosen_noclick": {"train": {"click_weight": 0.0}},
    "chosen_wd1e-2": {"train": {"weight_decay": 1e-2}},
}


def _demo_configs(overrides: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """The demo's model and train sections (configs/demo.yaml) with ``overrides`` applied."""
    from vsearch.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    # This benchmark trains the built-in CNN end to end: the demo's fallback network.
    base = cfg.model.model_copy(update={"arch": cfg.model.fallback_arch, "head_hidden": 0})
    model = base.model_copy(update=overrides.get("model", {}))
    train = cfg.train.model_copy(update=overrides.get("train", {}))
    return ModelConfig.model_validate(model.model_dump()), TrainConfig.model_validate(
        train.model_dump()
    )


def _network(model_cfg: ModelConfig, data: TrainingSet) -> torch.nn.Module:
    torch.manual_seed(model_cfg.seed)
    return build_network(model_cfg, len(data.category_names))


class Bench:
    """One synthetic catalogue, decoded once."""

    def __init__(self, seed: int) -> None:
        gen = generate_synthetic(SyntheticConfig(seed=seed))
        self.ds = gen.dataset
        self.decoded = {uri: decode_image(data) for uri, data in gen.images.items()}
        self.test = self.ds.queries_of("test")
        self.train_q = self.ds.queries_of("train")
        dups = self.ds.duplicates
        self.canonical = dict(
            zip(dups["product_id"].to_pylist(), dups["duplicate_of"].to_pylist(), strict=True)
        )

    def training_set(self, input_size: int) -> TrainingSet:
        spec = backbone_spec("cnn_small", input_size)
        return TrainingSet.from_tables(
            self.ds.catalog, self.train_q, self.ds.clicks, self.decoded, spec.preprocess
        )

    def evaluate(self, model: torch.nn.Module, input_size: int) -> dict[str, float]:
        emb = Embedder(model)
        cat = emb.embed([self.decoded[u] for u in self.ds.catalog["image_uri"].to_pylist()])
        q = emb.embed([self.decoded[u] for u in self.test["image_uri"].to_pylist()])
        meta = self.ds.catalog.select(list(META_COLUMNS))
        rep = evaluate_retrieval(q, self.test["product_id"].to_pylist(), cat, meta, self.canonical)
        return {
            "r1": rep.exact_recall_at_1,
            "r10": rep.exact_recall_at_10,
            "r1_index": rep.recall_at_1,
        }


def _images_per_s(bench: Bench, model_cfg: ModelConfig, train_cfg: TrainConfig) -> float:
    """Throughput of a throwaway copy of the variant over two epochs (the first warms up)."""
    data = bench.training_set(model_cfg.input_size)
    trainer = MetricTrainer(_network(model_cfg, data), train_cfg, data)
    trainer.train_epoch(0)
    start = time.perf_counter()
    stats = trainer.train_epoch(1)
    images = stats.steps * (
        train_cfg.products_per_batch * train_cfg.images_per_product
        + (3 * trainer.clicks_per_step if train_cfg.click_weight > 0 else 0)
    )
    return images / (time.perf_counter() - start)


def run_variant(bench: Bench, name: str, budget_s: float, epochs: int | None) -> dict[str, Any]:
    model_cfg, train_cfg = _demo_configs(VARIANTS[name])
    data = bench.training_set(model_cfg.input_size)
    per_epoch = MetricTrainer(_network(model_cfg, data), train_cfg, data)
    per_epoch_images = per_epoch.sampler.batches_per_rank() * (
        train_cfg.products_per_batch * train_cfg.images_per_product
        + (3 * per_epoch.clicks_per_step if train_cfg.click_weight > 0 else 0)
    )
    ips = float("nan")
    if epochs is None:
        ips = _images_per_s(bench, model_cfg, train_cfg)
        epochs = max(1, math.floor(budget_s * ips / per_epoch_images))
    train_cfg = train_cfg.model_copy(update={"epochs": epochs, "time_budget_s": 0})
    model = _network(model_cfg, data)
    trainer = MetricTrainer(model, train_cfg, data)
    start = time.perf_counter()
    stats = None
    for epoch in range(epochs):
        stats = trainer.train_epoch(epoch)
    wall = time.perf_counter() - start
    assert stats is not None
    return {
        "variant": name,
        "epochs": epochs,
        "images": epochs * per_epoch_images,
        "wall_s": wall,
        "img_s": ips,
        "loss": stats.loss,
        **bench.evaluate(model, model_cfg.input_size),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, nargs="+", default=[1], help="synthetic catalogue seeds")
    ap.add_argument("--budget-s", type=float, default=120.0, help="training seconds per variant")
    ap.add_argument("--epochs", type=int, default=None, help="fixed epochs instead of a budget")
    ap.add_argument("--variants", nargs="+", default=["baseline", "chosen"], choices=VARIANTS)
    ap.add_argument("--out", default=None, help="append the table to this Markdown file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    for seed in args.seed:
        bench = Bench(seed)
        model_cfg, _ = _demo_configs({})
        data = bench.training_set(model_cfg.input_size)
        untrained = bench.evaluate(_network(model_cfg, data), model_cfg.input_size)
        rows.append({"seed": seed, "variant": "untrained", **untrained})
        print(rows[-1], flush=True)
        for name in args.variants:
            rows.append({"seed": seed, **run_variant(bench, name, args.budget_s, args.epochs)})
            print(rows[-1], flush=True)
    budget = f"{args.epochs} epochs" if args.epochs else f"{args.budget_s:.0f} s (1 thread)"
    lines = [
        f"Budget per variant: {budget}; held-out test views (120) vs 66 catalogue images; "
        "R@k exact cosine, product level, duplicates folded.",
        "",
        "| seed | variant | epochs | images | train s | img/s | final loss | R@1 | R@10 "
        "| R@1 (index) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(row: dict[str, Any], key: str, spec: str) -> str:
        value = row.get(key)
        return (
            ""
            if value is None or (isinstance(value, float) and np.isnan(value))
            else format(value, spec)
        )

    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['variant']} | {fmt(r, 'epochs', 'd')} | {fmt(r, 'images', 'd')} "
            f"| {fmt(r, 'wall_s', '.0f')} | {fmt(r, 'img_s', '.0f')} | {fmt(r, 'loss', '.3f')} "
            f"| {r['r1']:.3f} | {r['r10']:.3f} | {r['r1_index']:.3f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(table + "\n\n")


if __name__ == "__main__":
    main()
