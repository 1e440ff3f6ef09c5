"""One index shard: a FAISS index over binary codes plus the rescoring vectors and row metadata.

Search is two-stage, after Alibaba's visual search: a shortlist from binary codes, then exact
inner-product rescoring of the shortlist with the float vectors. The codes are one of:

- sign bits searched by Hamming distance, exhaustively (``IndexBinaryFlat``, "BFlat") for small
  shards, or through an inverted file over the codes (``IndexBinaryIVF``, "BIVF<nlist>");
- RaBitQ codes ("IVF<nlist>,RaBitQfs": FAISS's ``IndexIVFRaBitQFastScan``): each vector's
  residual to its coarse centroid is turned by a random rotation drawn at build time and kept as
  one bit per dimension plus two correction factors, and RaBitQ's estimator of the inner product
  ranks the candidates; that estimate tracks cosine far better than the Hamming distance of raw
  sign bits, so a much shorter shortlist reaches the same recall.

The rescoring vectors are float16 by default, float32 or int8 on request, kept in their own
``.npy`` file so that a searcher can memory-map it instead of loading it
(:meth:`ShardIndex.from_bytes` takes an already opened array): only the codes are resident. int8
rows carry their own scale (a record of ``d`` int8 values and one float32: ``d + 4`` bytes a row);
numpy widens int8 several times faster than float16, so int8 rescoring is the cheaper of the two.
Serialisation is to and from ``bytes``; the storage layer writes and maps the files.
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

#: The FastScan search variant RaBitQ shards use (see ``ShardIndex.__init__``).
_FASTSCAN_IMPLEM = 10
#: Largest k FAISS's GPU indexes search for.
_GPU_MAX_K = 2048
#: Bound on ``queries * candidates * dim`` floats gathered at once while rescoring.
_RESCORE_FLOATS = 1 << 24

#: Engines a large shard can get (``index.large_engine``): RaBitQ codes or Hamming sign bits.
LARGE_ENGINES: tuple[str, ...] = ("rabitq", "bivf")
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


def decode_rows(vectors: np.ndarray, rows: np.ndarray | slice) -> np.ndarray:
    """Stored rescoring rows ``rows`` as float32 (the int8 ones times their scales)."""
    picked = vectors[rows]
    if vectors.dtype.names:
        return picked["q"].astype(np.float32) * picked["s"][..., None]
    return picked.astype(np.float32)


def rabitq_lists(n: int) -> int:
    """Coarse lists of a RaBitQ shard of ``n`` rows: about ``sqrt(n)`` (1,000 at 1M, where
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
        #: A GPU copy of an exhaustive sign-code engine (:meth:`move_to_gpu`); None: CPU only.
        self._gpu_index: faiss.IndexBinary | None = None
        self._binary = isinstance(index, faiss.IndexBinary)
        if isinstance(index, faiss.IndexIVFFastScan):
            # FastScan's variant 10 keeps the shortlist in a reservoir instead of a heap: same
            # results, 15-17% less search time at shortlists of 128-256 (1M vectors, 1 thread).
            index.implem = _FASTSCAN_IMPLEM
        #: Inverted lists a float-code ("RaBitQ") search probes; binary IVFs keep theirs inside.
        self._float_nprobe = 1
        self._ivf_params: dict[int, faiss.SearchParametersIVF] = {}
        self._vectors = vectors
        if vectors.flags.writeable:
            self._vectors.setflags(write=False)
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
        large_engine: str = "rabitq",
        rescore_dtype: str = "float16",
    ) -> ShardIndex:
        """Build a shard from (n, d) float vectors and an n-row metadata table.

        ``d`` must be a positive multiple of 8. Vectors are L2-normalised here (defensively: they
        need not arrive normalised); zero or non-finite rows raise ``ValueError``. Metadata must
        hold :data:`META_COLUMNS`; quality and popularity are cast to float32, extra columns kept.
        The engine is an exhaustive Hamming scan ("BFlat") up to ``ivf_above`` rows (None:
        always); above that ``large_engine`` picks RaBitQ codes under an inverted file
        ("IVF<nlist>,RaBitQfs", :func:`rabitq_lists`) or an inverted file over sign codes
        ("BIVF<nlist>", about ``4 sqrt(n)`` lists); the lists probed are tuned with the shortlist.
        The rescoring vectors are kept as ``rescore_dtype`` (see :data:`RESCORE_DTYPES`).
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
        if large and large_engine == "rabitq":
            nlist = rabitq_lists(n)
            index = faiss.IndexIVFRaBitQFastScan(
                faiss.IndexFlatIP(codec.dim), codec.dim, nlist, faiss.METRIC_INNER_PRODUCT
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
        shard = cls(name, index, store_rows(vectors, rescore_dtype), meta)
        shard.nprobe = 16
        return shard

    @property
    def engine(self) -> str:
        """The engine as a FAISS factory string: "BFlat", "BIVF<nlist>" (binary factory
        strings over sign codes) or "IVF<nlist>,RaBitQfs"."""
        if isinstance(self._index, faiss.IndexBinaryIVF):
            return f"BIVF{self._index.nlist}"
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
        n_cand = min(max(k, shortlist) + self._tombstones, len(self))
        if m == 0 or n_cand == 0:
            return scores, rows
        queries = l2_normalise(queries)
        cand = self._candidates(queries, n_cand, nprobe)
        if self._deleted is not None:
            cand = np.where((cand >= 0) & self._deleted[np.maximum(cand, 0)], -1, cand)
        kk = min(k, n_cand)
        if m == 1 and kk == k:  # one query (the service's call): no blocks to assemble
            return _rescore(queries, self._vectors, cand, k)
        step = max(1, _RESCORE_FLOATS // (n_cand * self.dim))
        for start in range(0, m, step):
            block = slice(start, start + step)
            s, r = _rescore(queries[block], self._vectors, cand[block], kk)
            scores[block, :kk] = s
            rows[block, :kk] = r
        return scores, rows

    def _candidates(self, queries: np.ndarray, n_cand: int, nprobe: int | None) -> np.ndarray:
        """(m, n_cand) int64 candidate rows (-1 where an inverted file found fewer)."""
        if not self._binary:
            probe = self._float_nprobe if nprobe is None else max(1, min(nprobe, self.nlist or 1))
            params = self._ivf_params.get(probe)
            if params is None:  # made once per nprobe: a SWIG object costs microseconds a query
                params = self._ivf_params[probe] = faiss.SearchParametersIVF(nprobe=probe)
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
        ``faiss.StandardGpuResources``), used for shortlists of up to 2,048 rows. FAISS has no
        GPU version of the binary inverted file or of RaBitQ's fast scan, so those shards stay
        on the CPU. Returns whether the shard now searches on the GPU; False on a FAISS built
        without GPU support. Rescoring stays on the CPU (the vectors are memory-mapped)."""
        gpu_flat = getattr(faiss, "GpuIndexBinaryFlat", None)
        if gpu_flat is None or type(self._index) is not faiss.IndexBinaryFlat:
            return False
        config = faiss.GpuIndexBinaryFlatConfig()
        config.device = device
        self._gpu_index = gpu_flat(resources, self._index, config)
        return True

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        queries = np.asarray(queries)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (m, {self.dim}), got shape {queries.shape}")
        if not np.isfinite(queries).all():
            raise ValueError("queries contain NaN or infinite values")
        return queries

    def to_bytes(self) -> dict[str, bytes]:
        """Serialise to ``{file name: bytes}`` with the names in :data:`SHARD_FILES`."""
        codes = (
            faiss.serialize_index_binary(self._index)
            if self._binary
            else faiss.serialize_index(self._index)
        )
        vec_buf = io.BytesIO()
        np.save(vec_buf, np.ascontiguousarray(self._vectors), allow_pickle=False)
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
        vectors: np.ndarray | None = None,
    ) -> ShardIndex:
        """Inverse of :meth:`to_bytes` (``shortlist`` and ``nprobe``: the tuned ones, from the
        manifest); ``ValueError`` when a file is missing or parts disagree. ``vectors``: the
        rescoring vectors already opened (e.g. ``np.load(path, mmap_mode="r")`` of the
        :data:`VECTORS_FILE` that was verified on disk), in which case ``files`` need not hold
        them."""
        needed = SHARD_FILES if vectors is None else (CODES_FILE, META_FILE)
        missing = [f for f in needed if f not in files]
        if missing:
            raise ValueError(f"shard {name!r} is missing files {missing}")
        raw = np.frombuffer(files[CODES_FILE], dtype=np.uint8)
        # FAISS writes a four-byte type tag first; binary indexes' tags start with "IB".
        binary = bytes(raw[:2]) == b"IB"
        index = faiss.deserialize_index_binary(raw) if binary else faiss.deserialize_index(raw)
        if vectors is None:
            vectors = np.load(io.BytesIO(files[VECTORS_FILE]), allow_pickle=False)
        meta = pq.read_table(pa.BufferReader(files[META_FILE]))
        if rows_dtype(vectors) is None:
            raise ValueError(
                f"shard {name!r}: vectors must be (n, d) float16 or float32, or int8 records"
            )
        bits = index.d
        if bits != rows_dim(vectors) or index.ntotal != vectors.shape[0]:
            raise ValueError(
                f"shard {name!r}: the code index ({index.ntotal} x {bits} d) does not match "
                f"vectors ({vectors.shape[0]} x {rows_dim(vectors)} d)"
            )
        meta = _check_meta(meta, vectors.shape[0])
        shard = cls(name, index, vectors, meta, shortlist)
        # A binary IVF keeps its nprobe in the file; a RaBitQ one is searched with its own.
        shard.nprobe = 16 if nprobe is None and not binary else nprobe
        return shard


def _rescore(
    queries: np.ndarray, vectors: np.ndarray, cand: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of candidate rows: queries (b, d), cand (b, c) int64 -> (b, k) x 2.
    ``vectors`` are stored rows (float16 and int8 widened to float32 for the products). A
    candidate -1 (an inverted file that found fewer) stays -1 with score ``-inf``, last."""
    if queries.shape[0] == 1:  # one query (the service's usual call): plain 1-D numpy
        c = cand[0]
        c = c[c >= 0]
        if vectors.dtype.names:  # int8 records: product of the int8 values, times the scale
            picked = vectors[c]
            sims1 = (picked["q"].astype(np.float32) @ queries[0]) * picked["s"]
        else:
            sims1 = vectors[c].astype(np.float32, copy=False) @ queries[0]
        if len(c) > 4 * k:  # keep the k best (ties at the cut by lower row) before sorting
            cut = np.partition(sims1, len(c) - k)[len(c) - k]
            keep = sims1 >= cut
            c, sims1 = c[keep], sims1[keep]
        top = np.lexsort((c, -sims1))[:k]
        out_s = np.full((1, k), -np.inf, dtype=np.float32)
        out_r = np.full((1, k), -1, dtype=np.int64)
        out_s[0, : len(top)], out_r[0, : len(top)] = sims1[top], c[top]
        return out_s, out_r
    valid = cand >= 0
    picked = vectors[np.where(valid, cand, 0)]
    if vectors.dtype.names:
        sims = np.matmul(picked["q"].astype(np.float32), queries[:, :, None])[:, :, 0]
        sims *= picked["s"]
    else:
        gathered = picked.astype(np.float32, copy=False)
        sims = np.matmul(gathered, queries[:, :, None])[:, :, 0]
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
