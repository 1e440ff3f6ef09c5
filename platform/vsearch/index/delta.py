"""Updates between full reindexes: added images go to a small delta segment per shard, deleted
and replaced ones become tombstones, and the base shards are shared, not rebuilt.

A delta version's manifest lists the base version's shard entries pointing at the folder that
holds their files (``ShardEntry.location``) with their tombstones (``deleted_rows``), plus one
delta segment ("<shard>-delta", an exhaustive sign-code shard, tuned like any other) per
(category, bucket) that has rows added since the last full reindex. Searching a category searches
its base and delta shards and merges them (``ShardedIndex`` does that for any shards of one
category); tombstoned rows are never returned. Each change rebuilds the touched delta segments
from their surviving rows plus the new ones, so a delta version never depends on an earlier
delta version's segments. The next full reindex builds everything afresh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from vsearch.index.builder import BuiltShard, shard_groups, shard_name
from vsearch.index.manifest import CATALOG, Manifest, ShardEntry
from vsearch.index.shard import META_COLUMNS, ShardIndex
from vsearch.index.tuning import TuningSpec, tune_search

__all__ = ["DeltaPlan", "delta_name", "plan_delta"]


def delta_name(category: str, bucket: int) -> str:
    """Name of the delta segment of ``(category, bucket)``: its base shard's name + "-delta"."""
    return f"{shard_name(category, bucket)}-delta"


@dataclass
class DeltaPlan:
    """What a change does: the new version's base entries (each pointing at the folder of its
    files, with its tombstones), the delta segments to write, and counts for the summary."""

    entries: list[ShardEntry]
    deltas: list[BuiltShard]
    added: int = 0
    replaced: int = 0
    deleted: int = 0
    #: Ids asked to be deleted that no shard holds.
    not_found: list[str] = field(default_factory=list)


def _ids(table: pa.Table) -> list[str]:
    return [str(i) for i in table.column("image_id").to_pylist()]


def plan_delta(
    manifest: Manifest,
    read_meta: Callable[[ShardEntry], pa.Table],
    load_shard: Callable[[ShardEntry], ShardIndex],
    add_vectors: np.ndarray,
    add_meta: pa.Table,
    delete_ids: Sequence[str],
    buckets_per_category: int,
    tuning: TuningSpec | None = TuningSpec(),  # noqa: B008 (frozen, so one shared default is safe)
    rescore_dtype: str = "float16",
) -> DeltaPlan:
    """Plan a delta version over ``manifest``: add ``add_vectors`` (n, d) with ``add_meta`` (n
    rows with :data:`META_COLUMNS`; an id the index already holds is replaced) and delete
    ``delete_ids``.

    ``read_meta(entry)`` gives a base shard's metadata (to find the rows of the ids) and
    ``load_shard(entry)`` a delta segment (its surviving rows are carried into the new one).
    ``ValueError`` when an id is both added and deleted, added twice, or the width differs.
    """
    add_vectors = np.asarray(add_vectors, dtype=np.float32)
    if add_vectors.ndim != 2 or add_vectors.shape[0] != add_meta.num_rows:
        raise ValueError(
            f"add_vectors {add_vectors.shape} and add_meta ({add_meta.num_rows} rows) must have "
            "equal row counts"
        )
    if add_meta.num_rows and add_vectors.shape[1] != manifest.dim:
        raise ValueError(f"added vectors are {add_vectors.shape[1]}-d, the index {manifest.dim}-d")
    added_ids = _ids(add_meta) if add_meta.num_rows else []
    if len(set(added_ids)) != len(added_ids):
        raise ValueError("the added rows repeat an image_id")
    deleting = {str(i) for i in delete_ids}
    both = deleting & set(added_ids)
    if both:
        raise ValueError(f"image ids both added and deleted: {sorted(both)[:5]}")
    remove = deleting | set(added_ids)
    found: set[str] = set()
    entries: list[ShardEntry] = []
    pooled: dict[tuple[str, int], list[tuple[np.ndarray, pa.Table]]] = {}
    for entry in manifest.shards:
        if entry.delta:
            shard = load_shard(entry)
            live = shard.live_rows()
            ids = np.asarray(_ids(shard.meta), dtype=object)
            hit = np.isin(ids[live], list(remove)) if remove else np.zeros(len(live), bool)
            found.update(ids[live][hit].tolist())
            keep = live[~hit]
            if len(keep):
                vectors = shard.float_rows(keep)
                meta = shard.meta.select(list(META_COLUMNS)).take(pa.array(keep))
                pooled.setdefault((entry.category, entry.bucket), []).append((vectors, meta))
            continue
        folder = entry.folder(manifest.version)
        if entry.role != CATALOG:  # reference photos of the category vote: not the catalogue's
            entries.append(entry.model_copy(update={"location": folder}))
            continue
        deleted = set(entry.deleted_rows)
        if remove:
            ids = np.asarray(_ids(read_meta(entry)), dtype=object)
            rows = np.flatnonzero(np.isin(ids, list(remove)))
            rows = np.asarray([r for r in rows.tolist() if r not in deleted], dtype=np.int64)
            found.update(ids[rows].tolist())
            deleted |= set(rows.tolist())
        entries.append(
            entry.model_copy(update={"location": folder, "deleted_rows": sorted(deleted)})
        )
    if add_meta.num_rows:
        meta = add_meta.select(list(META_COLUMNS))
        for category, bucket, rows in shard_groups(meta, buckets_per_category):
            pooled.setdefault((category, bucket), []).append(
                (add_vectors[rows], meta.take(pa.array(rows)))
            )
    deltas = []
    for (category, bucket), parts in sorted(pooled.items()):
        vectors = np.concatenate([v for v, _ in parts])
        meta = pa.concat_tables([m for _, m in parts]).combine_chunks()
        index = ShardIndex.build(
            delta_name(category, bucket), vectors, meta, rescore_dtype=rescore_dtype
        )
        tuned = tune_search(index, tuning) if tuning is not None else None
        deltas.append(BuiltShard(category, bucket, index, tuned, delta=True))
    return DeltaPlan(
        entries=entries,
        deltas=deltas,
        added=len(set(added_ids) - found),
        replaced=len(set(added_ids) & found),
        deleted=len(deleting & found),
        not_found=sorted(deleting - found),
    )
