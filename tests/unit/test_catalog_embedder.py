"""The Ray Data UDF of the reindex job, called directly on a dict batch (no Ray)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
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
