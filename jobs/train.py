"""Job: train the search network on Ray Train, save a model version.

Trainable backbones train end to end on images; a frozen ONNX backbone first fills the feature-map
cache (Ray Data), then only the heads train, on the cached maps.
"""

from __future__ import annotations

import time

from jobs.common import (
    dataset_prefix,
    ensure_dataset,
    print_summary,
    progress,
    resolve_backbone,
    storage_of,
)
from vsearch.config import Config
from vsearch.models.artifact import sha256_hex
from vsearch.runtime.cluster import ray_session
from vsearch.runtime.features import CacheResult, cache_feature_maps
from vsearch.runtime.training import fit
from vsearch.storage import ModelStore
from vsearch.storage.artifacts import new_version
from vsearch.storage.datasets import read_dataset


def cache_maps(cfg: Config, uris: list[str], backbone: bytes, desc: str) -> tuple[str, CacheResult]:
    """Fill the feature cache for ``uris`` with a progress bar; return its id and the result."""
    with progress(len(set(uris)) * len(cfg.model.views), desc, "map") as bar:
        cache, result = cache_feature_maps(cfg, uris, backbone, bar.update)
    return cache.backbone_id, result


def main(cfg: Config, run_name: str | None = None) -> str:
    """Train; return the new model version. Re-running with the same ``run_name`` resumes."""
    prefix = ensure_dataset(cfg)
    cfg, backbone = resolve_backbone(cfg)
    run_name = run_name or new_version("run-")
    started = time.perf_counter()
    rows: dict[str, object] = {}
    with ray_session(cfg.ray):
        map_keys = cache_id = sizes = None
        if backbone is not None:
            ds = read_dataset(storage_of(cfg), dataset_prefix(cfg))
            uris = ds.catalog["image_uri"].to_pylist()
            uris += ds.queries_of("train")["image_uri"].to_pylist()
            cache_id, cached = cache_maps(cfg, uris, backbone, "feature maps (train)")
            map_keys, sizes = cached.keys, cached.sizes
            rows = {
                "feature maps computed / reused": f"{cached.computed} / {cached.reused}",
                "feature cache (maps/s incl. start-up)": cached.computed
                / max(cached.seconds, 1e-9),
            }
        artifact, metrics = fit(
            cfg,
            prefix,
            run_name,
            map_keys,
            cache_id,
            sha256_hex(backbone) if backbone is not None else None,
            sizes,
        )
    version = ModelStore(storage_of(cfg)).save(artifact, backbone_bytes=backbone)
    print_summary(
        "train",
        {
            "model version": version,
            "backbone": cfg.model.arch + _trained_part(cfg, backbone is not None),
            "run (resume with --run-name)": run_name,
            "workers": cfg.train.num_workers,
            **rows,
            "epochs done": artifact.info["epochs_done"],
            "resumed from epoch": artifact.info["resumed_from_epoch"],
            "training rows (image views)": metrics.get("train_images", 0),
            "click triplets": metrics.get("click_triplets", 0),
            "skipped images": metrics.get("skipped_images", 0),
            "final loss": metrics.get("loss", float("nan")),
            "wall time (s)": time.perf_counter() - started,
        },
    )
    return version


def _trained_part(cfg: Config, onnx: bool) -> str:
    if not onnx:
        return ""
    if cfg.model.backbone_cut:
        return f" (frozen up to {cfg.model.backbone_cut}; the rest and the heads trained)"
    return " (frozen, heads trained)"
