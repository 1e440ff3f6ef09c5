"""Ray Train: the per-worker loop around ``MetricTrainer`` and the ``fit`` that launches it.

Checkpoints go to ``<storage>/checkpoints/<run name>``; a run started again under the same name
resumes from its last checkpoint (Ray Train's ``RunConfig(name, storage_path)``).
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import ray.train
import torch
import torch.distributed as dist
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    DataConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchConfig, TorchTrainer, prepare_model

from vsearch.config import Config
from vsearch.models.artifact import ModelArtifact, build_network
from vsearch.runtime.cluster import quiet_ray_data
from vsearch.runtime.training_data import streamed_training_set, training_datasets
from vsearch.storage.fs import Storage
from vsearch.training import MetricTrainer
from vsearch.training.distributed import all_gather_with_grad

_CKPT_FILE = "state.pt"
#: Written under ``checkpoints/<run>/`` when the ``train.fail_at_epoch`` test hook fires.
_FAULT_MARKER = "injected_failure.json"


def wants_gpu(setting: str | bool, workers: int, have: int) -> bool:
    """Whether the training workers take GPUs, given the cluster's ``have`` GPUs: ``setting``
    "auto" asks for them when there is one per worker; True requires them (a clear error if
    there are too few); False never asks."""
    if setting == "auto":
        return have >= workers
    if setting and have < workers:
        raise ValueError(
            f"train.use_gpu is true but the cluster has {have} GPU(s) for {workers} workers; "
            "set train.use_gpu to auto or false, or add GPU nodes"
        )
    return bool(setting)


def _reduce(values: list[float], op: str) -> list[float]:
    """``values`` reduced over every rank ("sum" or "max"); unchanged without a process group.
    The tensor lives on the worker's device (nccl reduces GPU tensors only)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=ray.train.torch.get_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor.cpu().tolist()


def _stop_everywhere(stop: bool) -> bool:
    """True on every rank if any rank wants to stop (keeps data-parallel ranks in lockstep)."""
    return _reduce([1.0 if stop else 0.0], "max")[0] > 0


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
    # Each worker drives the Ray Data execution of its shard: no progress lines from it either.
    quiet_ray_data()


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Body of each Ray Train worker: build, resume, train epochs, report with checkpoints."""
    torch.set_num_threads(1)
    _quiet_worker_logs()
    cfg = Config.model_validate(loop_config["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    data, counts = streamed_training_set(
        cfg, loop_config["dataset_prefix"], loop_config["kind"], loop_config["vocab"]
    )
    # The run's totals: photos are split across the workers, the catalogue is on each.
    photos, photo_skipped = _reduce([counts["photo_rows"], counts["photo_skipped"]], "sum")
    total_rows = int(photos) + counts["catalog_rows"]
    total_skipped = int(photo_skipped) + counts["catalog_skipped"]
    torch.manual_seed(cfg.model.seed)
    products = data.product_ids if cfg.train.proxy_weight > 0 else []
    # A backbone whose end trains (model.backbone_cut) builds that tail from its graph.
    tail_bytes = None
    if cfg.model.backbone_cut and cfg.model.backbone_url:
        tail_bytes = Storage(cfg.storage, cfg.storage_options).read_bytes(cfg.model.backbone_url)
    network = build_network(
        cfg.model, len(data.category_names), len(products), tail_bytes, attach_backbone=False
    )
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state = torch.load(
                os.path.join(ckpt_dir, _CKPT_FILE), map_location="cpu", weights_only=True
            )
        network.load_state_dict(state["model"])
        start_epoch = int(state["epoch"]) + 1
    model = prepare_model(network.trainable_part)
    trainer = MetricTrainer(
        model,
        cfg.train,
        data,
        rank=rank,
        world_size=world,
        gather=all_gather_with_grad,
        batches_per_rank=loop_config["batches_per_rank"],
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
            "train_images": total_rows,
            "click_triplets": len(data.click_triplets),
            "skipped_images": total_skipped,
            "start_epoch": start_epoch,
        }
        budget = cfg.train.time_budget_s
        stop = _stop_everywhere(bool(budget) and elapsed >= budget)
        save = saves_checkpoint(epoch, cfg.train.epochs, cfg.train.checkpoint_every, stop)
        if rank == 0:
            print(
                f"[train] epoch {epoch + 1}/{cfg.train.epochs} loss={stats.loss:.4f} "
                f"label={stats.label_loss:.4f} click={stats.click_loss:.4f} "
                f"category={stats.category_loss:.3f} box={stats.box_loss:.3f} "
                f"active={stats.active_fraction:.2f} {stats.images_per_s:.0f} img/s/worker "
                f"elapsed={elapsed:.0f}s",
                flush=True,
            )
        if rank == 0 and save:
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


def saves_checkpoint(epoch: int, epochs: int, every: int, stopping: bool) -> bool:
    """Whether 0-based ``epoch`` ends with a checkpoint: every ``every`` epochs, the last one,
    and the one a time budget stops at."""
    return stopping or epoch + 1 >= epochs or (epoch + 1) % every == 0


def fit(
    cfg: Config,
    dataset_prefix: str,
    run_name: str,
    map_keys: dict[str, str] | None = None,
    cache_id: str | None = None,
    backbone_sha256: str | None = None,
    image_sizes: dict[str, tuple[int, int]] | None = None,
    box_keys: dict[str, str] | None = None,
) -> tuple[ModelArtifact, dict[str, Any]]:
    """Train with ``cfg.train.num_workers`` Ray Train workers; return the artifact and metrics.

    For a frozen backbone pass ``map_keys`` (image URI -> cache key), the ``cache_id`` of its
    feature cache and its ``backbone_sha256``: the workers train the heads on cached maps.
    ``box_keys`` (image URI -> cache key of its box view) adds the box views' maps as rows.
    """
    storage = Storage(cfg.storage, cfg.storage_options)
    fs, root = storage.pyarrow_filesystem()
    datasets, batches_per_rank, vocab = training_datasets(
        cfg, dataset_prefix, map_keys, cache_id, image_sizes, box_keys
    )
    gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = wants_gpu(
        cfg.train.use_gpu if cfg.ray.use_gpus else False, cfg.train.num_workers, gpus
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg.model_dump(),
            "dataset_prefix": dataset_prefix,
            "kind": "maps" if map_keys is not None else "images",
            "batches_per_rank": batches_per_rank,
            "vocab": vocab,
        },
        # Each worker reads its own photo dataset (split on the driver) and the whole catalogue:
        # Ray Train splits none of them.
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=[]),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=f"{root}/checkpoints",
            storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            # A failed worker restarts the whole group from the last reported checkpoint.
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            # Ray Train's own INFO lines (resources requested, the worker group's ranks, the
            # process group) need no action; its warnings and errors still show. Our progress
            # lines are the workers' prints, which this does not touch.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_name!r} finished without a checkpoint")
    with result.checkpoint.as_directory() as ckpt_dir:
        state = torch.load(
            os.path.join(ckpt_dir, _CKPT_FILE), map_location="cpu", weights_only=True
        )
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
