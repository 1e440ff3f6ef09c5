"""Split embedded catalogue rows into shards by (category, bucket) and build each shard.

A category's rows are spread over ``buckets_per_category`` buckets by a stable hash of the image
id (CRC-32, identical in every process and Python version), so that rebuilding an index puts an
image in the same shard and shards of a large category can be searched in parallel.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from vsearch.index.manifest import CATALOG, Role, ShardEntry, sha256_hex
from vsearch.index.shard import ShardIndex
from vsearch.index.tuning import Tuning, TuningSpec, tune_search

_SLUG_CHARS = re.compile(r"[^a-z0-9]+")
_SLUG_MAX = 40


def shard_name(category: str, bucket: int, role: Role = CATALOG) -> str:
    """Filesystem-safe, stable shard name, unique per ``(category, bucket, role)``.

    ``"<slug>-<10 hex of sha1(category)>-b<bucket>"``, e.g. ``"drinks-soda-1a2b3c4d5e-b003"``; the
    slug is for people, the hash keeps categories that slug alike apart. A shard of reference
    photos is ``"ref-"`` and the same. Only ``[a-z0-9-]``.
    """
    if bucket < 0:
        raise ValueError(f"bucket must be >= 0, got {bucket}")
    slug = _SLUG_CHARS.sub("-", category.lower()).strip("-")[:_SLUG_MAX].strip("-") or "root"
    digest = hashlib.sha1(category.encode("utf-8")).hexdigest()[:10]
    prefix = "" if role == CATALOG else "ref-"
    return f"{prefix}{slug}-{digest}-b{bucket:03d}"


def bucket_of(image_id: str, buckets: int) -> int:
    """Bucket in ``[0, buckets)`` of an image: ``zlib.crc32(utf-8 bytes) % buckets``."""
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    return zlib.crc32(image_id.encode("utf-8")) % buckets


@dataclass(frozen=True)
class BuiltShard:
    """A freshly built shard, the (category, bucket) it holds and how its search was tuned."""

    category: str
    bucket: int
    index: ShardIndex
    tuning: Tuning | None = None
    #: A delta segment of rows added since the last full reindex (``vsearch.index.delta``).
    delta: bool = False
    #: Catalogue images, or labelled reference photos for the category vote.
    role: Role = CATALOG

    @property
    def name(self) -> str:
        """The shard's name, :func:`shard_name` of its category and bucket."""
        return self.index.name

    def package(self) -> tuple[ShardEntry, dict[str, bytes]]:
        """Serialise the shard: its manifest entry (with checksums) and its files' bytes."""
        files = self.index.to_bytes()
        entry = ShardEntry(
            name=self.name,
            category=self.category,
            bucket=self.bucket,
            count=len(self.index),
            engine=self.index.engine,
            files={fname: sha256_hex(data) for fname, data in files.items()},
            delta=self.delta,
            role=self.role,
        )
        if self.tuning is not None:
            t = self.tuning
            entry = entry.model_copy(
                update={"shortlist": t.shortlist, "nprobe": t.nprobe, "recall": round(t.recall, 4),
                        "recall_k": t.k, "recall_target": t.target, "probes": t.probes}
            )  # fmt: skip
        return entry, files


def shard_groups(meta: pa.Table, buckets_per_category: int) -> list[tuple[str, int, np.ndarray]]:
    """``(category, bucket, rows)`` of every non-empty shard, sorted by (category, bucket), rows
    in input order: each row's bucket is :func:`bucket_of` its image id. The one grouping the
    builder, the reindex's staging and delta updates share."""
    if buckets_per_category < 1:
        raise ValueError(f"buckets_per_category must be >= 1, got {buckets_per_category}")
    for col in ("image_id", "category"):
        if col not in meta.column_names:
            raise ValueError(f"meta is missing column {col!r}")
        if meta.column(col).null_count:
            raise ValueError(f"meta column {col!r} has nulls")
    categories = np.asarray(meta.column("category").to_pylist(), dtype=object)
    buckets = np.fromiter(
        (bucket_of(i, buckets_per_category) for i in meta.column("image_id").to_pylist()),
        dtype=np.int64,
        count=meta.num_rows,
    )
    cat_names, cat_codes = np.unique(categories.astype(str), return_inverse=True)
    key = cat_codes.astype(np.int64) * buckets_per_category + buckets
    order = np.argsort(key, kind="stable")
    uniq, starts = np.unique(key[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    return [
        (str(cat_names[k // buckets_per_category]), int(k % buckets_per_category), order[lo:hi])
        for k, lo, hi in zip(uniq, starts, ends, strict=True)
    ]


def build_shard(
    category: str,
    bucket: int,
    vectors: np.ndarray,
    meta: pa.Table,
    tuning: TuningSpec | None = TuningSpec(),  # noqa: B008 (frozen, so one shared default is safe)
    ivf_above: int | None = None,
    large_engine: str = "pq",
    rescore_dtype: str = "float16",
    role: Role = CATALOG,
) -> BuiltShard:
    """Build and tune the shard of ``(category, bucket)`` from its rows (what one parallel build
    task does; :func:`build_shards` does it for every group in one process)."""
    index = ShardIndex.build(
        shard_name(category, bucket, role), vectors, meta, ivf_above, large_engine, rescore_dtype
    )
    tuned = tune_search(index, tuning) if tuning is not None else None
    return BuiltShard(category=category, bucket=bucket, index=index, tuning=tuned, role=role)


def build_shards(
    vectors: np.ndarray,
    meta: pa.Table,
    buckets_per_category: int,
    tuning: TuningSpec | None = TuningSpec(),  # noqa: B008 (frozen, so one shared default is safe)
    ivf_above: int | None = None,
    large_engine: str = "pq",
    rescore_dtype: str = "float16",
) -> list[BuiltShard]:
    """Partition rows by (category, :func:`bucket_of` image_id) and build one shard per group,
    each with its search tuned to ``tuning`` (None: untuned; searches must then pass a
    shortlist). Shards of more than ``ivf_above`` rows get the inverted-file engine
    ``large_engine``; rescoring vectors are kept as ``rescore_dtype`` (:meth:`ShardIndex.build`).

    ``vectors``: (n, d) float (normalised by :meth:`ShardIndex.build`); ``meta``: n rows with at
    least image_id, product_id, category, title, quality, popularity. Empty buckets get no shard.
    Returns shards sorted by (category, bucket); rows keep their input order within a shard.
    """
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[0] != meta.num_rows:
        raise ValueError(
            f"vectors {vectors.shape} and meta ({meta.num_rows} rows) must have equal row counts"
        )
    shards: list[BuiltShard] = []
    for category, bucket, rows in shard_groups(meta, buckets_per_category):
        shards.append(
            build_shard(category, bucket, vectors[rows], meta.take(pa.array(rows)), tuning,
                        ivf_above, large_engine, rescore_dtype)
        )  # fmt: skip
    return shards
