"""Embedded catalogue rows staged on storage, one folder per shard, so each shard is built from
its own rows by its own worker and nothing gathers the whole catalogue's vectors in one place.

A staged table holds the index metadata columns plus ``embedding``: each row's float32 vector as
raw little-endian bytes (portable: any Parquet reader, no tensor extension type). This module only
groups and encodes; the runtime writes and reads the files.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from vsearch.index.builder import shard_groups, shard_name
from vsearch.index.manifest import CATALOG, Role
from vsearch.index.shard import META_COLUMNS

__all__ = ["decode_staged", "encode_staged", "stage_groups"]


def encode_staged(vectors: np.ndarray, meta: pa.Table) -> pa.Table:
    """``meta`` (n rows with :data:`META_COLUMNS`) plus ``embedding`` from (n, d) ``vectors``."""
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    if vectors.ndim != 2 or vectors.shape[0] != meta.num_rows:
        raise ValueError(f"vectors {vectors.shape} do not match {meta.num_rows} metadata rows")
    width = vectors.shape[1] * 4
    data = pa.py_buffer(vectors.tobytes())
    offsets = pa.py_buffer(np.arange(0, (len(vectors) + 1) * width, width, dtype=np.int32))
    column = pa.Array.from_buffers(pa.binary(), len(vectors), [None, offsets, data])
    return meta.select(list(META_COLUMNS)).append_column("embedding", column)


def decode_staged(table: pa.Table) -> tuple[np.ndarray, pa.Table]:
    """Inverse of :func:`encode_staged`: ``(vectors (n, d) float32, meta)``; ``ValueError`` when
    the rows' vectors are not all of one width."""
    column = table.column("embedding").combine_chunks()
    meta = table.select(list(META_COLUMNS))
    if len(column) == 0:
        return np.zeros((0, 0), np.float32), meta
    lengths = np.asarray(pa.compute.binary_length(column))
    if (lengths != lengths[0]).any() or lengths[0] % 4:
        raise ValueError("staged embeddings have different or invalid widths")
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int32)[column.offset]
    raw = np.frombuffer(column.buffers()[2], dtype="<f4", offset=int(offsets),
                        count=len(column) * int(lengths[0]) // 4)  # fmt: skip
    return raw.reshape(len(column), -1).astype(np.float32), meta


def stage_groups(
    vectors: np.ndarray, meta: pa.Table, buckets_per_category: int, role: Role = CATALOG
) -> dict[str, tuple[str, int, pa.Table]]:
    """Split rows by shard: ``{shard name: (category, bucket, staged table)}`` with the bucket
    of each image id as :func:`~vsearch.index.builder.build_shards` assigns it (the names of
    ``role``'s shards)."""
    return {
        shard_name(category, bucket, role): (
            category,
            bucket,
            encode_staged(vectors[rows], meta.take(pa.array(rows))),
        )
        for category, bucket, rows in shard_groups(meta, buckets_per_category)
    }
