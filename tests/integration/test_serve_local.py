"""The search graph in Serve's local testing mode: every deployment in this process, no Ray
cluster, no HTTP; the ingress's methods are called through its handle. Fast enough to run on
every change of the graph (the real `serve.run` tests are in test_pipeline.py)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from starlette.requests import Request

from vsearch.config import Config
from vsearch.imaging import QUERY_DECODE_SCALE, decode_image
from vsearch.index import build_shards
from vsearch.models.artifact import initial_artifact
from vsearch.storage import IndexStore, ModelStore, Storage

CATEGORIES = ["bags", "shoes", "lamps"]


def _photo(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).resize((96, 96), Image.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


def _publish(cfg: Config, photos: list[bytes]) -> None:
    """A catalogue of one product per photo (embedded by the untrained query model, so each
    photo's own product is its exact match), published on ``cfg.storage``."""
    storage = Storage(cfg.storage)
    model = initial_artifact(cfg.model, CATEGORIES)
    model_version = ModelStore(storage).save(model)
    embedder = model.embedder()
    side = QUERY_DECODE_SCALE * model.spec.input_size
    images = [decode_image(p, cfg.index.max_pixels, side) for p in photos]
    vectors = embedder.predict(images).embeddings.astype(np.float32)
    n = len(photos)
    meta = pa.table({
        "image_id": [f"img{i}" for i in range(n)],
        "product_id": [f"p{i}" for i in range(n)],
        "category": [CATEGORIES[i % 3] for i in range(n)],
        "title": [f"product {i}" for i in range(n)],
        "quality": np.ones(n, np.float32),
        "popularity": np.zeros(n, np.float32),
    })  # fmt: skip
    store = IndexStore(storage)
    built = build_shards(vectors, meta, 1)
    store.publish(store.write_version("i-local", built, model_version, embedder.dim, {}))


def _request(body: bytes) -> Request:
    """The Starlette request FastAPI would hand the ingress for ``POST /search`` of ``body``."""
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http", "method": "POST", "path": "/search", "query_string": b"",
        "headers": [(b"content-type", b"image/png"),
                    (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 5000),
    }  # fmt: skip
    return Request(scope, receive)


def test_the_graph_finds_each_photos_product_in_local_testing_mode(tiny_config) -> None:
    from ray import serve

    from serve.app import AppArgs, build_app

    cfg = tiny_config.model_copy(deep=True)
    cfg.category.route_mass = 0.0  # an untrained model routes at random: search every shard
    # The untrained model's vectors are all alike: a sharp vote lets the nearest image decide.
    cfg.category.vote_temperature = 1e-4
    cfg.serve.reload_interval_s = 0
    cfg.index.text_channel = False
    # Ray 2.60's serve.batch needs a replica context that local testing mode does not set: the
    # query model takes one photo at a time here (the batched path runs in test_pipeline.py).
    cfg.serve.max_batch_size = 1
    photos = [_photo(i) for i in range(9)]
    _publish(cfg, photos)
    handle = serve.run(build_app(AppArgs(config=cfg.model_dump())), _local_testing_mode=True)
    # In local testing mode there is nothing to shut down (serve.shutdown would start Ray).
    health = handle.healthz.remote().result(timeout_s=60)
    assert health["status"] == "ok" and health["index_version"] == "i-local"
    assert health["catalog_images"] == 9 and health["categories"] == sorted(CATEGORIES)
    for i, photo in enumerate(photos):
        answer = handle.search.remote(_request(photo), k=3, categories=None, text=None)
        got = answer.result(timeout_s=60)
        assert got["index_version"] == "i-local" and got["routed_by"] == "all"
        assert got["results"][0]["product_id"] == f"p{i}", got["results"]
        assert len(got["results"]) == 3
        assert got["results"][0]["similarity"] == pytest.approx(1.0, abs=1e-2)
        assert set(got["timings_ms"]) == {"read", "decode", "embed", "vote", "search", "rerank",
                                          "total"}  # fmt: skip
        # The photo's nearest image is its own: the vote carries the fused category there.
        assert got["category"]["name"] == CATEGORIES[i % 3], got["category"]
    # A category filter searches only that category's shard.
    got = handle.search.remote(_request(photos[1]), k=3, categories="shoes",
                               text=None).result(timeout_s=60)  # fmt: skip
    assert got["routed_by"] == "request" and got["searched_categories"] == ["shoes"]
    assert {r["category"] for r in got["results"]} == {"shoes"}
    # An upload that is not an image is refused with a reason (a 4xx, not an error).
    from fastapi import HTTPException

    with pytest.raises(HTTPException) as refused:
        handle.search.remote(_request(b"not an image"), k=3, categories=None,
                             text=None).result(timeout_s=60)  # fmt: skip
    assert 400 <= refused.value.status_code < 500
