"""Ray Data pipeline of the reindex job: catalogue Parquet -> decode -> embed (actor pool).

Returns the embedded rows to the driver, which builds the shards (``vsearch.index``) and publishes
them (``vsearch.storage``).
"""

from __future__ import annotations

import posixpath
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray.data
from ray.data import ActorPoolStrategy

from vsearch.config import Config
from vsearch.runtime.embedding import META_COLUMNS, CatalogEmbedder
from vsearch.storage.fs import Storage


@dataclass
class EmbeddedCatalog:
    """Embedded catalogue rows: ``vectors`` ``(n, d) float32``, ``meta`` n rows of
    ``META_COLUMNS``; ``errors`` maps image_id -> why it was skipped."""

    vectors: np.ndarray
    meta: pa.Table
    errors: dict[str, str]

    def error_counts(self) -> dict[str, int]:
        """Skipped images by reason (the text before the first colon)."""
        return dict(Counter(e.split(":", 1)[0] for e in self.errors.values()))


def embed_catalog(cfg: Config, model_version: str, dataset_prefix: str) -> EmbeddedCatalog:
    """Read ``<dataset_prefix>/catalog.parquet`` with Ray Data and embed it in an actor pool."""
    storage = Storage(cfg.storage, cfg.storage_options)
    fs, root = storage.pyarrow_filesystem()
    ds = ray.data.read_parquet(
        posixpath.join(root, dataset_prefix, "catalog.parquet"), filesystem=fs
    )
    # A catalogue file is often one block: split it so every actor of the pool gets work.
    ds = ds.repartition(4 * cfg.index.embed_actors)
    embedded = ds.map_batches(
        CatalogEmbedder,
        fn_constructor_kwargs={
            "storage_root": cfg.storage,
            "storage_options": cfg.storage_options,
            "model_version": model_version,
            "dataset_prefix": dataset_prefix,
            "max_pixels": cfg.index.max_pixels,
        },
        batch_size=cfg.index.batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=cfg.index.embed_actors),
        num_cpus=cfg.index.cpus_per_actor,
        memory=cfg.index.backbone_actor_memory_mb * 2**20,
    )
    vectors: list[np.ndarray] = []
    columns: dict[str, list] = {name: [] for name in META_COLUMNS}
    errors: dict[str, str] = {}
    for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
        ok = np.asarray([not e for e in batch["error"]], dtype=bool)
        for image_id, err in zip(batch["image_id"], batch["error"], strict=True):
            if err:
                errors[str(image_id)] = str(err)
        vectors.append(np.asarray(batch["embedding"], dtype=np.float32)[ok])
        for name in META_COLUMNS:
            columns[name].extend(np.asarray(batch[name])[ok].tolist())
    dim = vectors[0].shape[1] if vectors else 0
    meta = pa.table(
        {
            "image_id": pa.array(columns["image_id"], pa.string()),
            "product_id": pa.array(columns["product_id"], pa.string()),
            "category": pa.array(columns["category"], pa.string()),
            "title": pa.array(columns["title"], pa.string()),
            "quality": pa.array(columns["quality"], pa.float32()),
            "popularity": pa.array(columns["popularity"], pa.float32()),
        }
    )
    stacked = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)
    return EmbeddedCatalog(vectors=stacked, meta=meta, errors=errors)
