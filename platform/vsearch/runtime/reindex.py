"""Ray stages of the reindex job: embed the catalogue into per-shard staged Parquet, then build
every shard in its own Ray task. The driver only sees counts, errors and manifest entries; it
never holds the catalogue's vectors.

1. ``stage_catalog``: Ray Data reads ``<dataset>/catalog.parquet`` (and, for a category vote
   over reference photos, the labelled photos of ``<dataset>/queries.parquet``'s reference
   split); an actor pool of ``CatalogStager`` reads, decodes and embeds each batch and writes
   its rows, split by shard (``vsearch.index.staging``), to ``<staging>/<shard>/<uuid>.parquet``;
   each batch returns one summary row per shard it wrote and one per image it skipped.
2. ``build_staged``: one task per shard reads only its folder, builds and tunes the shard
   (``vsearch.index.builder.build_shard``), writes its files under the new version
   (``IndexStore.write_shard``) and returns its manifest entry and its peak memory.
"""

from __future__ import annotations

import posixpath
import resource
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data
from ray.data import ActorPoolStrategy

from vsearch.config import Config
from vsearch.index.builder import build_shard
from vsearch.index.manifest import CATALOG, REFERENCE, ShardEntry
from vsearch.index.staging import decode_staged, stage_groups
from vsearch.index.tuning import tuning_spec
from vsearch.runtime.cluster import embedding_gpus
from vsearch.runtime.embedding import META_COLUMNS, CatalogEmbedder
from vsearch.storage.artifacts import IndexStore
from vsearch.storage.fs import Storage


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (``ru_maxrss``; KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@dataclass
class StagedCatalog:
    """What the embedding stage wrote: per shard name its ``(category, bucket, rows, role)``,
    the vector width, and image_id -> why it was skipped."""

    staging: str
    shards: dict[str, tuple[str, int, int, str]] = field(default_factory=dict)
    dim: int = 0
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Embedded (staged) rows over every shard."""
        return sum(n for _, _, n, _ in self.shards.values())

    @property
    def catalog_rows(self) -> int:
        """Embedded catalogue images (reference photos left out)."""
        return self.rows - self.reference_rows

    @property
    def reference_rows(self) -> int:
        """Embedded reference photos (the category vote's gallery)."""
        return sum(n for _, _, n, role in self.shards.values() if role == REFERENCE)

    def error_counts(self) -> dict[str, int]:
        """Skipped images by reason (the text before the first colon)."""
        return dict(Counter(e.split(":", 1)[0] for e in self.errors.values()))


#: Columns of the stager's summary rows and their dtypes.
_SUMMARY = (("shard", object), ("category", object), ("bucket", np.int64), ("rows", np.int64),
            ("dim", np.int64), ("role", object), ("image_id", object), ("error", object))  # fmt: skip


def catalog_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Catalogue rows as the stager's input (role ``catalog``)."""
    out = {name: np.asarray(batch[name]) for name in (*META_COLUMNS, "image_uri")}
    out["role"] = np.full(len(out["image_id"]), CATALOG, dtype=object)
    return out


def reference_rows(batch: dict[str, np.ndarray], split: str) -> dict[str, np.ndarray]:
    """The labelled photos of ``split`` among query rows, as the stager's input (role
    ``reference``; image id = query id, no title, quality and popularity 0)."""
    keep = np.asarray(batch["split"]) == split
    n = int(keep.sum())
    return {
        "image_id": np.asarray(batch["query_id"])[keep],
        "product_id": np.asarray(batch["product_id"])[keep],
        "category": np.asarray(batch["category"])[keep],
        "title": np.full(n, "", dtype=object),
        "quality": np.zeros(n, dtype=np.float32),
        "popularity": np.zeros(n, dtype=np.float32),
        "image_uri": np.asarray(batch["image_uri"])[keep],
        "role": np.full(n, REFERENCE, dtype=object),
    }


class CatalogStager(CatalogEmbedder):
    """Embeds a batch of catalogue rows (or reference photos: column ``role``, default
    catalogue) and writes them, split by shard, under ``staging``.

    Batch out: one row per shard written (``shard, category, bucket, rows, dim, role``;
    image_id and error empty) and one per skipped image (``image_id, error``; rows 0)."""

    def __init__(self, staging: str, buckets_per_category: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.staging = staging
        self.buckets = buckets_per_category

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        embedded = super().__call__(batch)
        errors = [str(e) for e in embedded["error"]]
        ok = np.asarray([not e for e in errors], dtype=bool)
        roles = np.asarray(batch["role"] if "role" in batch else [CATALOG] * len(ok), dtype=object)
        summary: list[tuple[str, str, int, int, int, str, str, str]] = []
        for role in sorted(set(roles[ok].tolist())):
            rows = ok & (roles == role)
            meta = pa.table({name: embedded[name][rows] for name in META_COLUMNS})
            vectors = embedded["embedding"][rows]
            groups = stage_groups(vectors, meta, self.buckets, role)
            for name, (category, bucket, table) in groups.items():
                part = posixpath.join(self.staging, name, f"{uuid.uuid4().hex}.parquet")
                self.storage.write_table(part, table)
                summary.append(
                    (name, category, bucket, table.num_rows, vectors.shape[1], role, "", "")
                )
        for image_id, err in zip(embedded["image_id"], errors, strict=True):
            if err:
                summary.append(("", "", 0, 0, 0, "", str(image_id), err))
        columns = list(zip(*summary, strict=True)) if summary else [()] * len(_SUMMARY)
        return {
            key: np.asarray(values, dtype=kind)
            for (key, kind), values in zip(_SUMMARY, columns, strict=True)
        }


def stage_catalog(
    cfg: Config, model_version: str, dataset_prefix: str, staging: str
) -> StagedCatalog:
    """Embed ``<dataset_prefix>/catalog.parquet`` in an actor pool, writing the rows by shard
    under ``staging`` (a name on ``cfg.storage``); with ``category.vote_gallery: reference``
    the labelled photos of ``category.reference_split`` too, into reference shards."""
    storage = Storage(cfg.storage, cfg.storage_options)
    fs, root = storage.pyarrow_filesystem()
    ds = ray.data.read_parquet(
        posixpath.join(root, dataset_prefix, "catalog.parquet"), filesystem=fs
    ).map_batches(catalog_rows, batch_format="numpy")
    if cfg.category.vote_gallery == REFERENCE:
        photos = ray.data.read_parquet(
            posixpath.join(root, dataset_prefix, "queries.parquet"), filesystem=fs
        ).map_batches(
            reference_rows, fn_kwargs={"split": cfg.category.reference_split},
            batch_format="numpy",
        )  # fmt: skip
        ds = ds.union(photos)
    # A catalogue file is often one block: split it so every actor of the pool gets work.
    ds = ds.repartition(4 * cfg.index.embed_actors)
    summaries = ds.map_batches(
        CatalogStager,
        fn_constructor_kwargs={
            "staging": staging,
            "buckets_per_category": cfg.index.buckets_per_category,
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
        num_gpus=embedding_gpus(cfg.index, enabled=cfg.ray.use_gpus),
        memory=cfg.index.backbone_actor_memory_mb * 2**20,
    )
    staged = StagedCatalog(staging=staging)
    for batch in summaries.iter_batches(batch_size=None, batch_format="numpy"):
        for i in range(len(batch["shard"])):
            if batch["error"][i]:
                staged.errors[str(batch["image_id"][i])] = str(batch["error"][i])
                continue
            name = str(batch["shard"][i])
            _, _, before, _ = staged.shards.get(name, ("", 0, 0, ""))
            category, bucket = str(batch["category"][i]), int(batch["bucket"][i])
            role = str(batch["role"][i])
            staged.shards[name] = (category, bucket, before + int(batch["rows"][i]), role)
            staged.dim = int(batch["dim"][i])
    return staged


@ray.remote
def _build_one(
    cfg: Config, staging: str, version: str, name: str, category: str, bucket: int, role: str
) -> tuple[dict, int]:
    """Build one shard from its staged folder and write it under ``version``."""
    storage = Storage(cfg.storage, cfg.storage_options)
    folder = posixpath.join(staging, name)
    tables = [storage.read_table(posixpath.join(folder, f)) for f in storage.list(folder)]
    vectors, meta = decode_staged(pa.concat_tables(tables))
    del tables
    built = build_shard(
        category, bucket, vectors, meta, tuning_spec(cfg.index), cfg.index.ivf_above,
        cfg.index.large_engine, cfg.index.rescore_dtype, role,
    )  # fmt: skip
    entry = IndexStore(storage).write_shard(version, built)
    return entry.model_dump(), peak_rss_bytes()


def build_staged(
    cfg: Config,
    staged: StagedCatalog,
    version: str,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[ShardEntry], int]:
    """Build every staged shard in its own Ray task (``index.build_cpus`` each) and write it
    under ``version``; returns the manifest entries and the largest task process's peak RSS.
    ``progress(rows)`` is called as each shard finishes."""
    task = _build_one.options(num_cpus=cfg.index.build_cpus)
    rows = {}
    pending = []
    for name, (category, bucket, n, role) in sorted(staged.shards.items()):
        ref = task.remote(cfg, staged.staging, version, name, category, bucket, role)
        rows[ref] = n
        pending.append(ref)
    entries, peak = [], 0
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        entry, task_peak = ray.get(done[0])
        entries.append(ShardEntry.model_validate(entry))
        peak = max(peak, task_peak)
        if progress is not None:
            progress(rows[done[0]])
    return entries, peak
