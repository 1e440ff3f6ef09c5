"""Ray Train: the per-worker loop around ``MetricTrainer`` and the ``fit`` that launches it.

Checkpoints go to ``<storage>/checkpoints/<run name>``; a run started again under the same name
resumes from its last checkpoint (Ray Train's ``RunConfig(name, storage_path)``).
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import numpy as np
import pyarrow as pa
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer, prepare_model

from vsearch.config import Config
from vsearch.models.artifact import ModelArtifact, build_network
from vsearch.models.encoder import EncoderSpec
from vsearch.models.registry import backbone_spec
from vsearch.storage.datasets import read_dataset
from vsearch.storage.feature_cache import FeatureCache, view_key
from vsearch.storage.fs import Storage
from vsearch.storage.images import read_images
from vsearch.training import MetricTrainer, TrainingSet
from vsearch.training.dataset import stack_maps
from vsearch.training.distributed import all_gather_with_grad

_CKPT_FILE = "state.pt"
#: Written under ``checkpoints/<run>/`` when the ``train.fail_at_epoch`` test hook fires.
_FAULT_MARKER = "injected_failure.json"


def _tag_uris(table: pa.Table, tag: str) -> pa.Table:
    if not tag:
        return table
    uris = pa.array([u + tag for u in table["image_uri"].to_pylist()], pa.string())
    index = table.schema.get_field_index("image_uri")
    return table.set_column(index, table.schema.field(index), uris)


def load_training_set(
    cfg: Config,
    dataset_prefix: str,
    map_keys: dict[str, str] | None = None,
    cache_id: str | None = None,
    image_sizes: dict[str, tuple[int, int]] | None = None,
) -> TrainingSet:
    """The catalogue and the training-split photos as network inputs.

    Trainable backbones: images decoded and preprocessed. Frozen backbones (``map_keys`` given:
    image URI -> content key): their cached feature maps from ``features/<cache_id>``.
    """
    storage = Storage(cfg.storage, cfg.storage_options)
    ds = read_dataset(storage, dataset_prefix)
    train_queries = ds.queries_of("train")
    uris = ds.catalog["image_uri"].to_pylist() + train_queries["image_uri"].to_pylist()
    if map_keys is not None:
        if cache_id is None:
            raise ValueError("cached feature maps need the cache id of their backbone")
        views = cfg.model.views
        wanted = [view_key(k, v) for k in map_keys.values() for v in views]
        maps = FeatureCache(storage, cache_id).read(wanted)
        # Each view is a row of its own; the first view keeps the image's URI (so click sessions
        # and subject boxes find it), the others get "#view=<fraction>" appended.
        items: dict[str, np.ndarray | None] = {}
        catalogs, photo_tables = [], []
        for i, fraction in enumerate(views):
            tag = "" if i == 0 else f"#view={fraction:g}"
            for uri in uris:
                key = map_keys.get(uri)
                items[uri + tag] = maps.get(view_key(key, fraction)) if key else None
            catalogs.append(_tag_uris(ds.catalog, tag))
            photo_tables.append(_tag_uris(train_queries, tag))
        return TrainingSet.from_tables(
            pa.concat_tables(catalogs),
            pa.concat_tables(photo_tables),
            ds.clicks,
            items,
            stack_maps,
            "maps",
            image_sizes,
        )
    spec: EncoderSpec = backbone_spec(cfg.model.arch, cfg.model.input_size)
    # Photos are shrunk while decoding: training sees them at input_size anyway.
    images, _ = read_images(storage, uris, cfg.index.max_pixels, max_side=4 * spec.input_size)
    decoded = dict(zip(uris, images, strict=True))
    return TrainingSet.from_tables(
        ds.catalog, train_queries, ds.clicks, decoded, spec.preprocess, kind="images"
    )


def _stop_everywhere(stop: bool) -> bool:
    """True on every rank if any rank wants to stop (keeps data-parallel ranks in lockstep)."""
    if not (dist.is_available() and dist.is_initialized()):
        return stop
    flag = torch.tensor([1.0 if stop else 0.0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def _maybe_inject_failure(cfg: Config, run_name: str, rank: int, world: int, epoch: int) -> None:
    """Test hook (``train.fail_at_epoch``, off by default): the last rank kills its own process
    after training that epoch, once per run. The marker is written before the exit, so the
    restarted workers (which resume from the last checkpoint) do not fire again."""
    if cfg.train.fail_at_epoch != epoch or rank != world - 1:
        return
    storage = Storage(cfg.storage, cfg.storage_options)
    marker = f"checkpoints/{run_name}/{_FAULT_MARKER}"
    if storage.exists(marker):
        return
    storage.write_text(marker, f'{{"epoch": {epoch}, "rank": {rank}}}')
    # Ray Train takes in a report when it next polls the workers (every
    # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default), and a report not yet taken in when a
    # worker dies is lost: wait, so the restart point is the last reported epoch, not a race.
    time.sleep(3 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2")))
    print(f"[train] test hook: rank {rank} exits after epoch {epoch + 1}", flush=True)
    os._exit(1)


def _quiet_worker_logs() -> None:
    """Rank 0 prints one progress line per epoch; Ray Train's own per-report and per-checkpoint
    INFO lines on every worker (one logger is named after its file) would bury it."""
    import logging

    from ray.train.v2._internal.execution import context as train_context

    for name in ("ray.train", train_context.__file__):
        logging.getLogger(name).setLevel(logging.WARNING)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Body of each Ray Train worker: build, resume, train epochs, report with checkpoints."""
    torch.set_num_threads(1)
    _quiet_worker_logs()
    cfg = Config.model_validate(loop_config["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    data = load_training_set(
        cfg,
        loop_config["dataset_prefix"],
        loop_config["map_keys"],
        loop_config["cache_id"],
        loop_config["image_sizes"],
    )
    torch.manual_seed(cfg.model.seed)
    products = data.product_ids if cfg.train.proxy_weight > 0 else []
    network = build_network(cfg.model, len(data.category_names), len(products))
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state = torch.load(os.path.join(ckpt_dir, _CKPT_FILE), weights_only=True)
        network.load_state_dict(state["model"])
        start_epoch = int(state["epoch"]) + 1
    model = prepare_model(network.trainable_part)
    trainer = MetricTrainer(
        model, cfg.train, data, rank=rank, world_size=world, gather=all_gather_with_grad
    )
    if checkpoint is not None:
        trainer.optimizer.load_state_dict(state["optimizer"])
    began = time.perf_counter()
    for epoch in range(start_epoch, cfg.train.epochs):
        stats = trainer.train_epoch(epoch)
        _maybe_inject_failure(cfg, ctx.get_experiment_name(), rank, world, epoch)
        elapsed = time.perf_counter() - began
        metrics = {
            **stats.as_dict(),
            "elapsed_s": elapsed,
            "train_images": len(data),
            "click_triplets": len(data.click_triplets),
            "skipped_images": len(data.skipped),
            "start_epoch": start_epoch,
        }
        budget = cfg.train.time_budget_s
        stop = _stop_everywhere(bool(budget) and elapsed >= budget)
        if rank == 0:
            print(
                f"[train] epoch {epoch + 1}/{cfg.train.epochs} loss={stats.loss:.4f} "
                f"label={stats.label_loss:.4f} click={stats.click_loss:.4f} "
                f"category={stats.category_loss:.3f} box={stats.box_loss:.3f} "
                f"active={stats.active_fraction:.2f} {stats.images_per_s:.0f} img/s/worker "
                f"elapsed={elapsed:.0f}s",
                flush=True,
            )
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(
                    {
                        "model": network.state_dict(),
                        "categories": data.category_names,
                        "products": products,
                        "optimizer": trainer.optimizer.state_dict(),
                        "epoch": epoch,
                    },
                    os.path.join(tmp, _CKPT_FILE),
                )
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
        if stop:
            break


def fit(
    cfg: Config,
    dataset_prefix: str,
    run_name: str,
    map_keys: dict[str, str] | None = None,
    cache_id: str | None = None,
    backbone_sha256: str | None = None,
    image_sizes: dict[str, tuple[int, int]] | None = None,
) -> tuple[ModelArtifact, dict[str, Any]]:
    """Train with ``cfg.train.num_workers`` Ray Train workers; return the artifact and metrics.

    For a frozen backbone pass ``map_keys`` (image URI -> cache key), the ``cache_id`` of its
    feature cache and its ``backbone_sha256``: the workers train the heads on cached maps.
    """
    storage = Storage(cfg.storage, cfg.storage_options)
    fs, root = storage.pyarrow_filesystem()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg.model_dump(),
            "dataset_prefix": dataset_prefix,
            "map_keys": map_keys,
            "cache_id": cache_id,
            "image_sizes": image_sizes,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=False,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=f"{root}/checkpoints",
            storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            # A failed worker restarts the whole group from the last reported checkpoint.
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_name!r} finished without a checkpoint")
    with result.checkpoint.as_directory() as ckpt_dir:
        state = torch.load(os.path.join(ckpt_dir, _CKPT_FILE), weights_only=True)
    metrics = dict(result.metrics or {})
    info = {
        "run_name": run_name,
        "train_config": cfg.train.model_dump(),
        "dataset": dataset_prefix,
        "epochs_done": int(state["epoch"]) + 1,
        "resumed_from_epoch": metrics.get("start_epoch", 0),
        "final_loss": metrics.get("loss"),
        "train_images": metrics.get("train_images"),
        "click_triplets": metrics.get("click_triplets"),
        "skipped_images": metrics.get("skipped_images"),
        "train_seconds": metrics.get("elapsed_s"),
    }
    artifact = ModelArtifact(
        config=cfg.model,
        categories=list(state["categories"]),
        products=list(state["products"]),
        state_dict=state["model"],
        backbone_sha256=backbone_sha256,
        info=info,
    )
    return artifact, metrics
