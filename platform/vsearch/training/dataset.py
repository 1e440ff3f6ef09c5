"""``TrainingSet``: network inputs (decoded images or cached backbone maps) with product labels,
categories, subject boxes and click triplets, held in memory by one training worker."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import torch

from vsearch.models.miners import mine_click_triplets


@dataclass
class TrainingSet:
    """What one training worker iterates over.

    ``inputs``: ``(n, 3, s, s) float32`` preprocessed images (``kind="images"``, trainable
    backbones) or ``(n, C, g, g) float16`` backbone maps (``kind="maps"``, frozen backbones).
    ``labels`` ``(n,) int64`` index into ``product_ids``; ``categories`` ``(n,) int64`` index into
    ``category_names``; ``boxes`` ``(n, 4) float32`` subject box as fractions of the image side,
    NaN where unknown; ``catalog_rows`` ``(products,) int64`` the row of each product's first
    catalogue image (-1: none); ``click_triplets`` ``(t, 3) int64`` rows; ``skipped`` inputs that
    could not be read (counted, not fatal).
    """

    inputs: torch.Tensor
    kind: Literal["images", "maps"]
    labels: np.ndarray
    product_ids: list[str]
    categories: np.ndarray
    category_names: list[str]
    boxes: np.ndarray
    catalog_rows: np.ndarray
    click_triplets: np.ndarray
    skipped: list[str]
    #: ``(n,) bool``: the row is a catalogue image (not a photo); None when unknown.
    from_catalog: np.ndarray | None = None

    def sampling_labels(self) -> np.ndarray:
        """``labels`` with -1 for catalogue rows of products that have no photo here: on a
        worker holding a shard of the photos, P x K batches then draw the products it has
        photos of (each product's catalogue image still joins them), not products whose only
        item is their catalogue image."""
        if self.from_catalog is None or self.from_catalog.all():
            return self.labels
        with_photos = np.unique(self.labels[~self.from_catalog])
        return np.where(np.isin(self.labels, with_photos), self.labels, -1)

    @classmethod
    def from_tables(
        cls,
        catalog: pa.Table,
        train_queries: pa.Table,
        clicks: pa.Table | None,
        decoded: Mapping[str, np.ndarray | None],
        to_inputs: Callable[[list[np.ndarray]], torch.Tensor],
        kind: Literal["images", "maps"] = "images",
        image_sizes: Mapping[str, tuple[int, int]] | None = None,
        product_ids: Sequence[str] | None = None,
        category_names: Sequence[str] | None = None,
    ) -> TrainingSet:
        """Assemble from catalogue rows, real-shot training queries and the click log.

        ``decoded`` maps every image URI of ``catalog`` and ``train_queries`` to its decoded
        ``(H, W, 3) uint8`` image (``kind="images"``) or its ``(C, g, g)`` backbone map
        (``kind="maps"``), or to None when it could not be read. ``to_inputs`` stacks a list of
        those into the ``inputs`` tensor. ``product_ids`` and ``category_names`` fix the label
        vocabularies (workers holding different shards must agree on them); by default they are
        the sorted values present. Query boxes (pixels of the stored image) become
        fractions of the stored image's side: ``image_sizes`` (URI -> width, height) gives it,
        else the decoded image's shape (images must then be decoded at their stored size).
        """
        image_sizes = image_sizes or {}
        arrays: list[np.ndarray] = []
        product_of_row: list[str] = []
        category_of_row: list[str] = []
        boxes: list[list[float]] = []
        catalog_rows: dict[str, int] = {}
        query_rows: dict[str, int] = {}
        skipped: list[str] = []
        catalog_flags: list[bool] = []
        nan_box = [float("nan")] * 4
        q_boxes = train_queries["box"].to_pylist()
        sources = (
            (catalog, catalog_rows, [None] * catalog.num_rows),
            (train_queries, query_rows, q_boxes),
        )
        for table, row_index, box_list in sources:
            columns = zip(
                table["image_uri"].to_pylist(),
                table["product_id"].to_pylist(),
                table["category"].to_pylist(),
                box_list,
                strict=True,
            )
            for uri, product, category, box in columns:
                item = decoded.get(uri)
                if item is None:
                    skipped.append(uri)
                    continue
                key = product if row_index is catalog_rows else uri
                row_index.setdefault(key, len(arrays))
                arrays.append(item)
                catalog_flags.append(row_index is catalog_rows)
                product_of_row.append(product)
                category_of_row.append(category)
                w, h = image_sizes.get(uri, (0, 0))
                if not (w and h) and kind == "images":
                    h, w = item.shape[:2]
                if box is not None and w and h:
                    boxes.append([box[0] / w, box[1] / h, box[2] / w, box[3] / h])
                else:
                    boxes.append(nan_box)
        if not arrays:
            raise ValueError("no training image could be read")
        product_ids = sorted(set(product_of_row)) if product_ids is None else list(product_ids)
        label_of = {p: i for i, p in enumerate(product_ids)}
        if category_names is None:
            category_names = sorted(set(category_of_row))
        category_names = list(category_names)
        category_of = {c: i for i, c in enumerate(category_names)}
        sessions = []
        if clicks is not None:
            sessions = list(
                zip(
                    clicks["query_image_uri"].to_pylist(),
                    clicks["shown_product_ids"].to_pylist(),
                    clicks["clicked_product_id"].to_pylist(),
                    strict=True,
                )
            )
        return cls(
            inputs=to_inputs(arrays),
            kind=kind,
            labels=np.asarray([label_of[p] for p in product_of_row], dtype=np.int64),
            product_ids=product_ids,
            categories=np.asarray([category_of[c] for c in category_of_row], dtype=np.int64),
            category_names=category_names,
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            catalog_rows=np.asarray([catalog_rows.get(p, -1) for p in product_ids], dtype=np.int64),
            click_triplets=mine_click_triplets(query_rows, catalog_rows, sessions),
            skipped=skipped,
            from_catalog=np.asarray(catalog_flags, dtype=bool),
        )

    def __len__(self) -> int:
        return len(self.labels)


def stack_maps(maps: list[np.ndarray]) -> torch.Tensor:
    """Cached ``(C, g, g)`` maps -> one ``(n, C, g, g) float16`` tensor (half the memory)."""
    return torch.from_numpy(np.stack([np.asarray(m, dtype=np.float16) for m in maps]))


def view_tag(index: int, fraction: float) -> str:
    """What is appended to an image URI to name its ``index``-th view ("" for the first view,
    which keeps the plain URI so that click sessions and subject boxes find it)."""
    return "" if index == 0 else f"#view={fraction:g}"


def _box(value: object) -> list[float] | None:
    """A streamed row's box as 4 floats, or None: Arrow's null can arrive as None or NaN."""
    if value is None or np.ndim(value) != 1 or np.size(value) != 4:
        return None
    box = [float(v) for v in np.asarray(value)]
    return None if any(np.isnan(box)) else box


def _column(
    batches: list[Mapping[str, np.ndarray]], name: str, order: Sequence[int] | None = None
) -> list:
    """Column ``name`` of every batch, as one list; in ``order`` (positions) when given."""
    values = [value for batch in batches for value in batch[name]]
    return values if order is None else [values[i] for i in order]


def split_by_source(rows: pa.Table, world: int) -> list[pa.Table]:
    """The photo rows of each of ``world`` training workers: a fixed function of the set of
    rows, so that a run trains on the same shards whatever order the rows come in (they come
    grouped by the feature-cache part holding their maps, and which part a map lands in depends
    on which Ray Data task computed it).

    Source images (``source_uri``) are dealt round-robin in sorted order, so every view of an
    image lands on one worker, each worker holds a share of nearly every product's photos, and
    the shares differ by at most one image. Each shard keeps the rows' order (readers of cached
    maps rely on rows of one cache part sitting side by side).
    """
    if world < 1:
        raise ValueError(f"cannot split the photos across {world} workers")
    sources = rows["source_uri"].to_pylist()
    rank_of = {source: i % world for i, source in enumerate(sorted(set(sources)))}
    ranks = np.fromiter((rank_of[s] for s in sources), dtype=np.int64, count=len(sources))
    return [rows.filter(pa.array(ranks == rank)) for rank in range(world)]


def from_streamed_rows(
    catalog: list[Mapping[str, np.ndarray]],
    photos: list[Mapping[str, np.ndarray]],
    clicks: pa.Table | None,
    kind: Literal["images", "maps"],
    product_ids: Sequence[str] | None = None,
    category_names: Sequence[str] | None = None,
) -> TrainingSet:
    """A ``TrainingSet`` from batches of streamed rows (``training_rows``'s columns plus
    ``input``, the row's decoded input, and ``error``, non-empty where it could not be read).

    ``catalog`` holds every catalogue row, ``photos`` this worker's share of the photo rows:
    batches are drawn from these, each product with its catalogue image. Unreadable rows are
    counted in ``skipped``.
    """
    decoded: dict[str, np.ndarray | None] = {}
    sizes: dict[str, tuple[int, int]] = {}
    tables = []
    for batches in (catalog, photos):
        arrived = [str(u) for u in _column(batches, "image_uri")]
        # Rows in URI order, not in the order the blocks arrived: the set (and so the batches a
        # seeded sampler draws from it) is then the same in every run.
        order = sorted(range(len(arrived)), key=arrived.__getitem__)
        uris = [arrived[i] for i in order]
        for uri, item, err, w, h in zip(
            uris,
            _column(batches, "input", order),
            _column(batches, "error", order),
            _column(batches, "width", order),
            _column(batches, "height", order),
            strict=True,
        ):
            decoded[uri] = None if err else item
            sizes[uri] = (int(w), int(h))
        # A box is in pixels of the stored image: without that image's size it cannot be used.
        boxes = [
            _box(b) if all(sizes[u]) else None
            for u, b in zip(uris, _column(batches, "box", order), strict=True)
        ]
        tables.append(
            pa.table(
                {
                    "image_uri": pa.array(uris, pa.string()),
                    "product_id": pa.array([str(p) for p in _column(batches, "product_id", order)]),
                    "category": pa.array([str(c) for c in _column(batches, "category", order)]),
                    "box": pa.array(boxes, pa.list_(pa.float32())),
                }
            )
        )
    to_inputs = stack_maps if kind == "maps" else stack_images
    return TrainingSet.from_tables(
        tables[0], tables[1], clicks, decoded, to_inputs, kind, sizes, product_ids, category_names
    )


def stack_images(images: list[np.ndarray]) -> torch.Tensor:
    """Preprocessed ``(3, s, s)`` images -> one ``(n, 3, s, s) float32`` tensor."""
    return torch.from_numpy(np.stack([np.asarray(i, dtype=np.float32) for i in images]))
