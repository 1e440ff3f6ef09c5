"""Ray Data pipeline of the mine job: click log Parquet -> sessions -> triplets Parquet.

``read_parquet`` -> ``groupby("query_id").map_groups(SessionMiner)`` (an actor pool; each actor
reads the catalogue's product -> category map once) -> ``write_parquet``. The driver only sees
the summed counters: every session group returns its triplet rows plus one summary row with its
counters, the mined blocks stay in the object store (spilled to disk when large) while the
counters are summed and the triplet rows are written.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data
from ray.data import ActorPoolStrategy
from ray.data.context import ShuffleStrategy

from vsearch.config import Config, MiningConfig
from vsearch.storage.datasets import resolve_uri
from vsearch.storage.fs import Storage
from vsearch.training.click_mining import (
    STAT_NAMES,
    TRIPLET_SCHEMA,
    ProductCategories,
    mine_click_log,
)

#: What ``SessionMiner`` returns: the triplet columns (null on the summary row) and one int64
#: counter column per ``STAT_NAMES`` entry (zero on triplet rows).
MINED_SCHEMA = pa.schema(
    [f.with_nullable(True) for f in TRIPLET_SCHEMA]
    + [pa.field(f"stat_{name}", pa.int64(), nullable=False) for name in STAT_NAMES]
)

_SHUFFLES = {"sort": ShuffleStrategy.SORT_SHUFFLE_PULL_BASED, "hash": ShuffleStrategy.HASH_SHUFFLE}


@dataclass
class MinedTriplets:
    """Where the triplets were written (a folder of Parquet files, ``TRIPLET_SCHEMA``) and the
    counters of ``vsearch.training.click_mining.STAT_NAMES`` summed over all sessions."""

    url: str
    stats: dict[str, int]

    @property
    def triplets(self) -> int:
        return self.stats["hard_triplets"] + self.stats["easy_triplets"]


class SessionMiner:
    """Ray Data ``map_groups`` UDF: the click rows of one session -> ``MINED_SCHEMA`` rows.

    Query image URIs relative to the dataset folder are made absolute URLs, as
    ``vsearch.storage.read_dataset`` does, so the triplets can be read from anywhere.
    """

    def __init__(
        self,
        storage_root: str,
        storage_options: dict[str, Any],
        dataset_prefix: str,
        mining: MiningConfig,
    ) -> None:
        self.storage = Storage(storage_root, storage_options)
        self.prefix = dataset_prefix
        self.cfg = mining
        fs, root = self.storage.pyarrow_filesystem()
        catalog = pq.read_table(
            posixpath.join(root, dataset_prefix, "catalog.parquet"),
            filesystem=fs,
            columns=["product_id", "category"],
        )
        self.products = ProductCategories.from_table(catalog)

    def __call__(self, group: pa.Table) -> pa.Table:
        uris = [
            resolve_uri(self.storage, self.prefix, u) for u in group["query_image_uri"].to_pylist()
        ]
        group = group.set_column(
            group.schema.get_field_index("query_image_uri"), "query_image_uri", pa.array(uris)
        )
        triplets, stats = mine_click_log(group, self.products, self.cfg)
        return with_summary_row(triplets, stats)


def with_summary_row(triplets: pa.Table, stats: dict[str, int]) -> pa.Table:
    """``triplets`` (``TRIPLET_SCHEMA``) plus one all-null row carrying ``stats``: ``MINED_SCHEMA``."""
    n = triplets.num_rows
    columns: list[pa.Array] = [
        pa.concat_arrays([triplets[name].combine_chunks(), pa.nulls(1, field.type)])
        for name, field in zip(TRIPLET_SCHEMA.names, TRIPLET_SCHEMA, strict=True)
    ]
    columns += [pa.array([0] * n + [stats[name]], pa.int64()) for name in STAT_NAMES]
    return pa.Table.from_arrays(columns, schema=MINED_SCHEMA)


def triplet_rows(batch: pa.Table) -> pa.Table:
    """The triplet rows of a ``MINED_SCHEMA`` batch, as ``TRIPLET_SCHEMA``."""
    rows = batch.filter(pc.is_valid(batch["positive_product_id"]))
    return rows.select(TRIPLET_SCHEMA.names).cast(TRIPLET_SCHEMA)


def block_totals(batch: pa.Table) -> pa.Table:
    """The counters of a ``MINED_SCHEMA`` batch summed into one row (a shuffle-free reduction)."""
    names = [f"stat_{name}" for name in STAT_NAMES]
    return pa.table({n: pa.array([pc.sum(batch[n]).as_py() or 0], pa.int64()) for n in names})


def mine_triplets(cfg: Config, dataset_prefix: str, version: str) -> MinedTriplets:
    """Mine ``<dataset_prefix>/clicks.parquet`` with the ``cfg.mine`` policy into Parquet files
    under ``<storage>/triplets/<version>/``. Raises ``FileNotFoundError`` without a click log."""
    storage = Storage(cfg.storage, cfg.storage_options)
    clicks_name = posixpath.join(dataset_prefix, "clicks.parquet")
    if not storage.exists(clicks_name):
        raise FileNotFoundError(
            f"no click log at {storage.url(clicks_name)}: this dataset has no clicks to mine"
        )
    fs, root = storage.pyarrow_filesystem()
    clicks = ray.data.read_parquet(posixpath.join(root, clicks_name), filesystem=fs)
    # The dataset's own copy of the context: the choice does not leak into other pipelines.
    clicks.context.shuffle_strategy = _SHUFFLES[cfg.mine.shuffle]
    mined = (
        clicks.groupby("query_id", num_partitions=cfg.mine.partitions)
        .map_groups(
            SessionMiner,
            fn_constructor_kwargs={
                "storage_root": cfg.storage,
                "storage_options": cfg.storage_options,
                "dataset_prefix": dataset_prefix,
                "mining": cfg.mine,
            },
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=cfg.mine.actors),
            num_cpus=cfg.mine.cpus_per_actor,
        )
        .materialize()
    )
    stats = dict.fromkeys(STAT_NAMES, 0)
    for row in mined.map_batches(block_totals, batch_format="pyarrow", batch_size=None).iter_rows():
        for name in STAT_NAMES:
            stats[name] += int(row[f"stat_{name}"])
    out = f"triplets/{version}"
    mined.map_batches(triplet_rows, batch_format="pyarrow", batch_size=None).write_parquet(
        posixpath.join(root, out), filesystem=fs
    )
    return MinedTriplets(url=storage.url(out), stats=stats)
