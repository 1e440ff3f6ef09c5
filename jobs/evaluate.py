"""Job: offline retrieval quality of the published index on held-out query photos.

Reports Recall@1/@10 and mAP@10 through the binary index and by exact float search, the binary
index's recall against exact search, and, for reference, the same figures for the untrained
network (``baseline=True``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from jobs.common import load_dataset, print_summary, progress, storage_of
from vsearch.config import Config
from vsearch.data.dataset import CatalogDataset
from vsearch.eval.retrieval import RetrievalReport, evaluate_retrieval
from vsearch.models.artifact import ModelArtifact, initial_artifact
from vsearch.models.embedder import Embedder
from vsearch.runtime.embedding import META_COLUMNS
from vsearch.storage import IndexStore, ModelStore, Storage
from vsearch.storage.images import read_images


def read_urls(
    storage: Storage, urls: list[str], max_pixels: int, max_side: int, desc: str
) -> tuple[list[np.ndarray], np.ndarray]:
    """The readable images of ``urls`` (shrunk to ``max_side``) and the ``(n,) bool`` mask of them."""
    with progress(len(urls), desc, "img") as bar:
        images, _ = read_images(storage, urls, max_pixels, max_side, bar.update)
    ok = np.asarray([img is not None for img in images], dtype=bool)
    return [img for img in images if img is not None], ok


def embed(artifact: ModelArtifact, images: list[np.ndarray]) -> np.ndarray:
    """``(n, d) float32`` embeddings of decoded images with ``artifact``'s network."""
    return Embedder(artifact.build(), artifact.config.input_size).embed(images)


def canonical_products(ds: CatalogDataset) -> dict[str, str]:
    """Duplicate listing -> the product it re-uploads."""
    if ds.duplicates is None:
        return {}
    return dict(
        zip(
            ds.duplicates["product_id"].to_pylist(),
            ds.duplicates["duplicate_of"].to_pylist(),
            strict=True,
        )
    )


def main(cfg: Config, baseline: bool = True) -> dict[str, RetrievalReport]:
    storage = storage_of(cfg)
    ds = load_dataset(cfg)
    queries = ds.queries_of(cfg.data.eval_split)
    store = IndexStore(storage)
    manifest = store.manifest()
    shards = store.load_shards(manifest)
    catalog_vectors = np.concatenate([s.vectors for s in shards])
    catalog_meta = pa.concat_tables([s.meta.select(list(META_COLUMNS)) for s in shards])
    _, artifact = ModelStore(storage).load(manifest.model_version)
    untrained = initial_artifact(cfg.model) if baseline else None
    # Photos are read once, at a size that suits both networks.
    sizes = [artifact.config.input_size] + ([untrained.config.input_size] if untrained else [])
    max_side = 4 * max(sizes)
    urls = queries["image_uri"].to_pylist()
    q_images, ok = read_urls(storage, urls, cfg.index.max_pixels, max_side, "reading queries")
    products = [p for p, good in zip(queries["product_id"].to_pylist(), ok, strict=True) if good]
    canonical = canonical_products(ds)
    args = {
        "shortlist": cfg.index.shortlist,
        "buckets_per_category": cfg.index.buckets_per_category,
    }
    reports = {
        "trained": evaluate_retrieval(
            embed(artifact, q_images), products, catalog_vectors, catalog_meta, canonical, **args
        )
    }
    if untrained is not None:
        c_images, c_ok = read_urls(
            storage,
            ds.catalog["image_uri"].to_pylist(),
            cfg.index.max_pixels,
            max_side,
            "baseline: reading catalogue",
        )
        meta = ds.catalog.filter(pa.array(c_ok)).select(list(META_COLUMNS))
        reports["untrained"] = evaluate_retrieval(
            embed(untrained, q_images),
            products,
            embed(untrained, c_images),
            meta,
            canonical,
            **args,
        )
    rows: dict[str, object] = {
        "index version": manifest.version,
        "model version": manifest.model_version,
        "eval split": cfg.data.eval_split,
        "queries": int(ok.sum()),
        "unreadable queries": int((~ok).sum()),
    }
    for name, report in reports.items():
        for key, value in report.as_dict().items():
            if key not in ("queries", "catalog_images"):
                rows[f"{name}: {key}"] = value
    print_summary("evaluate", rows)
    return reports
