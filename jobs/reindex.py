"""Job: embed the catalogue with Ray Data, build the binary sharded index, publish it atomically.

Nothing is published unless every step succeeded: the index being served stays as it was.
"""

from __future__ import annotations

import time

from jobs.common import ensure_dataset, print_summary, storage_of
from vsearch.config import Config
from vsearch.index.builder import build_shards
from vsearch.index.manifest import Manifest
from vsearch.index.tuning import tuning_spec
from vsearch.runtime.cluster import ray_session
from vsearch.runtime.reindex import embed_catalog
from vsearch.storage import IndexStore, ModelStore
from vsearch.storage.artifacts import new_version


def main(cfg: Config, model_version: str | None = None, publish: bool = True) -> Manifest:
    """Embed, build and write a new index version; publish it unless ``publish`` is False (then
    it is complete on storage, for ``vsearch nightly`` to evaluate before publishing)."""
    prefix = ensure_dataset(cfg)
    storage = storage_of(cfg)
    model_version = model_version or ModelStore(storage).latest()
    started = time.perf_counter()
    with ray_session(cfg.ray):
        embedded = embed_catalog(cfg, model_version, prefix)
    embed_s = time.perf_counter() - started
    if len(embedded.vectors) == 0:
        raise RuntimeError(
            f"no catalogue image could be embedded ({len(embedded.errors)} failed: "
            f"{embedded.error_counts()}); the published index is unchanged"
        )
    built = build_shards(
        embedded.vectors,
        embedded.meta,
        cfg.index.buckets_per_category,
        tuning_spec(cfg.index),
        cfg.index.ivf_above,
        cfg.index.large_engine,
        cfg.index.rescore_dtype,
    )
    store = IndexStore(storage)
    stats = {
        "embedded": len(embedded.vectors),
        "skipped": len(embedded.errors),
        "embed_seconds": round(embed_s, 3),
    }
    manifest = store.write_version(
        new_version("i"), built, model_version, embedded.vectors.shape[1], stats
    )
    if publish:
        store.publish(manifest)
    else:
        store.write_manifest(manifest)
    print_summary(
        "reindex",
        {
            "index version" + (" (published)" if publish else " (written, not published)"): (
                manifest.version
            ),
            "model version": model_version,
            "images embedded": len(embedded.vectors),
            "images skipped": len(embedded.errors),
            **{f"  skipped: {k}": v for k, v in embedded.error_counts().items()},
            "shards": len(manifest.shards),
            "tuned shortlists (min-max)": _span([e.shortlist for e in manifest.shards]),
            f"probe recall@{cfg.index.recall_k}, lowest shard (target {cfg.index.recall_target})": (
                min((e.recall for e in manifest.shards if e.recall is not None), default=1.0)
            ),
            "categories": len(manifest.categories),
            "embed throughput incl. start-up (img/s)": len(embedded.vectors) / max(embed_s, 1e-9),
            "wall time (s)": time.perf_counter() - started,
        },
    )
    for image_id, err in list(embedded.errors.items())[:5]:
        print(f"  skipped {image_id}: {err}")
    return manifest


def _span(values: list[int | None]) -> str:
    got = [v for v in values if v is not None]
    return f"{min(got)}-{max(got)}" if got else "-"
