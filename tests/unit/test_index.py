"""Unit tests for the binary sharded index: codec, shard, manifest, builder, searcher."""

from __future__ import annotations

import zlib

import faiss
import numpy as np
import pyarrow as pa
import pytest

from vsearch.index import (
    SHARD_FILES,
    BinaryCodec,
    Manifest,
    ShardedIndex,
    ShardEntry,
    ShardIndex,
    bucket_of,
    build_shards,
    l2_normalise,
    merge_topk,
    sha256_hex,
    shard_name,
    verify,
)

faiss.omp_set_num_threads(1)


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return l2_normalise(rng.standard_normal((n, d)).astype(np.float32))


def _meta(n: int, categories: list[str] | None = None, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    cats = categories if categories is not None else ["drinks/soda"] * n
    return pa.table(
        {
            "image_id": [f"img-{i:05d}" for i in range(n)],
            "product_id": [f"prod-{i // 2:05d}" for i in range(n)],
            "category": cats,
            "title": [f"title {i}" for i in range(n)],
            "quality": rng.random(n).astype(np.float32),
            "popularity": rng.random(n).astype(np.float32),
        }
    )


def _clustered(seed: int, n: int = 2000, d: int = 128, clusters: int = 50, nq: int = 200):
    """Points and queries around shared random centres; noise norm about equal to centre norm."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng, clusters, d)
    noise = 1.0 / np.sqrt(d)
    x = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, d))
    q = centres[rng.integers(0, clusters, nq)] + noise * rng.standard_normal((nq, d))
    return l2_normalise(x), l2_normalise(q)


def _exact_topk(q: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = q @ x.T
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, axis=1), ids


# --- codec -------------------------------------------------------------------------------------


def test_codec_rejects_bad_dim() -> None:
    for bad in (0, 12, -8):
        with pytest.raises(ValueError):
            BinaryCodec(bad)


def test_codec_bit_layout_is_lsb_first() -> None:
    codec = BinaryCodec(16)
    x = -np.ones((2, 16), dtype=np.float32)
    x[0, 0] = 1.0
    x[1, 9] = 0.5
    x[1, 15] = 2.0
    np.testing.assert_array_equal(codec.encode(x), [[1, 0], [0, 2 | 128]])
    assert codec.encode(np.zeros((1, 16), dtype=np.float32)).tolist() == [[0, 0]]


def test_codec_agrees_with_faiss() -> None:
    rng = np.random.default_rng(1)
    d = 64
    codec = BinaryCodec(d)
    a = rng.standard_normal((40, d)).astype(np.float32)
    b = rng.standard_normal((30, d)).astype(np.float32)
    ca, cb = codec.encode(a), codec.encode(b)
    assert ca.shape == (40, d // 8) and ca.dtype == np.uint8
    ref = np.zeros_like(ca)
    faiss.real_to_binary(a.size, faiss.swig_ptr(a), faiss.swig_ptr(ref))
    np.testing.assert_array_equal(ca, ref)
    ham = codec.hamming(ca, cb)
    assert ham.dtype == np.int32 and ham.shape == (40, 30)
    np.testing.assert_array_equal(ham, ((a[:, None, :] > 0) != (b[None, :, :] > 0)).sum(axis=2))
    index = faiss.IndexBinaryFlat(d)
    index.add(cb)
    dist, ids = index.search(ca, len(cb))
    np.testing.assert_array_equal(dist, np.take_along_axis(ham, ids, axis=1))


# --- shard -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "atol", "same", "row_bytes"),
    [("float32", 1e-5, 0.99, 256), ("float16", 5e-4, 0.95, 128), ("int8", 5e-3, 0.9, 68)],
)
def test_shard_full_shortlist_equals_exact(
    dtype: str, atol: float, same: float, row_bytes: int
) -> None:
    rng = np.random.default_rng(2)
    x, q = _unit(rng, 300, 64), _unit(rng, 25, 64)
    shard = ShardIndex.build("s", x, _meta(300), rescore_dtype=dtype)
    assert len(shard) == 300 and shard.dim == 64 and shard.name == "s"
    assert shard.rescore_dtype == dtype
    assert shard.disk_bytes == 300 * row_bytes
    np.testing.assert_allclose(shard.float_rows(), x, atol=atol)
    np.testing.assert_allclose(shard.float_rows(np.array([7, 3])), x[[7, 3]], atol=atol)
    # One query at a time (the service's path) scores as the batch does.
    one = shard.search(q[:1], 10, shortlist=300)
    np.testing.assert_allclose(one[0], shard.search(q[:2], 10, shortlist=300)[0][:1], atol=1e-6)
    scores, ids = shard.search(q, 10, shortlist=300)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and scores.shape == (25, 10)
    exact_scores, exact_ids = _exact_topk(q, x, 10)
    # float16 rescoring vectors keep about 3 significant digits of each component.
    np.testing.assert_allclose(scores, exact_scores, atol=atol)
    # Ids may differ only between (nearly) tied scores: each returned id really has its score.
    np.testing.assert_allclose(np.einsum("mkd,md->mk", x[ids], q), scores, atol=atol)
    assert (ids == exact_ids).mean() > same
    assert (np.diff(scores, axis=1) <= 0).all()


def _numpy_rows_twin(shard: ShardIndex) -> ShardIndex:
    """The same shard with its rescoring rows in a numpy ``vectors.npy`` (as shards written
    before ``vectors.faiss`` have them), so that numpy rescores instead of FAISS."""
    import io

    files = shard.to_bytes()
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(shard.vectors))
    files = {k: v for k, v in files.items() if k != "vectors.faiss"} | {
        "vectors.npy": buf.getvalue()
    }
    twin = ShardIndex.from_bytes(shard.name, files, shard.shortlist, shard.nprobe)
    assert not twin.rows_mapped and twin.rescore_dtype == shard.rescore_dtype
    return twin


@pytest.mark.parametrize("engine", ["pq", "rabitq"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_faiss_rescoring_matches_numpy_rescoring(engine: str, dtype: str) -> None:
    x, q = _clustered(seed=11, n=3000, d=32, clusters=30, nq=40)
    x[[20, 35, 41]] = x[7]  # exact duplicates: equal scores, to be ordered by row
    q[0] = x[7]
    shard = ShardIndex.build("f", x, _meta(3000), ivf_above=1000, large_engine=engine,
                             rescore_dtype=dtype)  # fmt: skip
    twin = _numpy_rows_twin(shard)
    for k, shortlist, nprobe in ((10, 64, 4), (3, 200, 64), (2, 30, 1), (400, 10, 1)):
        fast = shard.search(q[1:], k, shortlist, nprobe)
        slow = twin.search(q[1:], k, shortlist, nprobe)
        np.testing.assert_array_equal(fast[1], slow[1])
        np.testing.assert_allclose(fast[0], slow[0], atol=1e-6)
        one = shard.search(q[1:2], k, shortlist, nprobe)  # one query: the service's path
        np.testing.assert_array_equal(one[1], slow[1][:1])
    # Four equal scores: ordered by row inside the top k (FAISS's order is not), and the
    # lowest rows kept when the tie crosses the cut.
    for batch in (q[:1], q[:3]):
        _, ids = shard.search(batch, 5, 200, 64)
        assert ids[0, :4].tolist() == [7, 20, 35, 41] and ids[0, 4] not in (7, 20, 35, 41)
    assert shard.search(q[:1], 3, 200, 64)[1][0].tolist() == [7, 20, 35]
    # Fewer candidates than k (one list probed): padded with -inf / -1, one query or several.
    for batch in (q[:1], q[:2]):
        scores, ids = shard.search(batch, 400, 10, 1)
        assert (ids[:, -1] == -1).all() and np.isneginf(scores[:, -1]).all()
        assert ((ids >= 0) == np.isfinite(scores)).all()
    # One query, no ties: exactly the rows and scores numpy rescoring gives.
    one, slow = shard.search(q[5:6], 10, 64, 4), twin.search(q[5:6], 10, 64, 4)
    np.testing.assert_array_equal(one[1], slow[1])
    np.testing.assert_allclose(one[0], slow[0], atol=1e-6)
    # The rows' numpy view keeps FAISS's memory alive after the shard is gone.
    rows, expected = shard.vectors, shard.float_rows()
    del shard, twin
    np.testing.assert_array_equal(rows.astype(np.float32), expected)


@pytest.mark.parametrize("engine", ["bflat", "pq"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_a_shortlist_covering_the_shard_is_one_exact_scan(engine: str, dtype: str) -> None:
    # The FAISS scan of the rescoring rows against numpy rescoring every row (the twin has no
    # rows index): same rows and scores, ties in row order, tombstones skipped, padding.
    x, q = _clustered(seed=12, n=1500, d=32, clusters=20, nq=30)
    x[[20, 35, 41]] = x[7]  # exact duplicates: equal scores, to be ordered by row
    q[0] = x[7]
    shard = ShardIndex.build("e", x, _meta(1500), ivf_above=1000 if engine == "pq" else None,
                             rescore_dtype=dtype)  # fmt: skip
    twin = _numpy_rows_twin(shard)
    calls = []
    scan = shard._rows_index.search_c
    shard._rows_index.search_c = lambda *a: calls.append(a[0]) or scan(*a)
    for deleted in ([], [3, 20, 999]):
        shard.set_deleted(deleted)
        twin.set_deleted(deleted)
        for k in (10, 1):
            fast, slow = shard.search(q[1:], k, 1500), twin.search(q[1:], k, 1500)
            np.testing.assert_array_equal(fast[1], slow[1])
            np.testing.assert_allclose(fast[0], slow[0], atol=1e-6)
            one = shard.search(q[1:2], k, 1500)  # one query: the service's path
            np.testing.assert_array_equal(one[1], slow[1][:1])
        assert not set(shard.search(q, 10, 1500)[1].ravel().tolist()) & set(deleted)
    assert len(calls) == 2 * 5  # every search above was one scan (no ties to look past)
    shard.set_deleted([20])
    # Equal scores in row order; a tie across the cut keeps the lowest rows.
    assert shard.search(q[:1], 5, 1500)[1][0, :3].tolist() == [7, 35, 41]
    assert shard.search(q[:1], 2, 1500)[1][0].tolist() == [7, 35]
    # k past the rows left: padded with -inf / -1.
    small = ShardIndex.build("s", x[:6], _meta(6), rescore_dtype=dtype)
    small.set_deleted([1])
    scores, ids = small.search(x[:2], 8, 6)
    assert (ids[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    assert sorted(ids[1, :5].tolist()) == [0, 2, 3, 4, 5]


def test_the_exact_scan_settles_ties_deeper_than_it_first_looks() -> None:
    # 31 equal rows and k = 5: FAISS's first k + 1 places hold any 6 of them; the scan looks
    # deeper until it has seen them all, keeps the 5 lowest rows, and answers the other
    # queries of the batch exactly too, whatever the engine's own lists would have found.
    x, q = _clustered(seed=13, n=3000, d=32, clusters=30, nq=20)
    same = np.r_[7, 100:130]
    x[same] = x[7]
    q[0] = x[7]
    shard = ShardIndex.build("t", x, _meta(3000), ivf_above=1000, rescore_dtype="float32")
    assert shard.exact_scan and shard.engine.startswith("IVF")
    shard.nprobe = 1  # the code search alone would miss most true neighbours
    scores, rows = shard.search(q, 5, shortlist=3000)
    assert rows[0].tolist() == [7, 100, 101, 102, 103]
    exact = q @ l2_normalise(x).T
    order = np.lexsort((np.broadcast_to(np.arange(3000), exact.shape), -exact), axis=1)[:, :5]
    np.testing.assert_array_equal(rows[1:], order[1:])
    np.testing.assert_allclose(scores, np.take_along_axis(exact, order, 1), atol=1e-5)
    shard.set_deleted([100, 102])
    assert shard.search(q[:1], 5, shortlist=3000)[1][0].tolist() == [7, 101, 103, 104, 105]


def test_what_the_reindex_summary_counts_as_an_exact_scan() -> None:
    from vsearch.index.shard import scans_exactly

    assert scans_exactly(64, 50, "float16") and scans_exactly(50, 50, "float32")
    assert not scans_exactly(40, 50, "float16")  # a shortlist short of the shard
    assert not scans_exactly(64, 50, "int8")  # int8 rows are ranked by their codes
    assert not scans_exactly(None, 50, "float16")


def test_shard_recall_grows_with_shortlist() -> None:
    x, q = _clustered(seed=3)
    shard = ShardIndex.build("clustered", x, _meta(len(x)))
    _, exact = _exact_topk(q, x, 10)
    recall = {}
    for shortlist in (10, 50, 100, 200):
        _, ids = shard.search(q, 10, shortlist)
        recall[shortlist] = np.mean(
            [len(set(a) & set(b)) / 10 for a, b in zip(ids, exact, strict=True)]
        )
    print(f"recall@10 by shortlist: {recall}")
    assert recall[10] <= recall[50] <= recall[200]
    assert recall[100] > 0.9
    assert recall[200] > 0.95


def test_shard_pads_when_k_exceeds_rows() -> None:
    rng = np.random.default_rng(4)
    x = _unit(rng, 5, 32)
    shard = ShardIndex.build("tiny", x, _meta(5))
    scores, ids = shard.search(x[:3], 8, shortlist=2)
    assert scores.shape == ids.shape == (3, 8)
    assert np.isneginf(scores[:, 5:]).all() and (ids[:, 5:] == -1).all()
    assert sorted(ids[0, :5].tolist()) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(ids[:, 0], [0, 1, 2])  # each vector finds itself first


def test_shard_normalises_and_validates() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((20, 16)).astype(np.float32) * 3
    shard = ShardIndex.build("s", x, _meta(20))
    np.testing.assert_allclose(np.linalg.norm(shard.float_rows(), axis=1), 1.0, atol=1e-2)
    assert shard.meta.schema.field("quality").type == pa.float32()
    with pytest.raises(ValueError):
        ShardIndex.build("s", x[:, :12], _meta(20))  # width not a multiple of 8
    with pytest.raises(ValueError):
        ShardIndex.build("s", x, _meta(19))
    with pytest.raises(ValueError):
        ShardIndex.build("s", x, _meta(20).drop_columns(["title"]))
    x[3] = 0.0
    with pytest.raises(ValueError):
        ShardIndex.build("s", x, _meta(20))
    with pytest.raises(ValueError):
        shard.search(np.ones((2, 8), dtype=np.float32), 3, 5)
    q = x[5:7] / 3
    for bad in (np.nan, np.inf, -np.inf):  # one query (the service's path) and a batch
        for batch in (q[:1].copy(), q.copy()):
            batch[0, 2] = bad
            with pytest.raises(ValueError, match="NaN or infinite"):
                shard.search(batch, 3, 5)
    # Finite values whose squares overflow float32 are scaled, not turned into zeros or NaN.
    huge = shard.search(q[:1] * np.float32(1e30), 3, 20)
    np.testing.assert_array_equal(huge[1], shard.search(q[:1], 3, 20)[1])
    np.testing.assert_allclose(huge[0], shard.search(q[:1], 3, 20)[0], atol=1e-6)
    zero = shard.search(np.zeros((1, 16), np.float32), 3, 20)  # an all-zero query: scores 0
    assert (zero[0] == 0).all() and zero[1].shape == (1, 3)


def test_shard_round_trip() -> None:
    x, q = _clustered(seed=6, n=400, d=64, clusters=10, nq=30)
    shard = ShardIndex.build("rt", x, _meta(400))
    files = shard.to_bytes()
    assert set(files) == set(SHARD_FILES)
    again = ShardIndex.from_bytes("rt", files)
    assert again.name == "rt" and len(again) == 400 and again.dim == 64
    assert again.meta.equals(shard.meta)
    for shortlist in (10, 50):
        s1, i1 = shard.search(q, 7, shortlist)
        s2, i2 = again.search(q, 7, shortlist)
        np.testing.assert_array_equal(s1, s2)
        np.testing.assert_array_equal(i1, i2)
    assert again.to_bytes()[SHARD_FILES[0]] == files[SHARD_FILES[0]]
    with pytest.raises(ValueError):
        ShardIndex.from_bytes("rt", {k: v for k, v in files.items() if k != "vectors.faiss"})
    with pytest.raises(ValueError, match="not a FAISS index"):
        ShardIndex.from_bytes("rt", {**files, "vectors.faiss": b"not an index"})


def test_int8_shard_round_trips_through_a_memory_map(tmp_path) -> None:
    x, q = _clustered(seed=8, n=400, d=64, clusters=10, nq=30)
    shard = ShardIndex.build("i8", x, _meta(400), rescore_dtype="int8")
    files = shard.to_bytes()
    (tmp_path / "vectors.npy").write_bytes(files["vectors.npy"])
    mapped = np.load(tmp_path / "vectors.npy", mmap_mode="r", allow_pickle=False)
    again = ShardIndex.from_bytes("i8", files, shortlist=50, vectors=mapped)
    assert isinstance(again.vectors, np.memmap) and again.rescore_dtype == "int8"
    s1, i1 = shard.search(q, 7, 50)
    s2, i2 = again.search(q, 7)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(i1, i2)
    with pytest.raises(ValueError, match="int8 records"):
        bad = np.zeros(400, dtype=[("q", "i2", (64,)), ("s", "<f4")])
        ShardIndex.from_bytes("i8", files, vectors=bad)


# --- manifest ----------------------------------------------------------------------------------


def _manifest() -> tuple[Manifest, dict[str, dict[str, bytes]]]:
    rng = np.random.default_rng(7)
    cats = ["drinks/soda", "shoes"] * 20
    built = build_shards(_unit(rng, 40, 16), _meta(40, cats), buckets_per_category=2)
    packaged = [b.package() for b in built]
    manifest = Manifest(
        version="2024-06-01",
        model_version="resnet-v3",
        created_at="2024-06-01T00:00:00+00:00",
        dim=16,
        shards=[entry for entry, _ in packaged],
        stats={"rows": 40, "build_seconds": 0.5},
    )
    return manifest, {entry.name: files for entry, files in packaged}


def test_manifest_json_round_trip() -> None:
    manifest, _ = _manifest()
    again = Manifest.from_json(manifest.to_json())
    assert again == manifest
    assert again.categories == ["drinks/soda", "shoes"]
    assert again.total_count == 40 and isinstance(again.stats["rows"], int)
    with pytest.raises(ValueError):
        Manifest.from_json(manifest.to_json().replace('"dim"', '"extra": 1, "dim"'))
    with pytest.raises(ValueError):
        Manifest(**{**manifest.model_dump(), "shards": manifest.shards + manifest.shards[:1]})
    with pytest.raises(ValueError):
        ShardEntry(name="x", category="c", bucket=0, count=1, files={"a": "not-a-digest"})


def test_manifest_verify_detects_flipped_byte() -> None:
    manifest, all_files = _manifest()
    entry = manifest.shards[0]
    files = all_files[entry.name]
    verify(entry, files)  # intact
    assert entry.files["meta.parquet"] == sha256_hex(files["meta.parquet"])
    data = bytearray(files["vectors.faiss"])
    data[len(data) // 2] ^= 0x01
    with pytest.raises(ValueError, match=r"vectors\.faiss"):
        verify(entry, {**files, "vectors.faiss": bytes(data)})
    with pytest.raises(ValueError, match=r"codes\.faissbin"):
        verify(entry, {k: v for k, v in files.items() if k != "codes.faissbin"})


# --- builder -----------------------------------------------------------------------------------


def _crc32_bitwise(data: bytes) -> int:
    """CRC-32 (IEEE, reflected), bit by bit: an implementation independent of zlib."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_bucket_of_is_stable_and_balanced() -> None:
    # 0xCBF43926 is the published CRC-32 check value of "123456789"; the other is pinned.
    assert bucket_of("123456789", 1 << 32) == 0xCBF43926 == _crc32_bitwise(b"123456789")
    assert bucket_of("img-00001", 1 << 32) == 1409114566 == _crc32_bitwise(b"img-00001")
    assert bucket_of("img-00001", 7) == 1409114566 % 7 == 6
    for image_id in ("a", "img-42", "ünïcode"):
        assert bucket_of(image_id, 16) == zlib.crc32(image_id.encode("utf-8")) % 16
    counts = np.bincount([bucket_of(f"img-{i:06d}", 8) for i in range(8000)], minlength=8)
    assert counts.min() > 0.85 * 1000 and counts.max() < 1.15 * 1000
    with pytest.raises(ValueError):
        bucket_of("x", 0)


def test_shard_name_is_safe_stable_and_unique() -> None:
    assert shard_name("drinks/soda", 3) == shard_name("drinks/soda", 3)
    names = {shard_name(c, b) for c in ("a/b", "a-b", "A B", "", "ü") for b in (0, 1)}
    assert len(names) == 10
    for name in names:
        assert all(ch.isascii() and (ch.isalnum() or ch == "-") for ch in name) and name.islower()
    assert shard_name("Drinks/Soda", 3).startswith("drinks-soda-")


def test_build_shards_partitions_rows() -> None:
    rng = np.random.default_rng(8)
    n = 300
    cats = [["a", "b/c", "d"][i % 3] for i in range(n)]
    meta = _meta(n, cats)
    built = build_shards(_unit(rng, n, 32), meta, buckets_per_category=4)
    assert [(b.category, b.bucket) for b in built] == sorted((b.category, b.bucket) for b in built)
    assert len(built) == 12 and len({b.name for b in built}) == 12
    seen = []
    for b in built:
        assert b.name == shard_name(b.category, b.bucket)
        assert set(b.index.meta.column("category").to_pylist()) == {b.category}
        ids = b.index.meta.column("image_id").to_pylist()
        assert {bucket_of(i, 4) for i in ids} == {b.bucket}
        seen += ids
    assert sorted(seen) == sorted(meta.column("image_id").to_pylist())


# --- searcher ----------------------------------------------------------------------------------


def test_merge_topk() -> None:
    s0 = np.array([[0.9, 0.5, -np.inf], [0.3, 0.2, 0.1]], dtype=np.float32)
    r0 = np.array([[4, 2, -1], [0, 1, 2]])
    s1 = np.array([[0.7, 0.5], [0.3, -np.inf]], dtype=np.float32)
    r1 = np.array([[9, 8], [5, -1]])
    scores, shard, rows = merge_topk([(s0, r0), (s1, r1)], 5)
    np.testing.assert_array_equal(scores[0], np.array([0.9, 0.7, 0.5, 0.5, -np.inf], np.float32))
    assert shard[0].tolist() == [0, 1, 0, 1, -1] and rows[0].tolist() == [
        4,
        9,
        2,
        8,
        -1,
    ]
    assert shard[1].tolist() == [0, 1, 0, 0, -1] and rows[1].tolist() == [
        0,
        5,
        1,
        2,
        -1,
    ]
    scores, shard, rows = merge_topk([(s0, r0), (s1, r1)], 1)
    assert scores.shape == (2, 1) and rows[:, 0].tolist() == [4, 0]


def _category_setup():
    x, q = _clustered(seed=9, n=600, d=64, clusters=12, nq=20)
    cats = [["shoes", "bags", "drinks/soda"][i % 3] for i in range(len(x))]
    meta = _meta(len(x), cats)
    # float32 rescoring: the merge is checked against exact search score for score.
    built = build_shards(x, meta, buckets_per_category=3, rescore_dtype="float32")
    index = ShardedIndex.from_built(built)
    return x, q, np.array(cats), meta, index


def test_sharded_index_equals_exact_over_categories() -> None:
    x, q, cats, meta, index = _category_setup()
    assert len(index) == 600 and index.categories == ["bags", "drinks/soda", "shoes"]
    image_ids = np.array(meta.column("image_id").to_pylist())
    for wanted in (None, ["shoes"], ["shoes", "drinks/soda"]):
        mask = np.ones(len(x), bool) if wanted is None else np.isin(cats, wanted)
        exact_scores, exact_ids = _exact_topk(q, x[mask], 10)
        hits = index.search(q, 10, shortlist=10_000, categories=wanted)
        assert len(hits) == len(q)
        for qi, row in enumerate(hits):
            assert len(row) == 10
            np.testing.assert_allclose([h.score for h in row], exact_scores[qi], atol=5e-4)
            assert [h.image_id for h in row] == image_ids[mask][exact_ids[qi]].tolist()
            assert all(h.category in (wanted or index.categories) for h in row)
    hit = hits[0][0]
    assert hit.shard == shard_name(hit.category, bucket_of(hit.image_id, 3))
    assert isinstance(hit.quality, float) and isinstance(hit.score, float)


def test_sharded_index_category_filter_and_padding() -> None:
    _, q, _, _, index = _category_setup()
    hits = index.search(q[:4], 5, shortlist=20, categories=["bags", "no-such-category"])
    assert all(len(row) == 5 and {h.category for h in row} == {"bags"} for row in hits)
    assert index.search(q[:4], 5, 20, categories=["no-such-category"]) == [[]] * 4
    assert index.search(q[:4], 5, 20, categories=[]) == [[]] * 4
    rng = np.random.default_rng(10)
    small = ShardedIndex.from_built(build_shards(_unit(rng, 7, 64), _meta(7, ["a"] * 7), 2))
    hits = small.search(q[:3], 20, shortlist=5)
    assert [len(row) for row in hits] == [7, 7, 7]
    scores = [h.score for h in hits[0]]
    assert scores == sorted(scores, reverse=True)
    assert ShardedIndex([]).search(q[:2], 3, 3) == [[], []]


def test_shards_are_spread_over_searchers_by_size() -> None:
    from vsearch.index.searcher import assign_shards

    def entry(name: str, count: int, deleted: int = 0) -> ShardEntry:
        return ShardEntry(name=name, category="c", bucket=0, count=count, files={},
                          deleted_rows=list(range(deleted)))  # fmt: skip

    entries = [entry("a", 10), entry("b", 50), entry("c", 30), entry("d", 30, deleted=25)]
    groups = assign_shards(entries, 2)
    assert [[e.name for e in g] for g in groups] == [["b"], ["c", "a", "d"]]
    assert [len(g) for g in assign_shards(entries[:1], 3)] == [1, 0, 0]
    with pytest.raises(ValueError):
        assign_shards(entries, 0)


def test_a_shard_stays_on_the_cpu_where_faiss_has_no_gpu_version() -> None:
    x, q = _clustered(seed=10, n=300, d=64, clusters=6, nq=5)
    flat = ShardIndex.build("f", x, _meta(300))
    before = flat.search(q, 5, 50)
    has_gpu = hasattr(faiss, "GpuIndexBinaryFlat") and faiss.get_num_gpus() > 0
    if not has_gpu:  # faiss-cpu (CI): nothing moves, searches are unchanged
        assert flat.move_to_gpu(object()) is False
    else:  # faiss-gpu on a GPU host: the sign codes move and give the same shortlist
        assert flat.move_to_gpu(faiss.StandardGpuResources()) is True
    np.testing.assert_array_equal(flat.search(q, 5, 50)[1], before[1])
    rabitq = ShardIndex.build("r", x, _meta(300), ivf_above=100)
    assert rabitq.move_to_gpu(object()) is False  # no GPU version of RaBitQ's fast scan
