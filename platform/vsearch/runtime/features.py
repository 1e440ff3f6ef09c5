"""Ray Data job of the feature-map cache: hash every image, run the frozen backbone (actor pool)
on those not cached yet, append the maps to ``vsearch.storage.feature_cache``.

``ImageHasher`` and ``MapEncoder`` are plain callables on dict batches, tested without Ray.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray.data
import torch
from ray.data import ActorPoolStrategy

from vsearch.config import Config
from vsearch.imaging import (
    ImageDecodeError,
    box_crop,
    centre_crop,
    decode_image,
    decode_side,
    image_size,
)
from vsearch.models.encoder import run_backbone
from vsearch.models.onnx_backbone import backbone_id
from vsearch.models.registry import create_backbone
from vsearch.runtime.cluster import embedding_gpus
from vsearch.storage.feature_cache import (
    FeatureCache,
    box_key,
    content_key,
    round_box,
    view_key,
)
from vsearch.storage.fs import Storage


class ImageHasher:
    """Batch ``{"uri"}`` -> ``{"uri", "key", "width", "height", "error"}``: the content key of
    each image's bytes and its size from the header (empty / 0 with an ``error`` such as
    ``missing: ...`` when it cannot be read)."""

    def __init__(self, storage_root: str, storage_options: dict[str, Any]) -> None:
        self.storage = Storage(storage_root, storage_options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys, sizes, errors = [], [], []
        for uri in batch["uri"]:
            try:
                data = self.storage.read_bytes(str(uri))
            except OSError as exc:
                keys.append("")
                sizes.append((0, 0))
                errors.append(f"missing: {exc}")
                continue
            keys.append(content_key(data))
            sizes.append(image_size(data))
            errors.append("")
        return {
            "uri": np.asarray(batch["uri"], dtype=object),
            "key": np.asarray(keys, dtype=object),
            "width": np.asarray([w for w, _ in sizes], dtype=np.int64),
            "height": np.asarray([h for _, h in sizes], dtype=np.int64),
            "error": np.asarray(errors, dtype=object),
        }


class MapEncoder:
    """Batch ``{"uri", "key"}`` -> ``{"key", "map" (m, C, g, g) float16, "error"}`` with one row
    per image and view (``m = n * len(views)``, keys from ``view_key``): decodes each image and
    runs the frozen backbone on every view; undecodable images get zero maps and an ``error``.

    With ``box_margin`` the batch also has ``"box"`` (fractions, rounded by ``round_box``) and
    ``"key"`` is already each row's box-view key: one map per row, of ``box_crop``."""

    def __init__(
        self,
        storage_root: str,
        storage_options: dict[str, Any],
        arch: str,
        backbone_url: str,
        max_pixels: int,
        views: list[float] | None = None,
        cut: str | None = None,
        box_margin: float | None = None,
    ) -> None:
        torch.set_num_threads(1)
        self.storage = Storage(storage_root, storage_options)
        self.backbone = create_backbone(arch, 0, self.storage.read_bytes(backbone_url), cut=cut)
        self.max_pixels = max_pixels
        self.views = list(views or [1.0])
        self.box_margin = box_margin

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.backbone.spec
        images, errors = [], []
        for uri in batch["uri"]:
            try:
                data = self.storage.read_bytes(str(uri))
                side = decode_side(spec.input_size, box_view=self.box_margin is not None)
                images.append(decode_image(data, self.max_pixels, side))
                errors.append("")
            except OSError as exc:
                images.append(None)
                errors.append(f"missing: {exc}")
            except ImageDecodeError as exc:
                images.append(None)
                errors.append(str(exc))
        good = [i for i, img in enumerate(images) if img is not None]
        if self.box_margin is not None:
            maps = np.zeros((len(images), spec.channels, spec.grid, spec.grid), dtype=np.float16)
            if good:
                crops = [box_crop(images[i], batch["box"][i], self.box_margin) for i in good]
                maps[good] = run_backbone(self.backbone, crops)  # type: ignore[arg-type]
            return {
                "key": np.asarray([str(k) for k in batch["key"]], dtype=object),
                "map": maps,
                "error": np.asarray(errors, dtype=object),
            }
        keys, out_errors, blocks = [], [], []
        for fraction in self.views:
            maps = np.zeros((len(images), spec.channels, spec.grid, spec.grid), dtype=np.float16)
            if good:
                crops = [centre_crop(images[i], fraction) for i in good]  # type: ignore[arg-type]
                maps[good] = run_backbone(self.backbone, crops)
            blocks.append(maps)
            keys += [view_key(str(k), fraction) for k in batch["key"]]
            out_errors += errors
        return {
            "key": np.asarray(keys, dtype=object),
            "map": np.concatenate(blocks),
            "error": np.asarray(out_errors, dtype=object),
        }


@dataclass
class CacheResult:
    """``keys`` maps each readable URI to its content key; ``computed`` maps (one per image and
    view) were new, ``reused`` already cached; ``sizes`` maps URI -> (width, height) of the stored image (0, 0
    when its header is unreadable); ``errors`` maps URI -> why it has no map."""

    keys: dict[str, str]
    sizes: dict[str, tuple[int, int]]
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
    boxes: Mapping[str, Sequence[float]] | None = None,
    known: Mapping[str, str] | None = None,
) -> tuple[FeatureCache, CacheResult]:
    """Make sure every image of ``uris`` has the maps of all ``cfg.model.views`` in the cache of
    ``cfg.model``'s backbone; with ``boxes`` (URI -> box, fractions), the maps of those box views
    (``cfg.model.box_margin``) instead. ``known`` (URI -> content key, from an earlier call)
    skips hashing the images again (``sizes`` is then empty)."""
    started = time.perf_counter()
    storage = Storage(cfg.storage, cfg.storage_options)
    cache = FeatureCache(
        storage, backbone_id(cfg.model.arch, backbone_bytes, cfg.model.backbone_cut)
    )
    keys: dict[str, str] = {}
    sizes: dict[str, tuple[int, int]] = {}
    errors: dict[str, str] = {}
    if known is not None:
        keys = {u: known[u] for u in set(uris) if u in known}
    else:
        _hash_images(cfg, sorted(set(uris)), keys, sizes, errors)
    cached = cache.keys()
    margin = cfg.model.box_margin
    # Passes of rows {"uri", "key"[, "box"]} still to encode: one per centre-crop view (adding a
    # view to a model computes only that view), or one of box views.
    passes: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    wanted: set[str] = set()
    if boxes is None:
        for fraction in cfg.model.views:
            todo: dict[str, str] = {}
            for uri, key in keys.items():
                wanted.add(view_key(key, fraction))
                if view_key(key, fraction) not in cached:
                    todo.setdefault(key, uri)
            rows = [{"uri": uri, "key": key} for key, uri in todo.items()]
            passes.append(({"views": [fraction]}, rows))
    else:
        todo_boxes: dict[str, dict[str, Any]] = {}
        for uri, key in keys.items():
            if uri not in boxes:
                continue
            box = round_box(boxes[uri])
            name = box_key(key, box, margin)
            wanted.add(name)
            if name not in cached:
                todo_boxes.setdefault(name, {"uri": uri, "key": name, "box": box})
        passes.append(({"box_margin": margin}, list(todo_boxes.values())))
    reused = len(wanted & cached)
    if progress is not None:
        progress(reused)
    computed = 0
    for encoder_args, rows in passes:
        if rows:
            computed += _encode(cfg, rows, encoder_args, cache, errors, progress)
    for uri in errors:
        keys.pop(uri, None)
    elapsed = time.perf_counter() - started
    return cache, CacheResult(keys, sizes, computed, reused, elapsed, errors)


def _hash_images(
    cfg: Config,
    uris: list[str],
    keys: dict[str, str],
    sizes: dict[str, tuple[int, int]],
    errors: dict[str, str],
) -> None:
    """Content key and header size of every image (``ImageHasher`` on Ray Data), into ``keys``
    and ``sizes``; why an image cannot be read, into ``errors``."""
    hashed = ray.data.from_items([{"uri": u} for u in uris]).map_batches(
        ImageHasher,
        fn_constructor_kwargs={"storage_root": cfg.storage, "storage_options": cfg.storage_options},
        batch_size=256,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=1),
        num_cpus=cfg.index.cpus_per_actor,
    )
    for batch in hashed.iter_batches(batch_size=None, batch_format="numpy"):
        columns = (batch["uri"], batch["key"], batch["width"], batch["height"], batch["error"])
        for uri, key, width, height, err in zip(*columns, strict=True):
            if err:
                errors[str(uri)] = str(err)
            else:
                keys[str(uri)] = str(key)
                sizes[str(uri)] = (int(width), int(height))


def _encode(
    cfg: Config,
    rows: list[dict[str, Any]],
    encoder_args: dict[str, Any],
    cache: FeatureCache,
    errors: dict[str, str],
    progress: Callable[[int], None] | None,
) -> int:
    """Run ``MapEncoder`` (an actor pool) over ``rows`` and append the maps to ``cache``;
    unreadable images go to ``errors``. Returns the maps written."""
    actors = cfg.index.embed_actors
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
                "cut": cfg.model.backbone_cut,
                **encoder_args,
            },
            batch_size=cfg.index.batch_size,
            batch_format="numpy",
            compute=ActorPoolStrategy(size=actors),
            num_cpus=cfg.index.cpus_per_actor,
            num_gpus=embedding_gpus(cfg.index, enabled=cfg.ray.use_gpus),
            memory=cfg.index.backbone_actor_memory_mb * 2**20,
        )
    )
    views = encoder_args.get("views")
    uri_of = {(view_key(row["key"], views[0]) if views else row["key"]): row["uri"] for row in rows}
    written = 0
    for batch in encoded.iter_batches(batch_size=None, batch_format="numpy"):
        ok = np.asarray([not e for e in batch["error"]], dtype=bool)
        for key, err in zip(batch["key"], batch["error"], strict=True):
            if err:
                errors[uri_of[str(key)]] = str(err)
        cache.write([str(k) for k in batch["key"][ok]], np.asarray(batch["map"])[ok])
        written += int(ok.sum())
        if progress is not None:
            progress(len(ok))
    return written
