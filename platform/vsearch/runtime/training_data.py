"""Training data streamed from Ray Data into the Ray Train workers.

The driver builds the training rows (one per image and view; names, labels and boxes, no pixels)
and hands Ray Train the datasets: ``catalog`` (one image per product, given whole to every worker
so each batch can pair a product's photos with its catalogue image) and one ``train-<rank>`` per
worker (its share of the photos, dealt by ``split_by_source``: a fixed split, where Ray Data's
``streaming_split`` would hand blocks to whichever worker asks first and so train each run on
different shards). Ray Data's read tasks attach each row's input: a cached backbone map (frozen
backbones: only the cache parts holding the wanted keys are opened) or a decoded, preprocessed
image (trainable backbones). A worker therefore decodes nothing itself and holds only its share
of the photos, not the whole set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import ray
import ray.data
import ray.train

from vsearch.config import Config
from vsearch.imaging import (
    ImageDecodeError,
    box_window,
    centre_crop,
    decode_image,
    image_size,
    into_window,
)
from vsearch.models.miners import PKBatchSampler
from vsearch.models.registry import backbone_spec
from vsearch.storage.datasets import read_dataset
from vsearch.storage.feature_cache import FeatureCache, box_of_key, view_key
from vsearch.storage.fs import Storage
from vsearch.training.dataset import TrainingSet, from_streamed_rows, split_by_source, view_tag


def training_rows(
    catalog: pa.Table,
    photos: pa.Table,
    views: Sequence[float] = (1.0,),
    keys: Mapping[str, str] | None = None,
    sizes: Mapping[str, tuple[int, int]] | None = None,
    box_keys: Mapping[str, str] | None = None,
    refine_box: bool = False,
) -> tuple[pa.Table, pa.Table]:
    """The rows a training job streams to its workers: ``(catalogue rows, photo rows)``.

    One row per image and view, with the columns ``image_uri`` (tagged per ``view_tag``),
    ``source_uri`` (the stored image), ``view`` (its crop fraction), ``key`` (the feature
    cache's key of that view, from ``keys``: source URI -> content key; "" without a cache, and
    images without a key are left out), ``product_id``, ``category``, ``box`` (pixels of the
    stored image; four NaNs where unknown, on catalogue rows and on every view but the first,
    whose crop moves it: never null, so that every block of rows has the same column type) and
    ``width``/``height`` of the stored image (from ``sizes``, 0 when unknown). The rows carry
    no pixels: readers attach the inputs. ``box_keys`` (source URI
    -> cache key of its box view) adds one more row per image for the box view (``view`` 0,
    URI tagged ``#view=box``), read from the cache like the others. With ``refine_box`` that
    row carries the subject's box inside the crop (``vsearch.imaging.into_window``), in the
    column's units: fractions of the crop times the stored image's width and height.
    """
    sizes = sizes or {}

    def rows_of(table: pa.Table, with_box: bool) -> pa.Table:
        uris = table["image_uri"].to_pylist()
        boxes = table["box"].to_pylist() if with_box else [None] * len(uris)
        items = zip(
            uris,
            table["product_id"].to_pylist(),
            table["category"].to_pylist(),
            boxes,
            strict=True,
        )
        rows: list[dict[str, Any]] = []
        for uri, product, category, box in items:
            if keys is not None and uri not in keys:
                continue
            width, height = sizes.get(uri, (0, 0))
            for index, fraction in enumerate(views):
                rows.append(
                    {
                        "image_uri": uri + view_tag(index, fraction),
                        "source_uri": uri,
                        "view": float(fraction),
                        "key": view_key(keys[uri], fraction) if keys is not None else "",
                        "product_id": product,
                        "category": category,
                        "box": _NO_BOX if box is None or index else [float(b) for b in box],
                        "width": int(width),
                        "height": int(height),
                    }
                )
            if box_keys is not None and uri in box_keys:
                rows.append(
                    {
                        "image_uri": f"{uri}#view=box",
                        "source_uri": uri,
                        "view": 0.0,
                        "key": box_keys[uri],
                        "product_id": product,
                        "category": category,
                        "box": _box_in_view(box, box_keys[uri], width, height)
                        if refine_box
                        else _NO_BOX,
                        "width": int(width),
                        "height": int(height),
                    }
                )
        return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)

    return rows_of(catalog, False), rows_of(photos, True)


#: The box of a row without one (a null would make blocks of such rows a different type).
_NO_BOX = [float("nan")] * 4


def _box_in_view(box: Sequence[float] | None, key: str, width: int, height: int) -> list[float]:
    """The subject ``box`` (pixels of a ``width`` x ``height`` image) inside the box view that
    cache ``key`` names, as fractions of the crop times ``width`` and ``height``."""
    named = box_of_key(key)
    if box is None or named is None or not (width and height):
        return _NO_BOX
    crop, margin = named
    window = box_window(height, width, crop, margin)
    x0, y0, x1, y1 = into_window(
        [box[0] / width, box[1] / height, box[2] / width, box[3] / height], window
    )
    if x1 - x0 <= 0 or y1 - y0 <= 0:  # the subject lies outside the crop
        return _NO_BOX
    return [x0 * width, y0 * height, x1 * width, y1 * height]


#: Columns of ``training_rows``.
ROW_SCHEMA = pa.schema(
    [
        ("image_uri", pa.string()),
        ("source_uri", pa.string()),
        ("view", pa.float32()),
        ("key", pa.string()),
        ("product_id", pa.string()),
        ("category", pa.string()),
        ("box", pa.list_(pa.float32())),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)


class MapRowReader:
    """Ray Data batch UDF: rows with ``key`` and ``part`` -> the same rows with ``input`` (the
    cached ``(C, g, g) float16`` map) and ``error`` ("missing: ..." where the cache lacks it)."""

    def __init__(self, storage_root: str, storage_options: dict[str, Any], cache_id: str) -> None:
        self.cache = FeatureCache(Storage(storage_root, storage_options), cache_id)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys = [str(k) for k in batch["key"]]
        parts = [str(p) for p in batch["part"]]
        found: dict[str, np.ndarray] = {}
        for part in sorted(set(parts) - {""}):
            found.update(
                self.cache.read_part(
                    part, [k for k, p in zip(keys, parts, strict=True) if p == part]
                )
            )
        shape = next(iter(found.values())).shape if found else (0,)
        maps = np.zeros((len(keys), *shape), dtype=np.float16)
        errors = []
        for i, key in enumerate(keys):
            if key in found:
                maps[i] = found[key]
                errors.append("")
            else:
                errors.append(f"missing: no cached map {key}")
        return {**batch, "input": maps, "error": np.asarray(errors, dtype=object)}


class ImageRowReader:
    """Ray Data batch UDF: rows with ``source_uri`` and ``view`` -> the same rows with ``input``
    (the view cropped, resized and normalised for the backbone: ``(3, s, s) float32``), the
    stored image's ``width``/``height`` and ``error`` (reason where it could not be read)."""

    def __init__(
        self,
        storage_root: str,
        storage_options: dict[str, Any],
        arch: str,
        input_size: int,
        max_pixels: int,
    ) -> None:
        self.storage = Storage(storage_root, storage_options)
        self.spec = backbone_spec(arch, input_size)
        self.max_pixels = max_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        s = self.spec.input_size
        inputs = np.zeros((len(batch["source_uri"]), 3, s, s), dtype=np.float32)
        widths = np.asarray(batch["width"], dtype=np.int32).copy()
        heights = np.asarray(batch["height"], dtype=np.int32).copy()
        errors = []
        for i, (uri, fraction) in enumerate(zip(batch["source_uri"], batch["view"], strict=True)):
            try:
                data = self.storage.read_bytes(str(uri))
                widths[i], heights[i] = image_size(data)
                image = decode_image(data, self.max_pixels, 4 * s)
            except OSError as exc:
                errors.append(f"missing: {exc}")
                continue
            except ImageDecodeError as exc:
                errors.append(str(exc))
                continue
            inputs[i] = self.spec.preprocess([centre_crop(image, float(fraction))])[0].numpy()
            errors.append("")
        return {
            **batch,
            "input": inputs,
            "width": widths,
            "height": heights,
            "error": np.asarray(errors, dtype=object),
        }


def _rows_and_reader(
    cfg: Config,
    dataset_prefix: str,
    map_keys: Mapping[str, str] | None,
    cache_id: str | None,
    image_sizes: Mapping[str, tuple[int, int]] | None,
    box_keys: Mapping[str, str] | None = None,
) -> tuple[pa.Table, pa.Table, type, dict[str, Any]]:
    """Catalogue rows, photo rows, and the reader (class, constructor arguments) that attaches
    their inputs."""
    storage = Storage(cfg.storage, cfg.storage_options)
    ds = read_dataset(storage, dataset_prefix)
    catalog_rows, photo_rows = training_rows(
        ds.catalog,
        ds.queries_of("train"),
        cfg.model.views,
        map_keys,
        image_sizes,
        box_keys,
        refine_box=cfg.model.refine_box,
    )
    where = {"storage_root": cfg.storage, "storage_options": cfg.storage_options}
    if map_keys is None:
        args = {"arch": cfg.model.arch, "input_size": cfg.model.input_size}
        return (
            catalog_rows,
            photo_rows,
            ImageRowReader,
            {**where, **args, "max_pixels": cfg.index.max_pixels},
        )
    if cache_id is None:
        raise ValueError("cached feature maps need the cache id of their backbone")
    located = FeatureCache(storage, cache_id).locate(
        catalog_rows["key"].to_pylist() + photo_rows["key"].to_pylist()
    )

    def with_part(table: pa.Table) -> pa.Table:
        parts = pa.array([located.get(k, "") for k in table["key"].to_pylist()], pa.string())
        # Rows of one part side by side: each read batch opens few parts.
        return table.append_column("part", parts).sort_by("part")

    return (
        with_part(catalog_rows),
        with_part(photo_rows),
        MapRowReader,
        {**where, "cache_id": cache_id},
    )


def _attach_inputs(
    batch: dict[str, np.ndarray], reader: type, reader_args: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Ray Data task: one block of rows with their inputs attached by ``reader``."""
    return reader(**reader_args)(batch)


def vocabularies(catalog_rows: pa.Table, photo_rows: pa.Table) -> dict[str, list[str]]:
    """The products and categories of the whole set, sorted: every worker labels its shard with
    these, so that labels and the category head agree across workers."""
    return {
        name: sorted(set(catalog_rows[column].to_pylist()) | set(photo_rows[column].to_pylist()))
        for name, column in (("product_ids", "product_id"), ("category_names", "category"))
    }


def _epoch_batches(cfg: Config, catalog_rows: pa.Table, photo_rows: pa.Table) -> int:
    """P x K batches per worker and epoch, from the whole set (every worker runs as many)."""
    return PKBatchSampler.natural_batches(
        catalog_rows.num_rows + photo_rows.num_rows,
        len(vocabularies(catalog_rows, photo_rows)["product_ids"]),
        cfg.train.products_per_batch,
        cfg.train.images_per_product,
        cfg.train.num_workers,
    )


def training_datasets(
    cfg: Config,
    dataset_prefix: str,
    map_keys: Mapping[str, str] | None = None,
    cache_id: str | None = None,
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
    box_keys: Mapping[str, str] | None = None,
) -> tuple[dict[str, ray.data.Dataset], int, dict[str, list[str]]]:
    """``({"catalog": ..., "train-0": ..., "train-1": ...}, batches per worker and epoch,
    vocabularies)`` for ``fit``: one photo dataset per worker of ``cfg.train.num_workers``.

    With ``map_keys`` (URI -> content key) and ``cache_id`` the rows read cached maps of a
    frozen backbone; without, they decode images. The epoch's length is computed here, from
    the whole set, so that every worker (holding a different shard) runs as many steps.
    """
    catalog_rows, photo_rows, reader, reader_args = _rows_and_reader(
        cfg, dataset_prefix, map_keys, cache_id, image_sizes, box_keys
    )
    train = cfg.train

    def dataset(table: pa.Table) -> ray.data.Dataset:
        # Blocks of read_batch_size rows, made here (a repartition would need whole CPUs that the
        # training workers hold); each read task attaches one block's inputs.
        step = train.read_batch_size
        blocks = [table.slice(i, step) for i in range(0, table.num_rows, step)] or [table]
        return ray.data.from_arrow(blocks).map_batches(
            _attach_inputs,
            fn_kwargs={"reader": reader, "reader_args": reader_args},
            batch_size=None,
            batch_format="numpy",
            num_cpus=train.read_cpus,
            compute=ray.data.TaskPoolStrategy(size=min(train.read_tasks, len(blocks))),
        )

    batches = _epoch_batches(cfg, catalog_rows, photo_rows)
    datasets = {"catalog": dataset(catalog_rows)}
    for rank, rows in enumerate(split_by_source(photo_rows, train.num_workers)):
        datasets[photo_shard(rank)] = dataset(rows)
    return datasets, batches, vocabularies(catalog_rows, photo_rows)


def _numpy_batch(table: pa.Table) -> dict[str, np.ndarray]:
    """A table as Ray Data's numpy batch format has it (lists and strings as object arrays)."""
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        column = table[name]
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            out[name] = column.to_numpy()
        else:
            values = np.empty(len(column), dtype=object)
            for i, value in enumerate(column.to_pylist()):
                values[i] = value
            out[name] = values
    return out


def load_training_set(
    cfg: Config,
    dataset_prefix: str,
    map_keys: Mapping[str, str] | None = None,
    cache_id: str | None = None,
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
) -> TrainingSet:
    """The whole training set in this process, through the same rows and readers as the
    streamed datasets (no Ray): for single-process baselines and tests."""
    catalog_rows, photo_rows, reader, reader_args = _rows_and_reader(
        cfg, dataset_prefix, map_keys, cache_id, image_sizes
    )
    read = reader(**reader_args)
    batches = [[read(_numpy_batch(rows))] for rows in (catalog_rows, photo_rows)]
    clicks = read_dataset(Storage(cfg.storage, cfg.storage_options), dataset_prefix).clicks
    kind = "images" if map_keys is None else "maps"
    vocab = vocabularies(catalog_rows, photo_rows)
    return from_streamed_rows(batches[0], batches[1], clicks, kind, **vocab)


def photo_shard(rank: int) -> str:
    """The name of the dataset holding worker ``rank``'s photo rows."""
    return f"train-{rank}"


def _collect(name: str) -> list[dict[str, np.ndarray]]:
    shard = ray.train.get_dataset_shard(name)
    if shard is None:
        raise RuntimeError(f"the training run was started without a {name!r} dataset")
    return list(shard.iter_batches(batch_size=256, batch_format="numpy"))


def streamed_training_set(
    cfg: Config,
    dataset_prefix: str,
    kind: Literal["images", "maps"],
    vocab: Mapping[str, Sequence[str]] | None = None,
) -> tuple[TrainingSet, dict[str, int]]:
    """Inside a Ray Train worker: this worker's photo rows and every catalogue row, read from
    the run's datasets, with the click log (read from storage) as a ``TrainingSet``; and the
    counts of photo rows read and skipped here (summed over workers, they give the run's)."""
    clicks = read_dataset(Storage(cfg.storage, cfg.storage_options), dataset_prefix).clicks
    catalog = _collect("catalog")
    photos = _collect(photo_shard(ray.train.get_context().get_world_rank()))
    counts = {
        "catalog_rows": sum(len(b["image_uri"]) for b in catalog),
        "catalog_skipped": sum(int(bool(e)) for b in catalog for e in b["error"]),
        "photo_rows": sum(len(b["image_uri"]) for b in photos),
        "photo_skipped": sum(int(bool(e)) for b in photos for e in b["error"]),
    }
    return from_streamed_rows(catalog, photos, clicks, kind, **dict(vocab or {})), counts
