"""One index shard: a FAISS binary index over sign codes plus the float vectors and row metadata.

Search is two-stage, after Alibaba's visual search: a Hamming-distance shortlist from the binary
index (an exhaustive ``IndexBinaryFlat``, or an ``IndexBinaryIVF`` for large shards), then exact
inner-product rescoring of the shortlist with the float vectors.
Serialisation is to and from ``bytes`` only; the storage layer writes the files.
"""

from __future__ import annotations

import io

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vsearch.index.codec import BinaryCodec
from vsearch.index.ivf import ivf_lists, training_rows

#: Metadata columns every shard carries, aligned with its rows.
META_COLUMNS: tuple[str, ...] = (
    "image_id",
    "product_id",
    "category",
    "title",
    "quality",
    "popularity",
)
_FLOAT_COLUMNS = ("quality", "popularity")

CODES_FILE = "codes.faissbin"
VECTORS_FILE = "vectors.npy"
META_FILE = "meta.parquet"
#: The files :meth:`ShardIndex.to_bytes` produces.
SHARD_FILES: tuple[str, ...] = (CODES_FILE, VECTORS_FILE, META_FILE)

#: Bound on ``queries * candidates * dim`` floats gathered at once while rescoring.
_RESCORE_FLOATS = 1 << 24


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Row-normalise ``x``: (n, d) float -> (n, d) float32; all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _check_meta(meta: pa.Table, rows: int) -> pa.Table:
    missing = [c for c in META_COLUMNS if c not in meta.column_names]
    if missing:
        raise ValueError(f"meta is missing columns {missing}; needs {list(META_COLUMNS)}")
    if meta.num_rows != rows:
        raise ValueError(f"meta has {meta.num_rows} rows but there are {rows} vectors")
    for col in _FLOAT_COLUMNS:
        i = meta.schema.get_field_index(col)
        if meta.schema.field(i).type != pa.float32():
            meta = meta.set_column(i, col, meta.column(col).cast(pa.float32()))
    return meta.combine_chunks()


class ShardIndex:
    """A searchable shard of ``len(self)`` rows of width ``dim``.

    Holds a FAISS binary index (:attr:`engine`) over the sign codes, the (n, d) float32 L2-normalised
    vectors and a metadata table with at least :data:`META_COLUMNS` (quality and popularity as
    float32), row ``i`` of each describing the same image. Build with :meth:`build` or
    :meth:`from_bytes`.
    """

    def __init__(
        self,
        name: str,
        index: faiss.IndexBinary,
        vectors: np.ndarray,
        meta: pa.Table,
        shortlist: int | None = None,
    ) -> None:
        """Assemble a shard from parts already checked by :meth:`build` / :meth:`from_bytes`."""
        #: The shortlist a search without one uses: tuned at build time to the index's recall
        #: target (``vsearch.index.tuning``) and recorded in the manifest; None: not tuned.
        self.shortlist = shortlist
        self._name = name
        self._index = index
        self._vectors = vectors
        self._vectors.setflags(write=False)
        self._meta = meta
        self._codec = BinaryCodec(vectors.shape[1])

    @classmethod
    def build(
        cls, name: str, vectors: np.ndarray, meta: pa.Table, ivf_above: int | None = None
    ) -> ShardIndex:
        """Build a shard from (n, d) float vectors and an n-row metadata table.

        ``d`` must be a positive multiple of 8. Vectors are L2-normalised here (defensively: they
        need not arrive normalised); zero or non-finite rows raise ``ValueError``. Metadata must
        hold :data:`META_COLUMNS`; quality and popularity are cast to float32, extra columns kept.
        The Hamming engine is an exhaustive ``IndexBinaryFlat`` ("BFlat") up to ``ivf_above``
        rows (None: always), above that an inverted file over the codes ("BIVF<nlist>", about
        ``4 sqrt(n)`` lists trained on the codes) whose lists probed are tuned with the shortlist.
        """
        if not name:
            raise ValueError("shard name must be non-empty")
        vectors = np.asarray(vectors)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be (n, d), got shape {vectors.shape}")
        if not np.issubdtype(vectors.dtype, np.floating):
            raise TypeError(f"vectors must be floating point, got {vectors.dtype}")
        codec = BinaryCodec(vectors.shape[1])
        if not np.isfinite(vectors).all():
            raise ValueError("vectors contain NaN or infinite values")
        if vectors.shape[0] and (np.linalg.norm(vectors, axis=1) == 0).any():
            raise ValueError("vectors contain all-zero rows, which cannot be normalised")
        meta = _check_meta(meta, vectors.shape[0])
        vectors = np.ascontiguousarray(l2_normalise(vectors))
        n = vectors.shape[0]
        codes = codec.encode(vectors) if n else np.zeros((0, codec.code_size), np.uint8)
        index: faiss.IndexBinary
        if ivf_above is not None and n > ivf_above:
            nlist = ivf_lists(n)
            ivf = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(codec.dim), codec.dim, nlist)
            ivf.train(codes[training_rows(n, nlist)])
            ivf.nprobe = min(16, nlist)
            index = ivf
        else:
            index = faiss.IndexBinaryFlat(codec.dim)
        if n:
            index.add(codes)
        return cls(name, index, vectors, meta)

    @property
    def engine(self) -> str:
        """The Hamming engine as a FAISS binary factory string: "BFlat" or "BIVF<nlist>"."""
        if isinstance(self._index, faiss.IndexBinaryIVF):
            return f"BIVF{self._index.nlist}"
        return "BFlat"

    @property
    def nprobe(self) -> int | None:
        """Inverted lists a search probes (the tuned value once tuned); None for "BFlat"."""
        return int(self._index.nprobe) if isinstance(self._index, faiss.IndexBinaryIVF) else None

    @nprobe.setter
    def nprobe(self, value: int | None) -> None:
        if value is not None and isinstance(self._index, faiss.IndexBinaryIVF):
            self._index.nprobe = max(1, min(int(value), int(self._index.nlist)))

    @property
    def name(self) -> str:
        """The shard's name (unique within an index)."""
        return self._name

    @property
    def dim(self) -> int:
        """Width ``d`` of the float vectors."""
        return int(self._vectors.shape[1])

    @property
    def vectors(self) -> np.ndarray:
        """(n, d) float32 L2-normalised vectors, read-only."""
        return self._vectors

    @property
    def meta(self) -> pa.Table:
        """n-row metadata table aligned with :attr:`vectors`."""
        return self._meta

    def __len__(self) -> int:
        return int(self._vectors.shape[0])

    def __repr__(self) -> str:
        return f"ShardIndex(name={self._name!r}, rows={len(self)}, dim={self.dim})"

    def search(
        self, queries: np.ndarray, k: int, shortlist: int | None = None, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows per query by inner product, via a Hamming shortlist.

        ``queries``: (m, d) float, L2-normalised here (so scores are cosine similarities).
        The binary index proposes ``max(k, shortlist)`` candidates per query (all rows when the
        shard is smaller), which are rescored exactly with the float vectors. ``shortlist=None``
        uses the shard's tuned :attr:`shortlist` (``ValueError`` when it has none); ``nprobe``
        overrides the tuned :attr:`nprobe` of a "BIVF" engine for this call.
        Returns ``(scores, rows)``: (m, k) float32 descending and (m, k) int64 row ids into this
        shard, padded with ``-inf`` / ``-1`` past the shard's size. Equal scores are ordered by
        ascending row id.
        """
        queries = self._check_queries(queries)
        if shortlist is None:
            if self.shortlist is None:
                raise ValueError(
                    f"shard {self._name!r} has no tuned shortlist (an index built before "
                    "tuning); set index.shortlist"
                )
            shortlist = self.shortlist
        if k < 1 or shortlist < 0:
            raise ValueError(f"need k >= 1 and shortlist >= 0, got k={k}, shortlist={shortlist}")
        m = queries.shape[0]
        scores = np.full((m, k), -np.inf, dtype=np.float32)
        rows = np.full((m, k), -1, dtype=np.int64)
        n_cand = min(max(k, shortlist), len(self))
        if m == 0 or n_cand == 0:
            return scores, rows
        queries = l2_normalise(queries)
        tuned = self.nprobe
        try:
            self.nprobe = nprobe
            _, cand = self._index.search(self._codec.encode(queries), n_cand)
        finally:
            self.nprobe = tuned
        kk = min(k, n_cand)
        step = max(1, _RESCORE_FLOATS // (n_cand * self.dim))
        for start in range(0, m, step):
            block = slice(start, start + step)
            s, r = _rescore(queries[block], self._vectors, cand[block], kk)
            scores[block, :kk] = s
            rows[block, :kk] = r
        return scores, rows

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        queries = np.asarray(queries)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (m, {self.dim}), got shape {queries.shape}")
        if not np.isfinite(queries).all():
            raise ValueError("queries contain NaN or infinite values")
        return queries

    def to_bytes(self) -> dict[str, bytes]:
        """Serialise to ``{file name: bytes}`` with the names in :data:`SHARD_FILES`."""
        codes = faiss.serialize_index_binary(self._index)
        vec_buf = io.BytesIO()
        np.save(vec_buf, self._vectors, allow_pickle=False)
        meta_buf = pa.BufferOutputStream()
        pq.write_table(self._meta, meta_buf)
        return {
            CODES_FILE: codes.tobytes(),
            VECTORS_FILE: vec_buf.getvalue(),
            META_FILE: meta_buf.getvalue().to_pybytes(),
        }

    @classmethod
    def from_bytes(
        cls,
        name: str,
        files: dict[str, bytes],
        shortlist: int | None = None,
        nprobe: int | None = None,
    ) -> ShardIndex:
        """Inverse of :meth:`to_bytes` (``shortlist`` and ``nprobe``: the tuned ones, from the
        manifest); ``ValueError`` when a file is missing or parts disagree."""
        missing = [f for f in SHARD_FILES if f not in files]
        if missing:
            raise ValueError(f"shard {name!r} is missing files {missing}")
        index = faiss.deserialize_index_binary(np.frombuffer(files[CODES_FILE], dtype=np.uint8))
        vectors = np.load(io.BytesIO(files[VECTORS_FILE]), allow_pickle=False)
        meta = pq.read_table(pa.BufferReader(files[META_FILE]))
        if vectors.ndim != 2 or vectors.dtype != np.float32:
            raise ValueError(f"shard {name!r}: vectors must be (n, d) float32")
        if index.d != vectors.shape[1] or index.ntotal != vectors.shape[0]:
            raise ValueError(
                f"shard {name!r}: binary index ({index.ntotal} x {index.d} bits) does not match "
                f"vectors {vectors.shape}"
            )
        meta = _check_meta(meta, vectors.shape[0])
        shard = cls(name, index, np.ascontiguousarray(vectors), meta, shortlist)
        shard.nprobe = nprobe
        return shard


def _rescore(
    queries: np.ndarray, vectors: np.ndarray, cand: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of candidate rows: queries (b, d), cand (b, c) int64 -> (b, k) x 2.
    A candidate -1 (an inverted file that found fewer) stays -1 with score ``-inf``, last."""
    valid = cand >= 0
    sims = np.einsum("bcd,bd->bc", vectors[np.where(valid, cand, 0)], queries, dtype=np.float32)
    sims = np.where(valid, sims, np.float32(-np.inf))
    if k < sims.shape[1]:
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        sims = np.take_along_axis(sims, part, axis=1)
        cand = np.take_along_axis(cand, part, axis=1)
    order = np.lexsort((cand, -sims), axis=1)
    sims, cand = np.take_along_axis(sims, order, axis=1), np.take_along_axis(cand, order, axis=1)
    return sims, np.where(np.isfinite(sims), cand, -1)
