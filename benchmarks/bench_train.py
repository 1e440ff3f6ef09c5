"""Benchmark: what Ray costs or gains in training and in the feature-map cache, against the same
work in one plain process.

(a) Training throughput, in seconds per 1,000 training samples (every image a step forwards: the
P x K label batch plus the click-triplet images), of ``MetricTrainer`` in this process (one torch
thread) against the same loop on Ray Train (``vsearch.runtime.training.fit``: ``--workers`` DDP
workers, gloo, one thread each, a checkpoint reported per epoch). The network is the demo's
fallback (``configs/demo.yaml``: ``cnn_small`` at 64 px, its heads) on a synthetic catalogue put on
a temporary storage by ``jobs.common.ensure_dataset``. Ray Train is given twice: its training
loop (first epoch start to last epoch end, as rank 0 measures it) and the whole ``fit`` call
(controller and worker start-up, data loading, DDP set-up, final checkpoint read).

(b) Feature-cache throughput (images/s) of ``vsearch.runtime.features.cache_feature_maps`` (Ray
Data: hash pass, then an actor pool running the frozen ONNX backbone) against a bare onnxruntime
loop in this process (one thread) over the same images, decoded and preprocessed the same way;
then a second cache call on the same images, which must compute nothing. Skipped, with a notice,
when the ONNX file is absent.

Ratios compare figures taken in the same run, since shared machines are noisy. Prints a table and
writes it to ``benchmarks/results/bench_train.md``. Full size (the demo catalogue) when the CPU is
free; a smoke run:

    OMP_NUM_THREADS=1 python benchmarks/bench_train.py --categories 2 --products 4 --views 3 \\
        --test-views 1 --image-size 64 --epochs 1 --images 30
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
import torch

from jobs.common import ensure_dataset, storage_of
from vsearch.config import Config, load_config
from vsearch.imaging import decode_image
from vsearch.models.artifact import build_network
from vsearch.models.miners import PKBatchSampler
from vsearch.models.onnx_backbone import OnnxBackbone
from vsearch.models.registry import backbone_spec
from vsearch.storage.datasets import read_dataset
from vsearch.training import MetricTrainer, TrainingSet

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results" / "bench_train.md"
ONNX = REPO.parent / "shared" / "models" / "xception_imagenet_fmap.onnx"


def bench_config(args: argparse.Namespace, storage: str) -> Config:
    """configs/demo.yaml on ``storage`` at the sizes asked for, with the demo's fallback network
    (what ``jobs.common.resolve_backbone`` trains when the ONNX file is absent)."""
    cfg = load_config(
        REPO / "configs" / "demo.yaml",
        [
            f"storage={storage}",
            f"data.synthetic.categories={args.categories}",
            f"data.synthetic.products_per_category={args.products}",
            f"data.synthetic.views_per_product={args.views}",
            f"data.synthetic.test_views_per_product={args.test_views}",
            f"data.synthetic.image_size={args.image_size}",
            f"train.epochs={args.epochs}",
            "train.time_budget_s=0",
            f"train.num_workers={args.workers}",
            f"train.cpus_per_worker={args.cpus_per_worker}",
            f"index.embed_actors={args.actors}",
            f"index.batch_size={args.batch_size}",
            f"ray.num_cpus={args.num_cpus}",
        ],
    )
    fallback = cfg.model.model_copy(update={"arch": cfg.model.fallback_arch})
    return cfg.model_copy(update={"model": fallback})


def samples_per_step(cfg: Config, data: TrainingSet) -> int:
    """Images one step forwards (as ``MetricTrainer`` batches them): the P x K batch (P capped
    at the number of products) and, with clicks on, P x K / 2 click triplets."""
    t = cfg.train
    p = PKBatchSampler(data.labels, t.products_per_batch, t.images_per_product).p
    use_clicks = t.click_weight > 0 and len(data.click_triplets) > 0
    clicks = 3 * (t.products_per_batch * t.images_per_product // 2) if use_clicks else 0
    return p * t.images_per_product + clicks


def train_in_process(cfg: Config, prefix: str) -> dict[str, Any]:
    """``MetricTrainer`` for ``cfg.train.epochs`` epochs, world size 1, in this process."""
    from vsearch.runtime.training_data import load_training_set  # no Ray needed to call it

    began = time.perf_counter()
    data = load_training_set(cfg, prefix)
    load_s = time.perf_counter() - began
    torch.manual_seed(cfg.model.seed)
    network = build_network(cfg.model, len(data.category_names), 0)
    trainer = MetricTrainer(network.trainable_part, cfg.train, data)
    steps = 0
    began = time.perf_counter()
    for epoch in range(cfg.train.epochs):
        steps += trainer.train_epoch(epoch).steps
    train_s = time.perf_counter() - began
    return {
        "data": data,
        "load_s": load_s,
        "train_s": train_s,
        "samples": steps * samples_per_step(cfg, data),
    }


def train_on_ray(cfg: Config, prefix: str, data: TrainingSet) -> dict[str, Any]:
    """``fit`` with ``cfg.train.num_workers`` workers; inside a running Ray session."""
    from vsearch.runtime.training import fit

    began = time.perf_counter()
    artifact, metrics = fit(cfg, prefix, f"bench-{time.strftime('%Y%m%dT%H%M%S')}")
    fit_s = time.perf_counter() - began
    t = cfg.train
    world = t.num_workers
    steps = PKBatchSampler(
        data.labels,
        t.products_per_batch,
        t.images_per_product,
        seed=t.seed,
        rank=0,
        world_size=world,
    ).batches_per_rank()
    if int(metrics.get("steps", steps)) != steps:
        print(f"notice: rank 0 reported {metrics.get('steps')} steps an epoch, expected {steps}")
    return {
        "fit_s": fit_s,
        "train_s": float(metrics["elapsed_s"]),
        "epochs": artifact.info["epochs_done"],
        "samples": artifact.info["epochs_done"] * world * steps * samples_per_step(cfg, data),
    }


def onnx_in_process(cfg: Config, uris: list[str], model_bytes: bytes) -> dict[str, Any]:
    """Decode, preprocess and run the backbone with a bare onnxruntime session (one thread), in
    calls of as many images as the backbone takes on CPU (``OnnxBackbone.max_batch``)."""
    import onnxruntime as ort

    storage = storage_of(cfg)
    spec = backbone_spec(cfg.model.arch, cfg.model.input_size)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    began = time.perf_counter()
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    start_s = time.perf_counter() - began
    name = session.get_inputs()[0].name
    began = time.perf_counter()
    done = 0
    for start in range(0, len(uris), cfg.index.batch_size):
        chunk = uris[start : start + cfg.index.batch_size]
        images = [
            decode_image(storage.read_bytes(u), cfg.index.max_pixels, 2 * spec.input_size)
            for u in chunk
        ]
        x = spec.preprocess(images).numpy().astype(np.float32)
        step = OnnxBackbone.max_batch
        for i in range(0, len(x), step):
            done += len(session.run(None, {name: x[i : i + step]})[0])
    return {"images": done, "seconds": time.perf_counter() - began, "start_s": start_s}


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--categories", type=int, default=6)
    ap.add_argument("--products", type=int, default=10, help="per category")
    ap.add_argument("--views", type=int, default=6, help="photos per product")
    ap.add_argument("--test-views", type=int, default=2, help="of which held out")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=10, help="for both training runs")
    ap.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    ap.add_argument("--cpus-per-worker", type=float, default=0.5)
    ap.add_argument("--num-cpus", type=int, default=2, help="of the local Ray cluster")
    ap.add_argument("--images", type=int, default=200, help="feature-cache images (at most)")
    ap.add_argument("--actors", type=int, default=2, help="feature-cache actors")
    ap.add_argument("--batch-size", type=int, default=16, help="feature-cache batch")
    ap.add_argument("--onnx", type=Path, default=ONNX, help="frozen backbone file")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-cache", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        cfg = bench_config(args, tmp)
        prefix = ensure_dataset(cfg)
        ds = read_dataset(storage_of(cfg), prefix)
        header = (
            f"# Training and feature-cache benchmark\n\n"
            f"Synthetic catalogue: {args.categories} categories x {args.products} products, "
            f"{ds.catalog.num_rows} catalogue images, {ds.queries.num_rows} photos "
            f"({args.views - args.test_views} a product for training), {args.image_size} px. "
            f"Local Ray with {args.num_cpus} CPUs on a {os.cpu_count()}-core machine; "
            "torch and onnxruntime one thread per process. Run: `python benchmarks/bench_train.py"
            f"{''.join(' ' + a for a in sys.argv[1:])}`.\n"
        )
        sections = [header]

        inproc = ray_train = None
        if not args.skip_train:
            print("training in this process ...", flush=True)
            inproc = train_in_process(cfg, prefix)
        bare = model_bytes = None
        uris = (ds.catalog["image_uri"].to_pylist() + ds.queries["image_uri"].to_pylist())[
            : args.images
        ]
        onnx_cfg = None
        if not args.skip_cache:
            if args.onnx.is_file():
                model_bytes = args.onnx.read_bytes()
                onnx_model = cfg.model.model_copy(
                    update={"arch": "xception_onnx", "backbone_url": f"file://{args.onnx}"}
                )
                onnx_cfg = cfg.model_copy(update={"model": onnx_model})
                print(f"bare onnxruntime over {len(uris)} images ...", flush=True)
                bare = onnx_in_process(onnx_cfg, uris, model_bytes)
            else:
                print(f"notice: {args.onnx} is absent; skipping the feature-cache benchmark")

        cache_runs = []
        if inproc is not None or bare is not None:
            from vsearch.runtime.cluster import ray_session
            from vsearch.runtime.features import cache_feature_maps

            with ray_session(cfg.ray):
                if inproc is not None:
                    print(f"training on Ray Train, {args.workers} workers ...", flush=True)
                    ray_train = train_on_ray(cfg, prefix, inproc["data"])
                if bare is not None and onnx_cfg is not None and model_bytes is not None:
                    for label in ("first call (all new)", "second call (reuse)"):
                        print(f"feature cache, {label} ...", flush=True)
                        _, result = cache_feature_maps(onnx_cfg, uris, model_bytes)
                        cache_runs.append((label, result))

        if inproc is not None and ray_train is not None:
            base = 1000 * inproc["train_s"] / inproc["samples"]
            loop = 1000 * ray_train["train_s"] / ray_train["samples"]
            whole = 1000 * ray_train["fit_s"] / ray_train["samples"]
            rows = [
                (
                    "MetricTrainer, this process, 1 thread (baseline)",
                    str(args.epochs),
                    str(inproc["samples"]),
                    f"{inproc['train_s']:.1f}",
                    f"{base:.2f}",
                    "1.00",
                ),
                (
                    f"Ray Train, {args.workers} workers x {args.cpus_per_worker} CPU: loop",
                    str(ray_train["epochs"]),
                    str(ray_train["samples"]),
                    f"{ray_train['train_s']:.1f}",
                    f"{loop:.2f}",
                    f"{loop / base:.2f}",
                ),
                (
                    f"Ray Train, {args.workers} workers: whole `fit` (start-up included)",
                    str(ray_train["epochs"]),
                    str(ray_train["samples"]),
                    f"{ray_train['fit_s']:.1f}",
                    f"{whole:.2f}",
                    f"{whole / base:.2f}",
                ),
            ]
            sections += [
                "## (a) Training: `MetricTrainer` in one process vs Ray Train\n",
                f"Network: {cfg.model.arch} at {cfg.model.input_size} px, embed "
                f"{cfg.model.embed_dim}, head_hidden {cfg.model.head_hidden}; P x K = "
                f"{cfg.train.products_per_batch} x {cfg.train.images_per_product}, "
                f"{samples_per_step(cfg, inproc['data'])} samples a step with the click "
                f"triplets. Loading the training set in this process took "
                f"{inproc['load_s']:.2f} s (not counted). Ratio: s/1k samples over the baseline's "
                "(below 1 is faster).\n",
                "\n".join(
                    table(
                        rows,
                        ("run", "epochs", "samples", "seconds", "s / 1k samples", "ratio"),
                    )
                )
                + "\n",
            ]
        if bare is not None and cache_runs:
            bare_ips = bare["images"] / bare["seconds"]
            rows = [
                (
                    "bare onnxruntime loop, this process, 1 thread (baseline)",
                    str(bare["images"]),
                    "-",
                    f"{bare['seconds']:.1f}",
                    f"{bare_ips:.1f}",
                    "1.00",
                )
            ]
            for label, result in cache_runs:
                ips = result.computed / result.seconds if result.computed else 0.0
                rows.append(
                    (
                        f"`cache_feature_maps`, {args.actors} actors: {label}",
                        str(result.computed),
                        str(result.reused),
                        f"{result.seconds:.1f}",
                        f"{ips:.1f}" if result.computed else "-",
                        f"{ips / bare_ips:.2f}" if result.computed else "-",
                    )
                )
            sections += [
                "## (b) Feature-map cache: Ray Data vs a bare onnxruntime loop\n",
                f"Backbone: `{args.onnx.name}` (xception_onnx, 224 px, 2048 x 7 x 7 maps), "
                f"{len(uris)} images, decoded in batches of {args.batch_size}, the backbone run "
                f"{OnnxBackbone.max_batch} image(s) per call in both (the CPU setting). Both "
                "decode and preprocess the same way; the cache's seconds include Ray Data "
                "start-up, the hash pass and writing the maps; the bare loop's session creation "
                f"({bare['start_s']:.1f} s) is not counted. Ratio: images/s over the baseline's "
                "(above 1 is faster).\n",
                "\n".join(
                    table(
                        rows,
                        ("run", "computed", "reused", "seconds", "images / s", "ratio"),
                    )
                )
                + "\n",
            ]
        elif not args.skip_cache:
            sections.append(f"## (b) Feature-map cache\n\nSkipped: {args.onnx} is absent.\n")

    text = "\n".join(sections)
    print(text)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"written to {OUT}")


if __name__ == "__main__":
    main()
