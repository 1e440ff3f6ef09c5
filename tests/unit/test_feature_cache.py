"""The feature-map cache on storage and its Ray Data stages (called directly, without Ray)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from vsearch.storage import Storage
from vsearch.storage.feature_cache import FeatureCache, content_key


def test_cache_round_trip_in_float16(tmp_path: Path) -> None:
    cache = FeatureCache(Storage(str(tmp_path)), "bb-123")
    assert cache.keys() == set() and cache.read() == {}
    maps = np.random.default_rng(0).normal(size=(3, 4, 2, 2)).astype(np.float32)
    cache.write(["a", "b", "c"], maps)
    cache.write(["d"], maps[:1] * 2)
    assert cache.keys() == {"a", "b", "c", "d"}
    got = cache.read(["b", "d", "zzz"])
    assert set(got) == {"b", "d"} and got["b"].dtype == np.float16
    np.testing.assert_allclose(got["b"], maps[1], rtol=1e-3, atol=1e-3)
    other = FeatureCache(Storage(str(tmp_path)), "another-backbone")
    assert other.keys() == set()  # a new backbone never reads another's maps


def test_hasher_keys_by_content(tmp_path: Path) -> None:
    from vsearch.runtime.features import ImageHasher

    storage = Storage(str(tmp_path))
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PNG")
    storage.write_bytes("a.png", buf.getvalue())
    storage.write_bytes("copy.png", buf.getvalue())
    out = ImageHasher(storage.root, {})(
        {"uri": np.array([storage.url("a.png"), storage.url("copy.png"), storage.url("no.png")])}
    )
    assert out["key"][0] == out["key"][1] == content_key(buf.getvalue())
    assert out["key"][2] == "" and out["error"][2].startswith("missing")


def test_map_encoder_runs_every_view(tmp_path: Path, tiny_onnx: bytes) -> None:
    from vsearch.runtime.features import MapEncoder

    storage = Storage(str(tmp_path))
    storage.write_bytes("bb.onnx", tiny_onnx)
    buf = io.BytesIO()
    ramp = np.linspace(0, 255, 40, dtype=np.uint8)[None, :, None].repeat(30, 0).repeat(3, 2)
    Image.fromarray(ramp).save(buf, format="JPEG")  # a ramp: the crop differs from the whole
    storage.write_bytes("a.jpg", buf.getvalue())
    storage.write_bytes("bad.jpg", b"not an image")
    enc = MapEncoder(
        storage.root, {}, "xception_onnx", storage.url("bb.onnx"), 10_000_000, [1.0, 0.5]
    )
    out = enc(
        {
            "uri": np.array([storage.url("a.jpg"), storage.url("bad.jpg")]),
            "key": np.array(["k1", "k2"]),
        }
    )
    assert list(out["key"]) == ["k1", "k2", "k1@0.5", "k2@0.5"]
    assert out["map"].shape == (4, 2048, 7, 7) and out["map"].dtype == np.float16
    assert list(out["error"][[0, 2]]) == ["", ""]
    assert out["error"][1].startswith("not_an_image") and out["error"][3] == out["error"][1]
    assert np.abs(out["map"][0]).sum() > 0 and not np.array_equal(out["map"][0], out["map"][2])
