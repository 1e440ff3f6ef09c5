"""Ray Data stage of the reindex job: read, decode and embed catalogue images in an actor pool.

``CatalogEmbedder`` is a plain callable on a dict-of-arrays batch, so it is tested without Ray and
run by ``map_batches`` with ``ActorPoolStrategy`` in the job.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vsearch.storage.artifacts import ModelStore
from vsearch.storage.datasets import resolve_uri
from vsearch.storage.fs import Storage
from vsearch.storage.images import read_image

#: Catalogue columns carried through to the index metadata.
META_COLUMNS = ("image_id", "product_id", "category", "title", "quality", "popularity")


class CatalogEmbedder:
    """Batch in: catalogue columns. Batch out: ``META_COLUMNS`` + ``embedding`` ``(n, d) float32``
    + ``error`` (empty string when the image was embedded; else why it was skipped, e.g.
    ``corrupt: ...``, ``missing: ...``). Failed rows get a zero embedding and are dropped later.
    """

    def __init__(
        self,
        storage_root: str,
        storage_options: dict[str, Any],
        model_version: str,
        dataset_prefix: str,
        max_pixels: int,
    ) -> None:
        torch.set_num_threads(1)
        self.storage = Storage(storage_root, storage_options)
        self.embedder = ModelStore(self.storage).load_embedder(model_version)
        self.dataset_prefix = dataset_prefix
        self.max_pixels = max_pixels

    def _load(self, uri: str) -> tuple[np.ndarray | None, str]:
        url = resolve_uri(self.storage, self.dataset_prefix, uri)
        return read_image(self.storage, url, self.max_pixels, 2 * self.embedder.input_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        loaded = [self._load(str(uri)) for uri in batch["image_uri"]]
        good = [i for i, (img, _) in enumerate(loaded) if img is not None]
        vectors = np.zeros((len(loaded), self.embedder.dim), dtype=np.float32)
        if good:
            vectors[good] = self.embedder.embed([loaded[i][0] for i in good])  # type: ignore[misc]
        out = {name: np.asarray(batch[name]) for name in META_COLUMNS}
        out["embedding"] = vectors
        out["error"] = np.asarray([err for _, err in loaded], dtype=object)
        return out
