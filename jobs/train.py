"""Job: train the search network on Ray Train, save a model version.

Trainable backbones train end to end on images; a frozen ONNX backbone first fills the feature-map
cache (Ray Data), then only the heads train, on the cached maps.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping

import numpy as np

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
from vsearch.models.embedder import Embedder
from vsearch.runtime.cluster import ray_session
from vsearch.runtime.features import CacheResult, cache_feature_maps
from vsearch.runtime.training import fit
from vsearch.storage import ModelStore
from vsearch.storage.artifacts import new_version
from vsearch.storage.datasets import read_dataset
from vsearch.storage.feature_cache import FeatureCache, box_key, round_box, view_key


def cache_maps(cfg: Config, uris: list[str], backbone: bytes, desc: str) -> tuple[str, CacheResult]:
    """Fill the feature cache for ``uris`` with a progress bar; return its id and the result."""
    with progress(len(set(uris)) * len(cfg.model.views), desc, "map") as bar:
        cache, result = cache_feature_maps(cfg, uris, backbone, bar.update)
    return cache.backbone_id, result


def cache_box_views(
    cfg: Config,
    embedder: Embedder,
    backbone: bytes,
    keys: Mapping[str, str],
    cache_id: str,
    desc: str,
    maps: Mapping[str, np.ndarray] | None = None,
) -> dict[str, str]:
    """Predict each image's subject box with ``embedder``'s heads from its cached first-view map
    (``keys``: URI -> content key; ``maps``: those maps by cache key when already read), cache
    the maps of those box views (a Ray Data job, only the missing ones) and return URI ->
    box-view cache key."""
    first = cfg.model.views[0]
    if maps is None:
        cache = FeatureCache(storage_of(cfg), cache_id)
        maps = cache.read([view_key(k, first) for k in keys.values()])
    uris = [u for u, k in keys.items() if view_key(k, first) in maps]
    boxes: dict[str, list[float]] = {}
    for start in range(0, len(uris), 256):
        chunk = uris[start : start + 256]
        predicted = embedder.boxes(np.stack([maps[view_key(keys[u], first)] for u in chunk]))
        boxes.update({u: round_box(b) for u, b in zip(chunk, predicted, strict=True)})
    with progress(len(boxes), desc, "map") as bar:
        _, result = cache_feature_maps(cfg, uris, backbone, bar.update, boxes=boxes, known=keys)
    margin = cfg.model.box_margin
    return {u: box_key(result.keys[u], boxes[u], margin) for u in uris if u in result.keys}


def main(cfg: Config, run_name: str | None = None) -> str:
    """Train; return the new model version. Re-running with the same ``run_name`` resumes.

    With ``model.box_view`` a first model (run ``<run_name>-boxes``) predicts every training
    image's subject box; the maps of those crops are cached, and the final model trains on
    every view plus the box view."""
    prefix = ensure_dataset(cfg)
    cfg, backbone = resolve_backbone(cfg)
    if cfg.model.box_view and backbone is None:
        print(
            f"notice: model.box_view needs a frozen ONNX backbone; {cfg.model.arch} trains "
            "without it",
            file=sys.stderr,
            flush=True,
        )
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"box_view": False})})
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
        digest = sha256_hex(backbone) if backbone is not None else None
        box_keys = None
        if cfg.model.box_view and backbone is not None and map_keys is not None:
            assert cache_id is not None
            epochs = cfg.train.box_stage_epochs or cfg.train.epochs
            first = cfg.model_copy(
                update={
                    "model": cfg.model.model_copy(update={"box_view": False}),
                    "train": cfg.train.model_copy(update={"epochs": epochs}),
                }
            )
            print("\n-- box view: a first model predicts the training images' subject boxes --")
            boxer, _ = fit(first, prefix, f"{run_name}-boxes", map_keys, cache_id, digest, sizes)
            box_keys = cache_box_views(
                cfg, boxer.embedder(backbone), backbone, map_keys, cache_id, "box views (train)"
            )
            rows["box views cached (train)"] = len(box_keys)
            print("-- box view: the final model, on every view and the box view --")
        artifact, metrics = fit(cfg, prefix, run_name, map_keys, cache_id, digest, sizes, box_keys)
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
    box = " + box view" if cfg.model.box_view else ""
    if cfg.model.backbone_cut:
        return f" (frozen up to {cfg.model.backbone_cut}; the rest and the heads trained){box}"
    return f" (frozen, heads trained){box}"
