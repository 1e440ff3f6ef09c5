"""One index shard: a FAISS index over compact codes plus the rescoring vectors and row metadata.

Search is two-stage, after Alibaba's visual search: a shortlist from the codes, then exact
inner-product rescoring of the shortlist with the float vectors. The codes are one of:

- sign bits searched by Hamming distance, exhaustively (``IndexBinaryFlat``, "BFlat") for small
  shards, or through an inverted file over the codes (``IndexBinaryIVF``, "BIVF<nlist>");
- 4-bit product-quantiser codes ("IVF<nlist>,PQ<d/2>x4fs": FAISS's ``IndexIVFPQFastScan``, the
  default): each vector itself (not its residual to its coarse centroid: residual codes needed
  a longer shortlist for the same recall, see benchmarks/results/index_experiments.md) is cut
  into ``d/2`` pairs of dimensions, each pair coded as one of 16 centroids learnt at build time
  (``d/2`` bytes a vector); the query's inner product with every code is summed from small
  lookup tables held in SIMD registers. Its estimate is close enough that short shortlists
  suffice, and for inner products the tables do not depend on the list probed, so probing many
  small lists is cheap;
- RaBitQ codes ("IVF<nlist>,RaBitQfs": FAISS's ``IndexIVFRaBitQFastScan``): each vector's
  residual to its coarse centroid is turned by a random rotation drawn at build time and kept as
  one bit per dimension plus two correction factors, and RaBitQ's estimator of the inner product
  ranks the candidates; that estimate tracks cosine far better than the Hamming distance of raw
  sign bits, so a much shorter shortlist reaches the same recall.

The rescoring vectors are float16 by default, float32 or int8 on request, kept in their own
file so that a searcher can memory-map it instead of loading it (:meth:`ShardIndex.from_bytes`
takes the opened rows): only the codes are resident. Float rows are a FAISS flat-codes index
(``vectors.faiss``: fp16 scalar-quantiser codes are the float16 values), which FAISS maps and,
for the PQ and RaBitQ engines, rescores from itself in the same call (``IndexRefine``), with no
per-candidate work in Python. int8 rows carry their own scale (a record of ``d`` int8 values and
one float32: ``d + 4`` bytes a row, ``vectors.npy``) and are rescored by numpy, as are the
shortlists of sign-code engines and the float ``vectors.npy`` of shards written before.
Serialisation is to and from ``bytes``; the storage layer writes and maps the files.
"""

from __future__ import annotations

import functools
import io
import math

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
#: Float16 or float32 rescoring rows: a FAISS flat-codes index (``IndexScalarQuantizer`` fp16 or
#: ``IndexFlatIP``) whose codes are the rows, which FAISS memory-maps and rescores with itself.
VECTORS_FILE = "vectors.faiss"
#: int8 rescoring rows (records of :func:`int8_rows`), and the float rows of shards written
#: before ``vectors.faiss``: a numpy ``.npy`` file, memory-mapped by numpy.
NPY_VECTORS_FILE = "vectors.npy"
#: The rescoring-row files a shard can have (exactly one of them).
VECTOR_FILES: tuple[str, ...] = (VECTORS_FILE, NPY_VECTORS_FILE)
META_FILE = "meta.parquet"
#: The files :meth:`ShardIndex.to_bytes` produces for float16 or float32 rows (int8 rows are
#: in :data:`NPY_VECTORS_FILE` instead of :data:`VECTORS_FILE`).
SHARD_FILES: tuple[str, ...] = (CODES_FILE, VECTORS_FILE, META_FILE)

#: The FastScan search variant PQ and RaBitQ shards use (see ``ShardIndex.__init__``).
_FASTSCAN_IMPLEM = 10
#: Largest k FAISS's GPU indexes search for.
_GPU_MAX_K = 2048
#: Bound on ``queries * candidates * dim`` floats gathered at once while rescoring.
_RESCORE_FLOATS = 1 << 24

#: Engines a large shard can get (``index.large_engine``): 4-bit PQ codes, RaBitQ codes or
#: Hamming sign bits.
LARGE_ENGINES: tuple[str, ...] = ("pq", "rabitq", "bivf")
#: The error a search with a NaN or infinite query value raises.
NON_FINITE_QUERIES = "queries contain NaN or infinite values"
#: Dtypes the rescoring vectors can be stored in (``index.rescore_dtype``).
RESCORE_DTYPES: tuple[str, ...] = ("float16", "float32", "int8")


def int8_rows(dim: int) -> np.dtype:
    """The record an int8 rescoring row is stored as: ``q`` (``dim`` int8 values) and ``s`` (its
    float32 scale); the row is ``q * s``."""
    return np.dtype([("q", "i1", (dim,)), ("s", "<f4")])


def store_rows(vectors: np.ndarray, dtype: str) -> np.ndarray:
    """(n, d) float vectors as stored rescoring rows of ``dtype`` (:data:`RESCORE_DTYPES`): a
    float array, or for int8 an (n,) record array of :func:`int8_rows` with each row scaled so
    its largest magnitude is 127 (products of unit vectors then stay within about 3e-3 at
    128 d, 5e-3 at 32 d)."""
    if dtype != "int8":
        return np.ascontiguousarray(vectors.astype(dtype))
    x = np.asarray(vectors, dtype=np.float32)
    peak = np.abs(x).max(axis=1) if x.size else np.zeros(len(x), np.float32)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    out = np.empty(len(x), dtype=int8_rows(x.shape[1]))
    out["q"] = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)
    out["s"] = scale
    return out


def rows_dtype(vectors: np.ndarray) -> str | None:
    """The :data:`RESCORE_DTYPES` name of stored rescoring rows; None when they are not such."""
    names = vectors.dtype.names
    if names == ("q", "s") and vectors.ndim == 1 and vectors.dtype["q"].base == np.int8:
        if vectors.dtype["q"].ndim == 1 and vectors.dtype["s"] == np.float32:
            return "int8"
        return None
    if names is None and vectors.ndim == 2 and vectors.dtype.name in ("float16", "float32"):
        return vectors.dtype.name
    return None


def rows_dim(vectors: np.ndarray) -> int:
    """Width ``d`` of stored rescoring rows."""
    return int(vectors.dtype["q"].shape[0]) if vectors.dtype.names else int(vectors.shape[1])


def rows_index(vectors: np.ndarray) -> faiss.Index | None:
    """The FAISS flat-codes index holding float16 / float32 rescoring rows (the same bytes:
    fp16 scalar-quantiser codes are the float16 values); None for int8 records."""
    dtype = rows_dtype(vectors)
    if dtype not in ("float16", "float32"):
        return None
    dim = rows_dim(vectors)
    index: faiss.Index
    if dtype == "float16":
        index = faiss.IndexScalarQuantizer(
            dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        )
    else:
        index = faiss.IndexFlatIP(dim)
    if len(vectors):
        index.add_sa_codes(np.ascontiguousarray(vectors).view(np.uint8))
    return index


class _RowsMemory:
    """The numpy array interface of a flat-codes index's rows; as an array's ``base`` it keeps
    the index (and so its memory or file mapping) alive as long as any view of the rows."""

    def __init__(self, index: faiss.Index, dtype: np.dtype, shape: tuple[int, int]) -> None:
        self.index = index
        self.__array_interface__ = {
            "shape": shape,
            "typestr": dtype.str,
            "data": (int(index.codes.data()), True),  # read-only
            "version": 3,
        }


def index_rows(index: faiss.Index) -> np.ndarray:
    """Read-only (n, d) numpy view of the rows a :func:`rows_index` index holds (no copy: the
    index's memory, memory-mapped when FAISS read it so); the view keeps the index alive."""
    dtype = np.dtype(np.float16 if isinstance(index, faiss.IndexScalarQuantizer) else np.float32)
    n, dim = int(index.ntotal), int(index.d)
    if n == 0:
        return np.zeros((0, dim), dtype=dtype)
    return np.asarray(_RowsMemory(index, dtype, (n, dim)))


def decode_rows(vectors: np.ndarray, rows: np.ndarray | slice) -> np.ndarray:
    """Stored rescoring rows ``rows`` as float32 (the int8 ones times their scales)."""
    picked = vectors[rows]
    if vectors.dtype.names:
        return picked["q"].astype(np.float32) * picked["s"][..., None]
    return _widen(picked)


@functools.cache
def _fp16_codec(dim: int) -> faiss.IndexScalarQuantizer:
    return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16)


def _widen(rows: np.ndarray) -> np.ndarray:
    """Float rows (any leading shape, float16 or float32) as float32. float16 goes through
    FAISS's fp16 codec (SIMD), about 2.5x faster than numpy's ``astype`` at 128 d."""
    if rows.dtype != np.float16 or rows.size == 0:
        return rows.astype(np.float32, copy=False)
    dim = rows.shape[-1]
    flat = np.ascontiguousarray(rows).reshape(-1, dim)
    out = np.empty(flat.shape, dtype=np.float32)
    _fp16_codec(dim).sa_decode_c(
        len(flat), faiss.swig_ptr(flat.view(np.uint8)), faiss.swig_ptr(out)
    )
    return out.reshape(rows.shape)


def code_lists(n: int) -> int:
    """Coarse lists of a PQ or RaBitQ shard of ``n`` rows: about ``sqrt(n)`` (1,000 at 1M, where
    nprobe 32 reached recall@10 0.95 with a refine of 160 on FAISS's synthetic vectors), at least
    16 and at most one per 39 rows (FAISS's minimum of training points per centroid)."""
    return int(max(1, min(max(16, round(np.sqrt(n))), n // 39)))


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

    Holds a FAISS index (:attr:`engine`) over the binary codes, the n L2-normalised rescoring
    rows (float16, float32 or int8 with scales, possibly memory-mapped) and a metadata table with at least
    :data:`META_COLUMNS` (quality and popularity as float32), row ``i`` of each describing the
    same image. Build with :meth:`build` or :meth:`from_bytes`.
    """

    def __init__(
        self,
        name: str,
        index: faiss.IndexBinary | faiss.Index,
        vectors: np.ndarray | faiss.Index,
        meta: pa.Table,
        shortlist: int | None = None,
    ) -> None:
        """Assemble a shard from parts already checked by :meth:`build` / :meth:`from_bytes`.
        ``vectors``: the stored rescoring rows (a numpy array) or the :func:`rows_index`
        holding them."""
        #: The shortlist a search without one uses: tuned at build time to the index's recall
        #: target (``vsearch.index.tuning``) and recorded in the manifest; None: not tuned.
        self.shortlist = shortlist
        self._name = name
        self._index = index
        #: A GPU copy of an exhaustive sign-code engine (:meth:`move_to_gpu`); None: CPU only.
        self._gpu_index: faiss.IndexBinary | None = None
        self._binary = isinstance(index, faiss.IndexBinary)
        if isinstance(index, faiss.IndexIVFFastScan):
            # FastScan's variant 10 keeps the shortlist in a heap and scans query by query; the
            # default for shortlists over 20 (13: a reservoir, queries batched) gave the same
            # results in 15-17% more search time at shortlists of 128-256 (1M vectors, 1 thread).
            index.implem = _FASTSCAN_IMPLEM
        #: Inverted lists a float-code (PQ, RaBitQ) search probes; binary IVFs keep theirs inside.
        self._float_nprobe = 1
        self._ivf_params: dict[int, faiss.SearchParametersIVF] = {}
        #: The FAISS index holding float rescoring rows (None: numpy rows) and, for a float-code
        #: engine, the same engine with FAISS rescoring its shortlist from those rows.
        self._rows_index: faiss.Index | None = None
        self._refine: faiss.IndexRefine | None = None
        self._refine_params: dict[tuple[int, int, int], faiss.IndexRefineSearchParameters] = {}
        #: The local file the rescoring rows are memory-mapped from (set by whoever opened it,
        #: e.g. ``IndexStore.load_shards``); None when they are in memory.
        self.rows_file: str | None = None
        if isinstance(vectors, faiss.Index):
            self._rows_index = vectors
            vectors = index_rows(vectors)
            if not self._binary:
                self._refine = faiss.IndexRefine(index, self._rows_index)
        self._vectors = vectors
        if vectors.flags.writeable:
            self._vectors.setflags(write=False)
        #: The same rows as a plain ndarray (a memory map's numpy subclass costs microseconds a
        #: gather in the rescoring).
        self._rows = np.asarray(vectors)
        self._meta = meta
        self._codec = BinaryCodec(rows_dim(vectors))
        #: Rows deleted since the shard was built (tombstones), as a mask; None: none.
        self._deleted: np.ndarray | None = None
        self._tombstones = 0

    @classmethod
    def build(
        cls,
        name: str,
        vectors: np.ndarray,
        meta: pa.Table,
        ivf_above: int | None = None,
        large_engine: str = "pq",
        rescore_dtype: str = "float16",
    ) -> ShardIndex:
        """Build a shard from (n, d) float vectors and an n-row metadata table.

        ``d`` must be a positive multiple of 8. Vectors are L2-normalised here (defensively: they
        need not arrive normalised); zero or non-finite rows raise ``ValueError``. Metadata must
        hold :data:`META_COLUMNS`; quality and popularity are cast to float32, extra columns kept.
        The engine is an exhaustive Hamming scan ("BFlat") up to ``ivf_above`` rows (None:
        always); above that ``large_engine`` picks 4-bit PQ codes ("IVF<nlist>,PQ<d/2>x4fs") or
        RaBitQ codes ("IVF<nlist>,RaBitQfs") under an inverted file of :func:`code_lists` lists,
        or an inverted file over sign codes ("BIVF<nlist>", about ``4 sqrt(n)`` lists); the lists
        probed are tuned with the shortlist. The rescoring vectors are kept as ``rescore_dtype``
        (see :data:`RESCORE_DTYPES`): float16 and float32 rows in a FAISS flat-codes index
        (:func:`rows_index`), which rescores the shortlist of a PQ or RaBitQ engine itself.
        """
        if not name:
            raise ValueError("shard name must be non-empty")
        if large_engine not in LARGE_ENGINES:
            raise ValueError(f"large_engine must be one of {LARGE_ENGINES}, got {large_engine!r}")
        if rescore_dtype not in RESCORE_DTYPES:
            raise ValueError(
                f"rescore_dtype must be one of {RESCORE_DTYPES}, got {rescore_dtype!r}"
            )
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
        index: faiss.IndexBinary | faiss.Index
        large = ivf_above is not None and n > ivf_above
        if large and large_engine in ("pq", "rabitq"):
            nlist = code_lists(n)
            quantizer = faiss.IndexFlatIP(codec.dim)
            if large_engine == "pq":
                index = faiss.IndexIVFPQFastScan(
                    quantizer, codec.dim, nlist, codec.dim // 2, 4, faiss.METRIC_INNER_PRODUCT
                )
            else:
                index = faiss.IndexIVFRaBitQFastScan(
                    quantizer, codec.dim, nlist, faiss.METRIC_INNER_PRODUCT
                )
            index.train(vectors[training_rows(n, nlist)])
            index.add(vectors)
        else:
            codes = codec.encode(vectors) if n else np.zeros((0, codec.code_size), np.uint8)
            if large:
                nlist = ivf_lists(n)
                index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(codec.dim), codec.dim, nlist)
                index.train(codes[training_rows(n, nlist)])
            else:
                index = faiss.IndexBinaryFlat(codec.dim)
            if n:
                index.add(codes)
        rows = store_rows(vectors, rescore_dtype)
        held = rows_index(rows)
        shard = cls(name, index, rows if held is None else held, meta)
        shard.nprobe = 16
        return shard

    @property
    def engine(self) -> str:
        """The engine as a FAISS factory string: "BFlat", "BIVF<nlist>" (binary factory
        strings over sign codes), "IVF<nlist>,PQ<m>x4fs" or "IVF<nlist>,RaBitQfs"."""
        if isinstance(self._index, faiss.IndexBinaryIVF):
            return f"BIVF{self._index.nlist}"
        if isinstance(self._index, faiss.IndexIVFPQFastScan):
            return f"IVF{self._index.nlist},PQ{self._index.pq.M}x4fs"
        if not self._binary:
            return f"IVF{self._index.nlist},RaBitQfs"
        return "BFlat"

    @property
    def nlist(self) -> int | None:
        """Inverted lists of an IVF engine; None for "BFlat"."""
        if isinstance(self._index, faiss.IndexBinaryIVF) or not self._binary:
            return int(self._index.nlist)
        return None

    @property
    def nprobe(self) -> int | None:
        """Inverted lists a search probes (the tuned value once tuned); None for "BFlat"."""
        if isinstance(self._index, faiss.IndexBinaryIVF):
            return int(self._index.nprobe)
        return None if self._binary else self._float_nprobe

    @nprobe.setter
    def nprobe(self, value: int | None) -> None:
        nlist = self.nlist
        if value is None or nlist is None:
            return
        value = max(1, min(int(value), nlist))
        if self._binary:
            self._index.nprobe = value
        else:
            self._float_nprobe = value

    @property
    def resident_bytes(self) -> int:
        """Bytes the engine holds in memory to search (codes, ids, lists, centroids, rotation),
        measured as its serialised size; the rescoring vectors (:attr:`disk_bytes`, mapped from
        disk when loaded from a file) and the metadata table are not counted."""
        data = (
            faiss.serialize_index_binary(self._index)
            if self._binary
            else faiss.serialize_index(self._index)
        )
        return int(data.size)

    @property
    def disk_bytes(self) -> int:
        """Bytes of the rescoring rows (``n * d * 2`` as float16, ``n * (d + 4)`` as int8)."""
        return int(self._vectors.nbytes)

    @property
    def name(self) -> str:
        """The shard's name (unique within an index)."""
        return self._name

    @property
    def dim(self) -> int:
        """Width ``d`` of the float vectors."""
        return rows_dim(self._vectors)

    @property
    def rescore_dtype(self) -> str:
        """How the rescoring rows are stored: one of :data:`RESCORE_DTYPES`."""
        return str(rows_dtype(self._vectors))

    @property
    def exact_scan(self) -> bool:
        """Whether a shortlist covering the shard is searched by one exact FAISS scan of the
        rescoring rows (float16 / float32 rows); int8 rows rank every row by its code instead."""
        return self._rows_index is not None

    @property
    def rows_mapped(self) -> bool:
        """Whether the rescoring rows are memory-mapped from a file rather than held in RAM."""
        if self._rows_index is not None:
            return not self._rows_index.codes.is_owned
        return isinstance(self._vectors, np.memmap)

    @property
    def vectors(self) -> np.ndarray:
        """The stored rescoring rows, read-only and possibly memory-mapped: (n, d) float16 or
        float32, or (n,) int8 records (:func:`int8_rows`). :meth:`float_rows` decodes them."""
        return self._vectors

    def float_rows(self, rows: np.ndarray | None = None) -> np.ndarray:
        """(len(rows), d) float32 rescoring vectors of ``rows`` (None: all rows)."""
        return decode_rows(self._vectors, slice(None) if rows is None else rows)

    @property
    def meta(self) -> pa.Table:
        """n-row metadata table aligned with :attr:`vectors`."""
        return self._meta

    def __len__(self) -> int:
        return int(self._vectors.shape[0])

    @property
    def deleted_rows(self) -> np.ndarray:
        """Sorted int64 rows marked deleted (tombstones of a delta update); empty when none."""
        if self._deleted is None:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self._deleted).astype(np.int64)

    def live_rows(self) -> np.ndarray:
        """Sorted int64 rows that searches can return (all but :attr:`deleted_rows`)."""
        if self._deleted is None:
            return np.arange(len(self), dtype=np.int64)
        return np.flatnonzero(~self._deleted).astype(np.int64)

    def set_deleted(self, rows: np.ndarray | list[int]) -> None:
        """Mark ``rows`` deleted: searches skip them (they ask the engine for as many more
        candidates as there are tombstones, so results stay as good as before). Replaces any
        earlier marks; ``ValueError`` for a row outside the shard."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise ValueError(f"shard {self._name!r}: deleted rows must be in [0, {len(self)})")
        if rows.size == 0:
            self._deleted, self._tombstones = None, 0
            return
        mask = np.zeros(len(self), dtype=bool)
        mask[rows] = True
        self._deleted, self._tombstones = mask, int(mask.sum())

    def __repr__(self) -> str:
        return f"ShardIndex(name={self._name!r}, rows={len(self)}, dim={self.dim})"

    def search(
        self, queries: np.ndarray, k: int, shortlist: int | None = None, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows per query by inner product, via a shortlist from the codes.

        ``queries``: (m, d) float, L2-normalised here (so scores are cosine similarities).
        The engine proposes ``max(k, shortlist)`` candidates per query (all rows when the shard
        is smaller), which are rescored exactly with the rescoring vectors. ``shortlist=None``
        uses the shard's tuned :attr:`shortlist` (``ValueError`` when it has none); ``nprobe``
        overrides the tuned :attr:`nprobe` of an IVF engine for this call.
        Returns ``(scores, rows)``: (m, k) float32 descending and (m, k) int64 row ids into this
        shard, padded with ``-inf`` / ``-1`` past the shard's size. Equal scores are ordered by
        ascending row id. Rows marked deleted (:meth:`set_deleted`) are never returned.
        """
        queries, nonzero = self._unit_queries(queries)
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
        n_cand = min(max(k, shortlist) + self._tombstones, len(self))
        if m == 0 or n_cand == 0:
            return (
                np.full((m, k), -np.inf, dtype=np.float32),
                np.full((m, k), -1, dtype=np.int64),
            )
        if n_cand >= len(self) and self._rows_index is not None and nonzero:
            # The shortlist covers the shard: one exhaustive scan of the rescoring rows costs a
            # fraction of ranking every row by its code and gathering them all to rescore.
            return self._search_exhaustive(queries, k)
        if self._refine is not None and self._deleted is None and nonzero:
            found = self._search_refined(queries, k, n_cand, nprobe)
            if found is not None:
                return found
        cand = self._candidates(queries, n_cand, nprobe)
        if m == 1 and n_cand >= k:  # one query (the service's call): no blocks to assemble
            return _rescore_one(queries[0], self._rows, cand[0], k)
        scores = np.full((m, k), -np.inf, dtype=np.float32)
        rows = np.full((m, k), -1, dtype=np.int64)
        kk = min(k, n_cand)
        step = max(1, _RESCORE_FLOATS // (n_cand * self.dim))
        for start in range(0, m, step):
            block = slice(start, start + step)
            s, r = _rescore(queries[block], self._rows, cand[block], kk)
            scores[block, :kk] = s
            rows[block, :kk] = r
        return scores, rows

    def _probe(self, nprobe: int | None) -> int:
        """The lists a float-code search probes for ``nprobe`` (None: the tuned number)."""
        return self._float_nprobe if nprobe is None else max(1, min(nprobe, self.nlist or 1))

    def _ivf_search_params(self, nprobe: int | None) -> faiss.SearchParametersIVF:
        """Search parameters of a float-code engine probing ``nprobe`` lists (None: tuned)."""
        probe = self._probe(nprobe)
        params = self._ivf_params.get(probe)
        if params is None:  # made once per nprobe: a SWIG object costs microseconds a query
            params = self._ivf_params[probe] = faiss.SearchParametersIVF(nprobe=probe)
        return params

    def _search_refined(
        self, queries: np.ndarray, k: int, n_cand: int, nprobe: int | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """:meth:`search` in one FAISS call: the engine's ``n_cand`` candidates rescored by
        FAISS from the rows index (``IndexRefine``). FAISS does not order equal scores by row,
        so one place more than ``k`` is asked for: equal scores inside the top ``k`` are
        re-ordered here, and None (numpy rescoring instead) is returned when the ``k``-th score
        ties with the next one (exact duplicates across the cut). ``queries``: unit rows."""
        kk = min(k + 1, n_cand)
        # Keyed by Python values (reading the SWIG parameters back costs time on every query).
        key = (self._probe(nprobe), n_cand, kk)
        params = self._refine_params.get(key)
        if params is None:
            # k_base = int(kk * k_factor) = n_cand (the half keeps the product off rounding)
            params = faiss.IndexRefineSearchParameters(
                k_factor=(n_cand + 0.5) / kk, base_index_params=self._ivf_search_params(nprobe)
            )
            self._refine_params[key] = params
        m = len(queries)
        scores = np.empty((m, kk), dtype=np.float32)
        rows = np.empty((m, kk), dtype=np.int64)
        # FAISS's own entry point (its Python wrapper's checks cost microseconds a query).
        self._refine.search_c(
            m, faiss.swig_ptr(queries), kk, faiss.swig_ptr(scores), faiss.swig_ptr(rows), params
        )
        if kk > k:
            if m == 1:  # Python scalars: cheaper than array operations for one row
                if rows[0, k] >= 0 and scores[0, k - 1] <= scores[0, k]:
                    return None
            elif np.any((rows[:, k] >= 0) & (scores[:, k - 1] <= scores[:, k])):
                return None
            scores, rows = scores[:, :k], rows[:, :k]
        if m == 1 and kk >= k and rows[0, -1] >= 0:  # the usual case, in Python scalars
            found = scores[0].tolist()
            if len(set(found)) == len(found):  # no equal scores (they would sit side by side)
                return scores, rows
        missing = rows < 0  # FAISS puts the candidates it did not find last
        if missing[:, -1].any():
            scores = np.where(missing, np.float32(-np.inf), scores)
        if (scores[:, :-1] == scores[:, 1:]).any():  # equal scores: lower row first
            order = np.lexsort((np.where(missing, len(self), rows), -scores), axis=1)
            scores = np.take_along_axis(scores, order, axis=1)
            rows = np.take_along_axis(rows, order, axis=1)
        return _padded(scores, rows, k)

    def _search_exhaustive(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` as one exact FAISS scan of the rescoring rows (the rows index), for a
        shortlist that covers the shard. FAISS is asked for ``k + 1`` places plus one per
        tombstone, and deeper (doubling) while a query's ``k``-th live score ties with the last
        place found, so that every row sharing that score is seen; tombstoned rows are then
        dropped and equal scores put in row order. ``queries``: unit rows."""
        n, m = len(self), len(queries)
        depth = min(k + 1 + self._tombstones, n)
        while True:
            scores = np.empty((m, depth), dtype=np.float32)
            rows = np.empty((m, depth), dtype=np.int64)
            self._rows_index.search_c(  # type: ignore[union-attr]
                m, faiss.swig_ptr(queries), depth, faiss.swig_ptr(scores), faiss.swig_ptr(rows)
            )
            missing = rows < 0
            if self._deleted is not None:
                missing |= self._deleted[np.maximum(rows, 0)]
            # Found rows by descending score, equal scores by row; dropped places last.
            order = np.lexsort((np.where(missing, n, rows), np.where(missing, np.inf, -scores)))
            live_scores = np.take_along_axis(np.where(missing, -np.inf, scores), order, 1)
            live_rows = np.take_along_axis(np.where(missing, -1, rows), order, 1)
            if depth >= n:
                break
            # FAISS's places are in descending score: the last one is the lowest score it found.
            kth = live_scores[:, min(k, depth) - 1]
            if not np.any(scores[:, -1] >= kth):
                break
            depth = min(2 * depth, n)
        return _padded(live_scores[:, :k], live_rows[:, :k], k)

    def _candidates(self, queries: np.ndarray, n_cand: int, nprobe: int | None) -> np.ndarray:
        """(m, n_cand) int64 candidate rows, -1 where an inverted file found fewer or the row
        is deleted (a tombstone)."""
        cand = self._engine_candidates(queries, n_cand, nprobe)
        if self._deleted is not None:
            cand = np.where((cand >= 0) & self._deleted[np.maximum(cand, 0)], -1, cand)
        return cand

    def _engine_candidates(
        self, queries: np.ndarray, n_cand: int, nprobe: int | None
    ) -> np.ndarray:
        if not self._binary:
            params = self._ivf_search_params(nprobe)
            return self._index.search(queries, n_cand, params=params)[1]
        if self._gpu_index is not None and n_cand <= _GPU_MAX_K:
            return self._gpu_index.search(self._codec.encode(queries), n_cand)[1]
        tuned = self.nprobe
        try:
            self.nprobe = nprobe
            return self._index.search(self._codec.encode(queries), n_cand)[1]
        finally:
            self.nprobe = tuned

    def move_to_gpu(self, resources: object, device: int = 0) -> bool:
        """Search this shard's codes on a GPU when FAISS can: an exhaustive sign-code engine
        ("BFlat") gets a ``GpuIndexBinaryFlat`` copy on ``device`` (``resources``: a
        ``faiss.StandardGpuResources``), used for shortlists of up to 2,048 rows that do not
        cover the shard (one that does is an exact scan of the rows on the CPU). FAISS has no
        GPU version of the binary inverted file or of the PQ and RaBitQ fast scans, so those
        shards stay on the CPU. Returns whether the shard now searches on the GPU; False on a
        FAISS built without GPU support. Rescoring stays on the CPU (the vectors are
        memory-mapped)."""
        gpu_flat = getattr(faiss, "GpuIndexBinaryFlat", None)
        if gpu_flat is None or type(self._index) is not faiss.IndexBinaryFlat:
            return False
        config = faiss.GpuIndexBinaryFlatConfig()
        config.device = device
        self._gpu_index = gpu_flat(resources, self._index, config)
        return True

    def _unit_queries(self, queries: np.ndarray) -> tuple[np.ndarray, bool]:
        """Checked ``queries`` as contiguous float32 unit rows (all-zero rows stay zero), and
        whether none was all zeros; ``ValueError`` for a wrong shape or a non-finite value.
        One row (the service's call) takes a path with no row-wise numpy machinery: its
        squared norm, summed in float64, is finite exactly when every value is."""
        queries = np.asarray(queries)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (m, {self.dim}), got shape {queries.shape}")
        if len(queries) != 1:
            if not np.isfinite(queries).all():
                raise ValueError(NON_FINITE_QUERIES)
            return _unit_rows(queries)
        row = np.ascontiguousarray(queries[0], dtype=np.float32)
        wide = row.astype(np.float64)  # squares of any float32 stay finite in float64
        squared = float(np.dot(wide, wide))
        if not math.isfinite(squared):
            raise ValueError(NON_FINITE_QUERIES)
        if squared == 0.0:
            return row[None], False
        return (row / np.float32(math.sqrt(squared)))[None], True

    def to_bytes(self) -> dict[str, bytes]:
        """Serialise to ``{file name: bytes}``: the names in :data:`SHARD_FILES`, with
        :data:`NPY_VECTORS_FILE` instead of :data:`VECTORS_FILE` for numpy-held rows (int8)."""
        codes = (
            faiss.serialize_index_binary(self._index)
            if self._binary
            else faiss.serialize_index(self._index)
        )
        meta_buf = pa.BufferOutputStream()
        pq.write_table(self._meta, meta_buf)
        out = {CODES_FILE: codes.tobytes()}
        if self._rows_index is not None:
            out[VECTORS_FILE] = faiss.serialize_index(self._rows_index).tobytes()
        else:
            vec_buf = io.BytesIO()
            np.save(vec_buf, np.ascontiguousarray(self._vectors), allow_pickle=False)
            out[NPY_VECTORS_FILE] = vec_buf.getvalue()
        out[META_FILE] = meta_buf.getvalue().to_pybytes()
        return out

    @classmethod
    def from_bytes(
        cls,
        name: str,
        files: dict[str, bytes],
        shortlist: int | None = None,
        nprobe: int | None = None,
        vectors: np.ndarray | faiss.Index | None = None,
    ) -> ShardIndex:
        """Inverse of :meth:`to_bytes` (``shortlist`` and ``nprobe``: the tuned ones, from the
        manifest); ``ValueError`` when a file is missing or parts disagree. ``vectors``: the
        rescoring rows already opened from the verified file on disk, in which case ``files``
        need not hold them: the index FAISS read from :data:`VECTORS_FILE` with
        ``faiss.IO_FLAG_MMAP_IFC`` (:func:`open_rows`), or the array numpy mapped from
        :data:`NPY_VECTORS_FILE`."""
        missing = [f for f in (CODES_FILE, META_FILE) if f not in files]
        if vectors is None and not any(f in files for f in VECTOR_FILES):
            missing.append(VECTORS_FILE)
        if missing:
            raise ValueError(f"shard {name!r} is missing files {missing}")
        raw = np.frombuffer(files[CODES_FILE], dtype=np.uint8)
        # FAISS writes a four-byte type tag first; binary indexes' tags start with "IB".
        binary = bytes(raw[:2]) == b"IB"
        index = faiss.deserialize_index_binary(raw) if binary else faiss.deserialize_index(raw)
        if vectors is None:
            if VECTORS_FILE in files:
                vectors = _read_rows_index(name, files[VECTORS_FILE])
            else:
                vectors = np.load(io.BytesIO(files[NPY_VECTORS_FILE]), allow_pickle=False)
        rows = index_rows(vectors) if isinstance(vectors, faiss.Index) else vectors
        meta = pq.read_table(pa.BufferReader(files[META_FILE]))
        if rows_dtype(rows) is None:
            raise ValueError(
                f"shard {name!r}: vectors must be (n, d) float16 or float32, or int8 records"
            )
        bits = index.d
        if bits != rows_dim(rows) or index.ntotal != rows.shape[0]:
            raise ValueError(
                f"shard {name!r}: the code index ({index.ntotal} x {bits} d) does not match "
                f"vectors ({rows.shape[0]} x {rows_dim(rows)} d)"
            )
        meta = _check_meta(meta, rows.shape[0])
        shard = cls(name, index, vectors, meta, shortlist)
        # A binary IVF keeps its nprobe in the file; a float-code one is searched with its own.
        shard.nprobe = 16 if nprobe is None and not binary else nprobe
        return shard


def _check_rows_index(name: str, index: faiss.Index) -> faiss.Index:
    if not (
        isinstance(index, faiss.IndexFlatIP)
        or (
            isinstance(index, faiss.IndexScalarQuantizer)
            and index.sq.qtype == faiss.ScalarQuantizer.QT_fp16
        )
    ):
        raise ValueError(
            f"shard {name!r}: {VECTORS_FILE} must hold an fp16 scalar-quantiser or a flat "
            f"inner-product index, got {type(index).__name__}"
        )
    return index


def _read_rows_index(name: str, data: bytes) -> faiss.Index:
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as err:
        raise ValueError(f"shard {name!r}: {VECTORS_FILE} is not a FAISS index ({err})") from err
    return _check_rows_index(name, index)


def open_rows(name: str, path: str) -> faiss.Index:
    """The rescoring rows of shard ``name`` from a :data:`VECTORS_FILE` on local disk,
    memory-mapped by FAISS (its pages are read on demand and shared between processes)."""
    try:
        index = faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC)
    except RuntimeError as err:
        raise ValueError(f"shard {name!r}: {VECTORS_FILE} is not a FAISS index ({err})") from err
    return _check_rows_index(name, index)


def _unit_rows(x: np.ndarray) -> tuple[np.ndarray, bool]:
    """(m, d) queries as contiguous float32 unit rows (all-zero rows stay zero), and whether
    none was all zeros (one row: ``ShardIndex._unit_queries``)."""
    unit = l2_normalise(x)
    return unit, bool(unit.any(axis=1).all())


def _rescore_one(
    query: np.ndarray, vectors: np.ndarray, cand: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_rescore` of one query (the service's usual call) in plain 1-D numpy: query (d,),
    cand (c,) int64 with -1 for none -> (1, k) scores and rows."""
    if cand.size and cand.min() < 0:
        cand = cand[cand >= 0]
    if vectors.dtype.names:  # int8 records: product of the int8 values, times the scale
        picked = vectors[cand]
        sims = (picked["q"].astype(np.float32) @ query) * picked["s"]
    else:
        sims = _widen(vectors[cand]) @ query
    if len(cand) > 4 * k:  # keep the k best (ties at the cut by lower row) before sorting
        cut = np.partition(sims, len(cand) - k)[len(cand) - k]
        keep = sims >= cut
        cand, sims = cand[keep], sims[keep]
    top = np.lexsort((cand, -sims))[:k]
    if len(top) == k:
        return sims[top][None], cand[top][None]
    out_s = np.full((1, k), -np.inf, dtype=np.float32)
    out_r = np.full((1, k), -1, dtype=np.int64)
    out_s[0, : len(top)], out_r[0, : len(top)] = sims[top], cand[top]
    return out_s, out_r


def _rescore(
    queries: np.ndarray, vectors: np.ndarray, cand: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of candidate rows: queries (b, d), cand (b, c) int64 -> (b, k) x 2.
    ``vectors`` are stored rows (float16 and int8 widened to float32 for the products). A
    candidate -1 (an inverted file that found fewer) stays -1 with score ``-inf``, last."""
    valid = cand >= 0
    picked = vectors[np.where(valid, cand, 0)]
    if vectors.dtype.names:
        sims = np.matmul(picked["q"].astype(np.float32), queries[:, :, None])[:, :, 0]
        sims *= picked["s"]
    else:
        sims = np.matmul(_widen(picked), queries[:, :, None])[:, :, 0]
    sims = np.where(valid, sims, np.float32(-np.inf))
    if k < sims.shape[1] and sims.shape[1] > 4 * k:
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        sims = np.take_along_axis(sims, part, axis=1)
        cand = np.take_along_axis(cand, part, axis=1)
    # Score descending, then row ascending; a short list is sorted whole (cheaper than a
    # partition first), keeping its first k.
    order = np.lexsort((cand, -sims), axis=1)[:, :k]
    sims, cand = np.take_along_axis(sims, order, axis=1), np.take_along_axis(cand, order, axis=1)
    return sims, np.where(np.isfinite(sims), cand, -1)


def scans_exactly(shortlist: int | None, rows: int, rescore_dtype: str) -> bool:
    """Whether :meth:`ShardIndex.search` with ``shortlist`` over a shard of ``rows`` rescoring
    rows of ``rescore_dtype`` is one exact scan of those rows: the shortlist covers the shard
    and the rows are float (int8 rows rank every row by its code instead)."""
    return shortlist is not None and shortlist >= rows and rescore_dtype != "int8"


def _padded(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, rows)`` of ``k`` places: a shard smaller than ``k`` has found fewer, and the
    places past them are ``-inf`` / ``-1``."""
    short = k - scores.shape[1]
    if short <= 0:
        return scores, rows
    pad = ((0, 0), (0, short))
    return (
        np.pad(scores, pad, constant_values=-np.inf),
        np.pad(rows, pad, constant_values=-1),
    )
