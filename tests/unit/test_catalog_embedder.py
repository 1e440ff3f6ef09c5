"""The Ray Data UDF of the reindex job, called directly on a dict batch (no Ray)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from vsearch.config import ModelConfig
from vsearch.models.artifact import initial_artifact
from vsearch.runtime.embedding import META_COLUMNS, CatalogEmbedder
from vsearch.storage import ModelStore, Storage


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), colour).save(buf, format="JPEG")
    return buf.getvalue()


def test_embeds_good_images_and_reports_bad_ones(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    ModelStore(storage).save(
        initial_artifact(ModelConfig(arch="cnn_tiny", embed_dim=16), ["c"]), "m1"
    )
    storage.write_bytes("ds/red.jpg", _jpeg((255, 0, 0)))
    storage.write_bytes("ds/blue.jpg", _jpeg((0, 0, 255)))
    storage.write_bytes("ds/corrupt.jpg", _jpeg((0, 255, 0))[:100])
    names = ["red", "blue", "corrupt", "missing"]
    batch = {
        "image_id": np.array(names, dtype=object),
        "product_id": np.array([f"p-{n}" for n in names], dtype=object),
        "image_uri": np.array([f"{n}.jpg" for n in names], dtype=object),
        "category": np.array(["c"] * 4, dtype=object),
        "title": np.array(["t"] * 4, dtype=object),
        "quality": np.ones(4, np.float32),
        "popularity": np.zeros(4, np.float32),
    }
    udf = CatalogEmbedder(storage.root, {}, "m1", "ds", max_pixels=10_000_000)
    out = udf(batch)
    assert set(out) == {*META_COLUMNS, "embedding", "error"}
    assert out["embedding"].shape == (4, 16) and out["embedding"].dtype == np.float32
    assert list(out["error"][:2]) == ["", ""]
    assert out["error"][2].startswith("corrupt")
    assert out["error"][3].startswith("missing")
    np.testing.assert_allclose(np.linalg.norm(out["embedding"][:2], axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(out["embedding"][0], out["embedding"][1])
    assert np.all(out["embedding"][2:] == 0)
    assert list(out["image_id"]) == names


def test_the_stager_writes_rows_by_shard_and_returns_only_a_summary(tmp_path: Path) -> None:
    from vsearch.index.builder import build_shards
    from vsearch.index.staging import decode_staged
    from vsearch.runtime.reindex import CatalogStager

    storage = Storage(str(tmp_path))
    ModelStore(storage).save(
        initial_artifact(ModelConfig(arch="cnn_tiny", embed_dim=16), ["a", "b"]), "m1"
    )
    colours = [(255, 0, 0), (0, 0, 255), (0, 255, 0), (9, 9, 9), (200, 200, 0)]
    names = [f"img{i}" for i in range(5)]
    for name, colour in zip(names, colours, strict=True):
        storage.write_bytes(f"ds/{name}.jpg", _jpeg(colour))
    storage.write_bytes("ds/img4.jpg", b"broken")
    batch = {
        "image_id": np.array(names, dtype=object),
        "product_id": np.array([f"p-{n}" for n in names], dtype=object),
        "image_uri": np.array([f"{n}.jpg" for n in names], dtype=object),
        "category": np.array(["a", "b", "a", "a", "b"], dtype=object),
        "title": np.array(["t"] * 5, dtype=object),
        "quality": np.ones(5, np.float32),
        "popularity": np.zeros(5, np.float32),
    }
    stager = CatalogStager("staging", 2, storage_root=storage.root, storage_options={},
                           model_version="m1", dataset_prefix="ds", max_pixels=10_000_000)  # fmt: skip
    summary = stager(batch)
    errors = {i: e for i, e in zip(summary["image_id"], summary["error"], strict=True) if e}
    assert list(errors) == ["img4"] and errors["img4"].startswith("not_an_image")
    written = {s: int(n) for s, n in zip(summary["shard"], summary["rows"], strict=True) if s}
    assert sum(written.values()) == 4 and set(summary["dim"][summary["rows"] > 0]) == {16}
    # Every shard folder holds exactly the rows build_shards would put in that shard.
    embedded = CatalogEmbedder(storage.root, {}, "m1", "ds", max_pixels=10_000_000)(batch)
    ok = embedded["error"] == ""
    meta = pa.table({c: embedded[c][ok] for c in META_COLUMNS})
    expected = {b.name: b for b in build_shards(embedded["embedding"][ok], meta, 2, None)}
    assert set(written) == set(expected) == set(storage.list("staging"))
    for name, shard in expected.items():
        (part,) = storage.list(f"staging/{name}")
        vectors, staged_meta = decode_staged(storage.read_table(f"staging/{name}/{part}"))
        assert staged_meta["image_id"].to_pylist() == shard.index.meta["image_id"].to_pylist()
        np.testing.assert_allclose(vectors, shard.index.float_rows(), atol=2.5e-3)
