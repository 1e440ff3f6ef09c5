"""``TrainingSet``: network inputs (decoded images or cached backbone maps) with product labels,
categories, subject boxes and click triplets, held in memory by one training worker."""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
    ) -> TrainingSet:
        """Assemble from catalogue rows, real-shot training queries and the click log.

        ``decoded`` maps every image URI of ``catalog`` and ``train_queries`` to its decoded
        ``(H, W, 3) uint8`` image (``kind="images"``) or its ``(C, g, g)`` backbone map
        (``kind="maps"``), or to None when it could not be read. ``to_inputs`` stacks a list of
        those into the ``inputs`` tensor. Query boxes (pixels of the stored image) become
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
        product_ids = sorted(set(product_of_row))
        label_of = {p: i for i, p in enumerate(product_ids)}
        category_names = sorted(set(category_of_row))
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
        )

    def __len__(self) -> int:
        return len(self.labels)


def stack_maps(maps: list[np.ndarray]) -> torch.Tensor:
    """Cached ``(C, g, g)`` maps -> one ``(n, C, g, g) float16`` tensor (half the memory)."""
    return torch.from_numpy(np.stack([np.asarray(m, dtype=np.float16) for m in maps]))
