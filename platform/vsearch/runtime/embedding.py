"""Ray Data stage of the reindex job: read, decode and embed catalogue images in an actor pool.

``CatalogEmbedder`` is a plain callable on a dict-of-arrays batch, so it is tested without Ray and
run by ``map_batches`` with ``ActorPoolStrategy`` in the job.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vsearch.imaging import decode_side
from vsearch.storage.artifacts import ModelStore
from vsearch.storage.datasets import resolve_uri
from vsearch.storage.fs import Storage
from vsearch.storage.images import read_image

#: Catalogue columns carried through to the index metadata.
META_COLUMNS = ("image_id", "product_id", "category", "title", "quality", "popularity")


class ImageBatchEmbedder:
    """Reads, decodes and embeds images by URI with one model of a model store: what the reindex
    actors (``CatalogEmbedder``) and the dedup image channel's actors share."""

    def __init__(
        self,
        storage_root: str,
        storage_options: dict[str, Any],
        model_version: str,
        dataset_prefix: str,
        max_pixels: int,
        model_prefix: str = "models",
    ) -> None:
        torch.set_num_threads(1)
        self.storage = Storage(storage_root, storage_options)
        self.embedder = ModelStore(self.storage, model_prefix).load_embedder(model_version)
        self.dataset_prefix = dataset_prefix
        self.max_pixels = max_pixels

    def _load(self, uri: str | None) -> tuple[np.ndarray | None, str]:
        if not uri:
            return None, "missing: no image"
        url = resolve_uri(self.storage, self.dataset_prefix, str(uri))
        side = decode_side(self.embedder.input_size, self.embedder.box_margin is not None)
        return read_image(self.storage, url, self.max_pixels, side)

    def embed_uris(self, uris: Any) -> tuple[np.ndarray, list[str]]:
        """``(n, d) float32`` embeddings and per image ``""`` or why it was skipped (its row
        is then zero)."""
        loaded = [self._load(uri) for uri in uris]
        good = [i for i, (img, _) in enumerate(loaded) if img is not None]
        vectors = np.zeros((len(loaded), self.embedder.dim), dtype=np.float32)
        if good:
            vectors[good] = self.embedder.embed([loaded[i][0] for i in good])  # type: ignore[misc]
        return vectors, [err for _, err in loaded]


class CatalogEmbedder(ImageBatchEmbedder):
    """Batch in: catalogue columns. Batch out: ``META_COLUMNS`` + ``embedding`` ``(n, d) float32``
    + ``error`` (empty string when the image was embedded; else why it was skipped, e.g.
    ``corrupt: ...``, ``missing: ...``). Failed rows get a zero embedding and are dropped later.
    """

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors, errors = self.embed_uris(batch["image_uri"])
        out = {name: np.asarray(batch[name]) for name in META_COLUMNS}
        out["embedding"] = vectors
        out["error"] = np.asarray(errors, dtype=object)
        return out
