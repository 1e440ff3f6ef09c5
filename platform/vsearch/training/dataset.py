"""``TrainingSet``: decoded, resized training images with product labels and click triplets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from vsearch.imaging import to_tensor
from vsearch.models.miners import mine_click_triplets


@dataclass
class TrainingSet:
    """Everything one training worker iterates over, held in memory.

    ``images`` ``(n, 3, s, s) float32`` normalised; ``labels`` ``(n,) int64`` product index;
    ``product_ids[label]`` the product; ``click_triplets`` ``(t, 3) int64`` rows of ``images``;
    ``skipped`` image URIs that could not be decoded (counted, not fatal).
    """

    images: torch.Tensor
    labels: np.ndarray
    product_ids: list[str]
    click_triplets: np.ndarray
    skipped: list[str]

    @classmethod
    def from_tables(
        cls,
        catalog: pa.Table,
        train_queries: pa.Table,
        clicks: pa.Table | None,
        decoded: Mapping[str, np.ndarray | None],
        input_size: int,
    ) -> TrainingSet:
        """Assemble from catalogue rows, real-shot training queries and the click log.

        ``decoded`` maps every image URI of ``catalog`` and ``train_queries`` to its decoded
        ``(H, W, 3) uint8`` image, or to None when it failed to decode.
        """
        arrays: list[np.ndarray] = []
        product_of_row: list[str] = []
        catalog_rows: dict[str, int] = {}
        query_rows: dict[str, int] = {}
        skipped: list[str] = []
        sources = (
            (catalog["image_uri"].to_pylist(), catalog["product_id"].to_pylist(), catalog_rows),
            (
                train_queries["image_uri"].to_pylist(),
                train_queries["product_id"].to_pylist(),
                query_rows,
            ),
        )
        for uris, products, row_index in sources:
            for uri, product in zip(uris, products, strict=True):
                image = decoded.get(uri)
                if image is None:
                    skipped.append(uri)
                    continue
                key = product if row_index is catalog_rows else uri
                row_index.setdefault(key, len(arrays))
                arrays.append(image)
                product_of_row.append(product)
        if not arrays:
            raise ValueError("no training image could be decoded")
        product_ids = sorted(set(product_of_row))
        label_of = {p: i for i, p in enumerate(product_ids)}
        labels = np.asarray([label_of[p] for p in product_of_row], dtype=np.int64)
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
        triplets = mine_click_triplets(query_rows, catalog_rows, sessions)
        return cls(
            images=to_tensor(arrays, input_size),
            labels=labels,
            product_ids=product_ids,
            click_triplets=triplets,
            skipped=skipped,
        )

    def __len__(self) -> int:
        return len(self.labels)
