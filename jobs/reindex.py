"""Job: embed the catalogue with Ray Data into per-shard staged Parquet, build every shard in its
own Ray task, publish the new version atomically.

Nothing is published unless every step succeeded: the index being served stays as it was.
"""

from __future__ import annotations

import posixpath
import time

from jobs.common import ensure_dataset, print_summary, progress, storage_of, text_channel
from vsearch.config import Config
from vsearch.index.manifest import REFERENCE, Manifest
from vsearch.index.shard import scans_exactly
from vsearch.runtime.cluster import ray_session
from vsearch.runtime.reindex import build_staged, peak_rss_bytes, stage_catalog
from vsearch.storage import IndexStore, ModelStore
from vsearch.storage.artifacts import new_version


def main(cfg: Config, model_version: str | None = None, publish: bool = True) -> Manifest:
    """Embed, build and write a new index version; publish it unless ``publish`` is False (then
    it is complete on storage, for ``vsearch nightly`` to evaluate before publishing)."""
    prefix = ensure_dataset(cfg)
    storage = storage_of(cfg)
    model_version = model_version or ModelStore(storage).latest()
    store = IndexStore(storage)
    version = new_version("i")
    staging = posixpath.join(store.prefix, version, "staging")
    started = time.perf_counter()
    with ray_session(cfg.ray):
        staged = stage_catalog(cfg, model_version, prefix, staging)
        embed_s = time.perf_counter() - started
        if staged.catalog_rows == 0:
            storage.delete(posixpath.join(store.prefix, version))
            raise RuntimeError(
                f"no catalogue image could be embedded ({len(staged.errors)} failed: "
                f"{staged.error_counts()}); the published index is unchanged"
            )
        if cfg.category.vote_gallery == REFERENCE and staged.reference_rows == 0:
            storage.delete(posixpath.join(store.prefix, version))
            raise RuntimeError(
                "category.vote_gallery is reference but no labelled photo of split "
                f"{cfg.category.reference_split!r} (category.reference_split) could be embedded "
                "from the dataset's queries; the published index is unchanged"
            )
        with progress(staged.rows, f"building {len(staged.shards)} shards", "vec") as bar:
            entries, worker_peak = build_staged(cfg, staged, version, bar.update)
    storage.delete(staging)
    # Product titles for hybrid queries (in the driver: one float16 vector per product).
    texts = text_channel(cfg, storage.read_table(posixpath.join(prefix, "catalog.parquet")))
    stats = {
        "embedded": staged.catalog_rows,
        "reference_photos": staged.reference_rows,
        "skipped": len(staged.errors),
        "embed_seconds": round(embed_s, 3),
        "build_seconds": round(time.perf_counter() - started - embed_s, 3),
        "driver_peak_rss_mb": round(peak_rss_bytes() / 2**20, 1),
        "build_task_peak_rss_mb": round(worker_peak / 2**20, 1),
    }
    manifest = store.new_manifest(version, entries, model_version, staged.dim, stats)
    if texts is not None:
        manifest = manifest.model_copy(update={"text": store.write_text(version, texts)})
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
            "images embedded": staged.catalog_rows,
            "reference photos embedded (category vote)": (
                f"{staged.reference_rows} (split {cfg.category.reference_split})"
                if cfg.category.vote_gallery == REFERENCE
                else "off (the catalogue votes)"
            ),
            "images skipped": len(staged.errors),
            **{f"  skipped: {k}": v for k, v in staged.error_counts().items()},
            "shards (catalogue / reference photos)": (
                f"{len(manifest.catalog_shards)} / "
                f"{len(manifest.shards) - len(manifest.catalog_shards)}"
            ),
            "tuned shortlists (min-max)": _span([e.shortlist for e in manifest.shards]),
            "shards searched by one exact scan": sum(
                scans_exactly(e.shortlist, e.count, cfg.index.rescore_dtype)
                for e in manifest.shards
            ),
            f"probe recall@{cfg.index.recall_k}, lowest shard (target {cfg.index.recall_target})": (
                min((e.recall for e in manifest.shards if e.recall is not None), default=1.0)
            ),
            "categories": len(manifest.categories),
            "product titles embedded (text channel)": (
                f"{len(texts.product_ids)} ({texts.model})" if texts is not None else "off"
            ),
            "embed throughput incl. start-up (img/s)": staged.rows / max(embed_s, 1e-9),
            "peak memory, driver / largest build task (MiB)": (
                f"{stats['driver_peak_rss_mb']:.0f} / {stats['build_task_peak_rss_mb']:.0f}"
            ),
            "wall time (s)": time.perf_counter() - started,
        },
    )
    for image_id, err in list(staged.errors.items())[:5]:
        print(f"  skipped {image_id}: {err}")
    return manifest


def _span(values: list[int | None]) -> str:
    got = [v for v in values if v is not None]
    return f"{min(got)}-{max(got)}" if got else "-"
