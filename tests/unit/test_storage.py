"""Storage through fsspec URLs: local, memory:// and S3 (moto on 127.0.0.1); versioned stores."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from vsearch.config import ModelConfig
from vsearch.data.dataset import CatalogDataset
from vsearch.index.builder import build_shards
from vsearch.models.artifact import initial_artifact
from vsearch.storage import IndexStore, ModelStore, Storage, read_dataset, write_dataset


def _dataset() -> tuple[CatalogDataset, dict[str, bytes]]:
    catalog = pa.table(
        {
            "product_id": ["p1", "p2"],
            "image_id": ["c1", "c2"],
            "image_uri": ["images/c1.jpg", "/abs/c2.jpg"],
            "category": ["a/b", "a/c"],
            "title": ["one", "two"],
            "attributes": ["{}", "{}"],
            "quality": pa.array([0.5, 1.0], pa.float32()),
            "popularity": pa.array([0.1, 0.2], pa.float32()),
        }
    )
    queries = pa.table(
        {
            "query_id": ["q1"],
            "product_id": ["p1"],
            "image_uri": ["images/q1.jpg"],
            "category": ["a/b"],
            "split": ["test"],
            "box": pa.array([[1.0, 2.0, 3.0, 4.0]], pa.list_(pa.float32(), 4)),
        }
    )
    return CatalogDataset(catalog, queries), {"images/c1.jpg": b"c1", "images/q1.jpg": b"q1"}


def _round_trip(storage: Storage) -> None:
    ds, images = _dataset()
    write_dataset(storage, "datasets/x", ds, images)
    back = read_dataset(storage, "datasets/x")
    assert back.catalog.num_rows == 2 and back.clicks is None
    uris = back.catalog["image_uri"].to_pylist()
    assert uris[0] == storage.url("datasets/x/images/c1.jpg")
    assert uris[1] == "file:///abs/c2.jpg"
    assert storage.read_bytes(uris[0]) == b"c1"
    assert storage.read_bytes(back.queries["image_uri"][0].as_py()) == b"q1"
    assert back.queries["box"][0].as_py() == [1.0, 2.0, 3.0, 4.0]


def test_local_round_trip_and_atomic_write(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "root"))
    assert storage.root == f"file://{tmp_path}/root"
    _round_trip(storage)
    storage.write_text("a/b.txt", "hello")
    leftovers = [p.name for p in (tmp_path / "root" / "a").iterdir()]
    assert leftovers == ["b.txt"]  # no temporary file left behind


def test_memory_round_trip() -> None:
    _round_trip(Storage(f"memory://vsearch-test-{uuid.uuid4().hex}"))


def test_s3_round_trip(s3_endpoint: str) -> None:
    import boto3

    bucket = f"vsearch-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    storage = Storage(f"s3://{bucket}/root", {"client_kwargs": {"endpoint_url": s3_endpoint}})
    _round_trip(storage)
    # Ray reads through a pyarrow filesystem wrapping the same fsspec one.
    fs, root = storage.pyarrow_filesystem()
    info = fs.get_file_info(f"{root}/datasets/x/catalog.parquet")
    assert info.size > 0


def test_missing_dataset_and_file_errors(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"catalog\.parquet is missing"):
        read_dataset(storage, "datasets/none")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        storage.read_bytes("nope.bin")


def test_model_store_versions(tmp_path: Path) -> None:
    store = ModelStore(Storage(str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="vsearch train"):
        store.latest()
    art = initial_artifact(ModelConfig(arch="cnn_tiny", embed_dim=16), ["c"])
    v1 = store.save(art, "m1")
    v2 = store.save(art, "m2")
    assert (v1, v2) == ("m1", "m2") and store.latest() == "m2"
    version, loaded = store.load("m1")
    assert version == "m1" and loaded.config == art.config


def _shards(n: int = 30, seed: int = 0) -> tuple[list, int]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, 16)).astype(np.float32)
    meta = pa.table(
        {
            "image_id": [f"i{i}" for i in range(n)],
            "product_id": [f"p{i}" for i in range(n)],
            "category": ["a" if i % 2 else "b" for i in range(n)],
            "title": ["t"] * n,
            "quality": pa.array([1.0] * n, pa.float32()),
            "popularity": pa.array([0.0] * n, pa.float32()),
        }
    )
    return build_shards(vectors, meta, 2), 16


def test_index_store_publish_and_verify(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    store = IndexStore(storage)
    built, dim = _shards()
    manifest = store.write_version("i1", built, "m1", dim, {"embedded": 30})
    # Written but not published: nothing serves yet.
    with pytest.raises(FileNotFoundError, match="vsearch reindex"):
        store.current()
    store.publish(manifest)
    assert store.current() == "i1"
    assert store.manifest().model_version == "m1"
    shards = store.load_shards(store.manifest())
    assert sum(len(s) for s in shards) == 30
    # Each shard's tuned shortlist travels through the manifest to the loaded shard.
    tuned = {e.name: e.shortlist for e in store.manifest().shards}
    assert all(v is not None for v in tuned.values())
    assert {s.name: s.shortlist for s in shards} == tuned
    # A second version written but never published leaves i1 current.
    store.write_version("i2", _shards(seed=1)[0], "m2", dim, {})
    assert store.current() == "i1"
    # A corrupted shard file is caught by its checksum.
    entry = manifest.shards[0]
    victim = tmp_path / "indexes" / "i1" / "shards" / entry.name / "vectors.faiss"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"vectors\.faiss"):
        store.load_shards(manifest, [entry.name])


def test_rescoring_vectors_are_memory_mapped_not_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = np.random.default_rng(5).normal(size=(4, 16)).astype(np.float32)
    built, dim = _shards()
    expected = [b.index.search(probe, 5, 30) for b in built]
    # Local storage: the shard's own file is mapped.
    store = IndexStore(Storage(str(tmp_path / "local")))
    store.publish(store.write_version("i1", built, "m1", dim, {}))
    for shard, (_scores, rows) in zip(store.load_shards(store.manifest()), expected, strict=True):
        assert shard.rows_mapped and shard.rescore_dtype == "float16"
        assert str(tmp_path / "local") in str(shard.rows_file)
        np.testing.assert_array_equal(shard.search(probe, 5, 30)[1], rows)
    # Remote storage: a verified copy in the cache is mapped, and a damaged copy is replaced.
    cache = tmp_path / "cache"
    monkeypatch.setenv("VSEARCH_INDEX_CACHE", str(cache))
    remote = IndexStore(Storage(f"memory://vsearch-{uuid.uuid4().hex}"))
    remote.publish(remote.write_version("i1", built, "m1", dim, {}))
    first = remote.load_shards(remote.manifest())
    assert all(s.rows_mapped and str(cache) in str(s.rows_file) for s in first)
    copy = Path(str(first[0].rows_file))
    del first
    copy.write_bytes(b"damaged")
    again = remote.load_shards(remote.manifest())
    np.testing.assert_array_equal(again[0].search(probe, 5, 30)[1], expected[0][1])
    assert copy.read_bytes() != b"damaged"


@pytest.mark.parametrize(
    ("dtype", "rows_file"), [("float16", "vectors.faiss"), ("int8", "vectors.npy")]
)
def test_a_large_shard_loads_mapped_and_searches_as_built(
    tmp_path: Path, dtype: str, rows_file: str
) -> None:
    rng = np.random.default_rng(9)
    n = 3000
    vectors = rng.normal(size=(n, 16)).astype(np.float32)
    meta = pa.table(
        {
            "image_id": [f"i{i}" for i in range(n)],
            "product_id": [f"p{i}" for i in range(n)],
            "category": ["a"] * n,
            "title": ["t"] * n,
            "quality": pa.array([1.0] * n, pa.float32()),
            "popularity": pa.array([0.0] * n, pa.float32()),
        }
    )
    built = build_shards(vectors, meta, 1, ivf_above=1000, rescore_dtype=dtype)
    assert built[0].index.engine.endswith("x4fs")  # the PQ fast-scan engine, the default
    store = IndexStore(Storage(str(tmp_path)))
    manifest = store.write_version("i1", built, "m1", 16, {})
    assert rows_file in manifest.shards[0].files
    (loaded,) = store.load_shards(manifest)
    assert loaded.rows_mapped and str(loaded.rows_file).endswith(rows_file)
    assert loaded.engine == built[0].index.engine and loaded.nprobe == built[0].index.nprobe
    probe = rng.normal(size=(20, 16)).astype(np.float32)
    for queries in (probe, probe[:1]):
        want = built[0].index.search(queries, 10)
        got = loaded.search(queries, 10)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], atol=1e-6)


def test_index_versions_publish_rollback_and_gc(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    store = IndexStore(storage)
    built, dim = _shards()
    for version in ("i1", "i2", "i3"):
        store.publish(store.write_version(version, built, "m1", dim, {}))
    store.write_version("i0", built, "m1", dim, {})  # an old reindex that never finished
    assert store.current() == "i3" and store.history() == ["i1", "i2", "i3"]
    rows = {r["version"]: r for r in store.versions()}
    assert rows["i3"]["current"] and rows["i2"]["complete"] and not rows["i0"]["complete"]
    assert rows["i1"]["vectors"] == 30 and rows["i1"]["shards"] == len(built)
    # Rollback serves the version published before; publishing an old one by name works too.
    assert store.rollback().version == "i2" and store.current() == "i2"
    assert store.publish_version("i3").version == "i3" and store.current() == "i3"
    # A version without a manifest, or with a damaged one, is refused with the file's name.
    with pytest.raises(FileNotFoundError, match="did not finish"):
        store.publish_version("i0")
    manifest_file = tmp_path / "indexes" / "i1" / "manifest.json"
    manifest_file.write_text(manifest_file.read_text().replace('"m1"', '"m9"'))
    with pytest.raises(ValueError, match=r"i1/manifest\.json: checksum mismatch"):
        store.publish_version("i1")
    assert store.current() == "i3"
    # gc keeps the newest complete versions and the published one, and drops unfinished ones.
    store.publish_version("i2")
    assert sorted(store.gc(keep=1)) == ["i0", "i1"]
    assert [r["version"] for r in store.versions()] == ["i2", "i3"]
    (tmp_path / "indexes" / "CURRENT").write_text("")
    with pytest.raises(ValueError, match="CURRENT is empty"):
        store.current()


def test_index_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.cli import main

    store = IndexStore(Storage(str(tmp_path)))
    built, dim = _shards()
    for version in ("i1", "i2"):
        store.publish(store.write_version(version, built, "m1", dim, {}))
    at = ["--set", f"storage={tmp_path}"]
    assert main(["index", "list", *at]) == 0
    listing = capsys.readouterr().out
    assert "* i2" in listing and "  i1" in listing
    assert main(["index", "rollback", *at]) == 0
    assert "i2 -> i1" in capsys.readouterr().out and store.current() == "i1"
    assert main(["index", "publish", "nope", *at]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vsearch index publish: index version 'nope' has no manifest")
    assert main(["index", "gc", "--keep", "1", *at]) == 0
    assert "deleted 0 version(s)" in capsys.readouterr().out  # i2 newest, i1 published
