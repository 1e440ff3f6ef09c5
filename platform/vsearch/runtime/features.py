"""Ray Data job of the feature-map cache: hash every image, run the frozen backbone (actor pool)
on those not cached yet, append the maps to ``vsearch.storage.feature_cache``.

``ImageHasher`` and ``MapEncoder`` are plain callables on dict batches, tested without Ray.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray.data
import torch
from ray.data import ActorPoolStrategy

from vsearch.config import Config
from vsearch.imaging import ImageDecodeError, decode_image
from vsearch.models.encoder import run_backbone
from vsearch.models.onnx_backbone import backbone_id
from vsearch.models.registry import create_backbone
from vsearch.storage.feature_cache import FeatureCache, content_key
from vsearch.storage.fs import Storage


class ImageHasher:
    """Batch ``{"uri"}`` -> ``{"uri", "key", "error"}``: the content key of each image's bytes
    (empty with an ``error`` such as ``missing: ...`` when it cannot be read)."""

    def __init__(self, storage_root: str, storage_options: dict[str, Any]) -> None:
        self.storage = Storage(storage_root, storage_options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys, errors = [], []
        for uri in batch["uri"]:
            try:
                keys.append(content_key(self.storage.read_bytes(str(uri))))
                errors.append("")
            except OSError as exc:
                keys.append("")
                errors.append(f"missing: {exc}")
        return {
            "uri": np.asarray(batch["uri"], dtype=object),
            "key": np.asarray(keys, dtype=object),
            "error": np.asarray(errors, dtype=object),
        }


class MapEncoder:
    """Batch ``{"uri", "key"}`` -> ``{"key", "map" (n, C, g, g) float16, "error"}``: decodes each
    image and runs the frozen backbone; undecodable images get a zero map and an ``error``."""

    def __init__(
        self,
        storage_root: str,
        storage_options: dict[str, Any],
        arch: str,
        backbone_url: str,
        max_pixels: int,
    ) -> None:
        torch.set_num_threads(1)
        self.storage = Storage(storage_root, storage_options)
        self.backbone = create_backbone(arch, 0, self.storage.read_bytes(backbone_url))
        self.max_pixels = max_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.backbone.spec
        images, errors = [], []
        for uri in batch["uri"]:
            try:
                data = self.storage.read_bytes(str(uri))
                images.append(decode_image(data, self.max_pixels, 2 * spec.input_size))
                errors.append("")
            except OSError as exc:
                images.append(None)
                errors.append(f"missing: {exc}")
            except ImageDecodeError as exc:
                images.append(None)
                errors.append(str(exc))
        good = [i for i, img in enumerate(images) if img is not None]
        maps = np.zeros((len(images), spec.channels, spec.grid, spec.grid), dtype=np.float16)
        if good:
            maps[good] = run_backbone(self.backbone, [images[i] for i in good])
        return {
            "key": np.asarray(batch["key"], dtype=object),
            "map": maps,
            "error": np.asarray(errors, dtype=object),
        }


@dataclass
class CacheResult:
    """``keys`` maps each readable URI to its content key; ``computed`` maps were new,
    ``reused`` already cached; ``errors`` maps URI -> why it has no map."""

    keys: dict[str, str]
    computed: int
    reused: int
    seconds: float
    errors: dict[str, str] = field(default_factory=dict)

    def error_counts(self) -> dict[str, int]:
        return dict(Counter(e.split(":", 1)[0] for e in self.errors.values()))


def cache_feature_maps(
    cfg: Config,
    uris: list[str],
    backbone_bytes: bytes,
    progress: Callable[[int], None] | None = None,
) -> tuple[FeatureCache, CacheResult]:
    """Make sure every image of ``uris`` has its map in the cache of ``cfg.model``'s backbone."""
    import time

    started = time.perf_counter()
    storage = Storage(cfg.storage, cfg.storage_options)
    cache = FeatureCache(storage, backbone_id(cfg.model.arch, backbone_bytes))
    actors = cfg.index.embed_actors
    unique = sorted(set(uris))
    hashed = ray.data.from_items([{"uri": u} for u in unique]).map_batches(
        ImageHasher,
        fn_constructor_kwargs={"storage_root": cfg.storage, "storage_options": cfg.storage_options},
        batch_size=256,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=1),
        num_cpus=cfg.index.cpus_per_actor,
    )
    keys: dict[str, str] = {}
    errors: dict[str, str] = {}
    for batch in hashed.iter_batches(batch_size=None, batch_format="numpy"):
        for uri, key, err in zip(batch["uri"], batch["key"], batch["error"], strict=True):
            if err:
                errors[str(uri)] = str(err)
            else:
                keys[str(uri)] = str(key)
    cached = cache.keys()
    todo: dict[str, str] = {}
    for uri, key in keys.items():
        if key not in cached:
            todo.setdefault(key, uri)
    reused = len(set(keys.values()) - set(todo))
    if progress is not None:
        progress(len(unique) - len(todo))
    computed = 0
    if todo:
        rows = [{"uri": uri, "key": key} for key, uri in todo.items()]
        encoded = (
            ray.data.from_items(rows)
            .repartition(max(1, min(len(rows) // cfg.index.batch_size + 1, 8 * actors)))
            .map_batches(
                MapEncoder,
                fn_constructor_kwargs={
                    "storage_root": cfg.storage,
                    "storage_options": cfg.storage_options,
                    "arch": cfg.model.arch,
                    "backbone_url": cfg.model.backbone_url,
                    "max_pixels": cfg.index.max_pixels,
                },
                batch_size=cfg.index.batch_size,
                batch_format="numpy",
                compute=ActorPoolStrategy(size=actors),
                num_cpus=cfg.index.cpus_per_actor,
            )
        )
        uri_of = {key: uri for key, uri in todo.items()}
        for batch in encoded.iter_batches(batch_size=None, batch_format="numpy"):
            ok = np.asarray([not e for e in batch["error"]], dtype=bool)
            for key, err in zip(batch["key"], batch["error"], strict=True):
                if err:
                    errors[uri_of[str(key)]] = str(err)
            cache.write([str(k) for k in batch["key"][ok]], np.asarray(batch["map"])[ok])
            computed += int(ok.sum())
            if progress is not None:
                progress(len(ok))
    for uri in errors:
        keys.pop(uri, None)
    elapsed = time.perf_counter() - started
    return cache, CacheResult(keys, computed, reused, elapsed, errors)
