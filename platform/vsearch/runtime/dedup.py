"""Ray side of the dedup job: embed listings in Ray Data actor pools, join every shard in its own task.

The driver never holds the listings' vectors. Embeddings stream from the actor pool to Parquet on
storage (``<run>/embeddings/<channel>/``, one ``shard`` column = the listing's category, or "all");
each shard's self-join is a Ray task that reads only its shard's rows (a Parquet filter), searches
them (``vsearch.dedup.neighbours``) and writes its candidates to ``<run>/candidates/<channel>/``.
The lexical channel's BM25 index is built per shard in a task too. The driver reads back only the
candidates: ``n x k`` rows per channel.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data
from ray.data import ActorPoolStrategy

from vsearch.config import Config
from vsearch.dedup.lexical import Bm25Index
from vsearch.dedup.neighbours import Neighbours, merge_neighbours, vector_neighbours
from vsearch.runtime.embedding import ImageBatchEmbedder
from vsearch.storage.fs import Storage

__all__ = [
    "ListingImageEmbedder",
    "ListingTextEmbedder",
    "embed_listings",
    "join_shards",
    "lexical_shards",
]

_CARRIED = ("row", "shard", "source")


def _vector_table(batch: dict[str, np.ndarray], vectors: np.ndarray, errors: list[str]) -> pa.Table:
    d = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    columns = {name: pa.array(np.asarray(batch[name]).tolist()) for name in _CARRIED}
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat, d)
    columns["error"] = pa.array(errors, pa.string())
    return pa.table(columns)


class ListingTextEmbedder:
    """Batch in: ``row``, ``shard``, ``source``, ``text``. Batch out (Arrow): those but ``text``,
    ``embedding`` (fixed-size list of float32, L2-normalised; zeros when skipped) and ``error``
    ("" or why the row was skipped)."""

    def __init__(self, model_path: str | None, batch_size: int) -> None:
        from vsearch.models.text import TextEncoder

        self.encoder = TextEncoder(model_path)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        texts = [str(t) if t is not None else "" for t in batch["text"]]
        vectors = self.encoder.encode(texts, self.batch_size)
        errors = ["" if t.strip() else "empty text" for t in texts]
        return _vector_table(batch, vectors, errors)


class ListingImageEmbedder(ImageBatchEmbedder):
    """Batch in: ``row``, ``shard``, ``source``, ``image_uri``. Batch out as
    ``ListingTextEmbedder``'s, the image embedded by model ``model_version`` of the model store
    under ``model_prefix``; a missing, unreadable or corrupt image gives a zero vector and its
    reason in ``error``."""

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        vectors, errors = self.embed_uris(batch["image_uri"])
        return _vector_table(batch, vectors, errors)


def embed_listings(
    cfg: Config, work: pa.Table, channel: str, out_prefix: str, **image_kwargs: Any
) -> dict[str, int]:
    """Embed ``work`` (``row``, ``shard``, ``source`` and ``text`` or ``image_uri``) on Ray Data
    into Parquet under ``out_prefix``; return the skipped rows by reason."""
    storage = Storage(cfg.storage, cfg.storage_options)
    fs, root = storage.pyarrow_filesystem()
    d = cfg.dedup
    if channel == "text":
        udf, kwargs = (
            ListingTextEmbedder,
            {"model_path": d.text_model_path, "batch_size": d.batch_size},
        )
        memory = 1024 * 2**20
    else:
        udf = ListingImageEmbedder
        kwargs = {
            "storage_root": cfg.storage,
            "storage_options": cfg.storage_options,
            "max_pixels": cfg.index.max_pixels,
            **image_kwargs,
        }
        memory = cfg.index.backbone_actor_memory_mb * 2**20
    storage.delete(out_prefix)
    blocks = max(1, min(4 * d.actors, work.num_rows // max(d.batch_size, 1) or 1))
    ds = ray.data.from_arrow(work).repartition(blocks)
    embedded = ds.map_batches(
        udf,
        fn_constructor_kwargs=kwargs,
        batch_size=d.batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=d.actors),
        num_cpus=d.cpus_per_actor,
        memory=memory,
    )
    embedded.write_parquet(posixpath.join(root, out_prefix), filesystem=fs)
    errors = pq.read_table(posixpath.join(root, out_prefix), filesystem=fs, columns=["error"])
    return dict(Counter(e.split(":", 1)[0] for e in errors["error"].to_pylist() if e))


def _write_neighbours(storage: Storage, name: str, found: Neighbours) -> None:
    storage.write_table(
        name,
        pa.table(
            {
                "query": found.query,
                "neighbour": found.neighbour,
                "score": found.score,
                "rank": found.rank,
            }
        ),
    )


def _read_neighbours(storage: Storage, names: list[str], k: int) -> Neighbours:
    parts = []
    for name in names:
        t = storage.read_table(name)
        parts.append(
            Neighbours(
                t["query"].to_numpy(),
                t["neighbour"].to_numpy(),
                t["score"].to_numpy(),
                t["rank"].to_numpy(),
            )
        )
    return merge_neighbours(parts, k)


@ray.remote
def _join_shard(
    root: str, options: dict, emb_prefix: str, out_name: str, shard: str, asked: np.ndarray | None,
    k: int, cross_source_only: bool, exact_below: int, nprobe: int,
) -> tuple[str, int]:  # fmt: skip
    storage = Storage(root, options)
    fs, base = storage.pyarrow_filesystem()
    table = pq.read_table(
        posixpath.join(base, emb_prefix),
        filesystem=fs,
        filters=[("shard", "=", shard)],
        columns=["row", "source", "embedding", "error"],
    )
    rows = table["row"].to_numpy()
    emb = table["embedding"].combine_chunks()
    vectors = emb.values.to_numpy().reshape(len(rows), emb.type.list_size)
    valid = np.asarray([not e for e in table["error"].to_pylist()])
    queries = None if asked is None else np.isin(rows, asked)
    local = vector_neighbours(
        vectors,
        np.full(len(rows), shard),
        table["source"].to_numpy(zero_copy_only=False),
        k,
        valid=valid,
        queries=queries,
        cross_source_only=cross_source_only,
        within_category=False,
        exact_below=exact_below,
        nprobe=nprobe,
    )
    found = Neighbours(rows[local.query], rows[local.neighbour], local.score, local.rank)
    _write_neighbours(storage, out_name, found)
    return out_name, len(found)


def join_shards(
    cfg: Config, emb_prefix: str, out_prefix: str, shards: list[str], asked: np.ndarray | None
) -> Neighbours:
    """The self-join of every shard of ``emb_prefix``, one Ray task per shard; candidates are
    written under ``out_prefix`` and returned (rows of the listing table)."""
    d = cfg.dedup
    refs = [
        _join_shard.options(num_cpus=d.cpus_per_actor).remote(
            cfg.storage,
            cfg.storage_options,
            emb_prefix,
            f"{out_prefix}/{i:05d}.parquet",
            shard,
            asked,
            d.k,
            d.cross_source_only,
            d.exact_below,
            d.nprobe,
        )
        for i, shard in enumerate(shards)
    ]
    names = [name for name, _ in ray.get(refs)]
    return _read_neighbours(Storage(cfg.storage, cfg.storage_options), names, d.k)


@ray.remote
def _lexical_shard(
    root: str, options: dict, out_name: str, rows: np.ndarray, texts: list[str],
    sources: list[str], asked: np.ndarray | None, k: int, cross_source_only: bool,
) -> tuple[str, int]:  # fmt: skip
    index = Bm25Index(texts, ["all"] * len(texts), sources)
    queries = None if asked is None else np.isin(rows, asked)
    local = index.neighbours(k, queries, cross_source_only=cross_source_only, within_category=False)
    found = Neighbours(rows[local.query], rows[local.neighbour], local.score, local.rank)
    _write_neighbours(Storage(root, options), out_name, found)
    return out_name, len(found)


def lexical_shards(
    cfg: Config, texts: list[str], shards: np.ndarray, sources: np.ndarray, out_prefix: str,
    asked: np.ndarray | None,
) -> Neighbours:  # fmt: skip
    """BM25 candidates of every listing within its shard, one Ray task per shard."""
    d = cfg.dedup
    refs = []
    for i, shard in enumerate(np.unique(shards)):
        rows = np.flatnonzero(shards == shard)
        refs.append(
            _lexical_shard.options(num_cpus=d.cpus_per_actor).remote(
                cfg.storage,
                cfg.storage_options,
                f"{out_prefix}/{i:05d}.parquet",
                rows,
                [texts[r] for r in rows],
                [str(sources[r]) for r in rows],
                asked,
                d.k,
                d.cross_source_only,
            )
        )
    names = [name for name, _ in ray.get(refs)]
    return _read_neighbours(Storage(cfg.storage, cfg.storage_options), names, d.k)
