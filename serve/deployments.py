"""The deployments of the search graph. Each builds a ``vsearch`` object in ``__init__`` and
delegates to it; none holds search logic of its own.

ingress (FastAPI, validates) -> QueryEmbedder (serve.batch) -> ShardSearcher x N -> ResultReranker
"""

# No `from __future__ import annotations` here: FastAPI must see real types (e.g. `Request`) on
# the ingress methods, or it takes `request` for a query parameter.

import asyncio
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Query, Request
from ray import serve
from ray.serve.handle import DeploymentHandle

from vsearch.imaging import ImageDecodeError, decode_image
from vsearch.index.searcher import Hit, ShardedIndex
from vsearch.rank.rerank import Reranker
from vsearch.storage import IndexStore, ModelStore, Storage

#: HTTP status for each decode failure reason.
_STATUS_OF_REASON = {"format_not_allowed": 415, "too_large": 413}


# Enough requests in flight per replica to fill a batch of up to 32.
@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class QueryEmbedder:
    """Embeds decoded query photos with the model version the index was built with."""

    def __init__(
        self, storage_root: str, storage_options: dict, model_version: str, batch: dict
    ) -> None:
        torch.set_num_threads(1)
        store = ModelStore(Storage(storage_root, storage_options))
        self.embedder = store.load_embedder(model_version)
        self.embed_batch.set_max_batch_size(batch["max_batch_size"])
        self.embed_batch.set_batch_wait_timeout_s(batch["batch_wait_timeout_s"])

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def embed_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return list(self.embedder.embed(images))

    async def __call__(self, image: np.ndarray) -> np.ndarray:
        return await self.embed_batch(image)


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class ShardSearcher:
    """Holds some shards of one index version; Hamming shortlist + float rescore over them."""

    def __init__(
        self, storage_root: str, storage_options: dict, index_version: str, shard_names: list[str]
    ) -> None:
        store = IndexStore(Storage(storage_root, storage_options))
        manifest = store.manifest(index_version)
        category = {e.name: e.category for e in manifest.shards}
        shards = store.load_shards(manifest, shard_names)
        self.index = ShardedIndex((category[s.name], s) for s in shards)

    def search(
        self, vector: np.ndarray, k: int, shortlist: int | None, categories: list[str] | None
    ) -> list[Hit]:
        return self.index.search(vector.reshape(1, -1), k, shortlist, categories)[0]


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class ResultReranker:
    """Merges the searchers' hits and ranks products (similarity, quality, one per product)."""

    def __init__(self, quality_weight: float = 0.0, popularity_weight: float = 0.0) -> None:
        self.reranker = Reranker(quality_weight, popularity_weight)

    def rerank(self, hit_lists: list[list[Hit]], k: int) -> list[dict[str, Any]]:
        hits = [h for hits in hit_lists for h in hits]
        return [asdict(p) for p in self.reranker.rerank(hits, k)]


api = FastAPI(
    title="vsearch",
    description="Visual search: upload a product photo, get the matching catalogue products.",
)


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class SearchIngress:
    """HTTP front: validates uploads, fans out to the searchers that hold the wanted categories."""

    def __init__(
        self,
        embedder: DeploymentHandle,
        searchers: list[DeploymentHandle],
        reranker: DeploymentHandle,
        settings: dict[str, Any],
    ) -> None:
        self.embedder = embedder
        self.searchers = searchers
        self.reranker = reranker
        self.settings = settings
        #: Categories held by each searcher, in the order of ``searchers``.
        self.searcher_categories: list[set[str]] = [set(c) for c in settings["categories"]]

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        s = self.settings
        return {
            "status": "ok",
            "index_version": s["index_version"],
            "model_version": s["model_version"],
            "shards": s["shards"],
            "catalog_images": s["catalog_images"],
            "categories": sorted(set().union(*self.searcher_categories)),
        }

    async def _read_upload(self, request: Request) -> bytes:
        limit = self.settings["max_upload_bytes"]
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit + 4096:
            raise HTTPException(413, f"upload of {declared} bytes exceeds the {limit}-byte limit")
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise HTTPException(400, "multipart upload needs a file field named 'image'")
            data = await upload.read()
        else:
            data = await request.body()
        if not data:
            raise HTTPException(
                400, "no image: send it as the request body or as multipart field 'image'"
            )
        if len(data) > limit:
            raise HTTPException(413, f"upload of {len(data)} bytes exceeds the {limit}-byte limit")
        return data

    @api.post("/search")
    async def search(
        self,
        request: Request,
        k: int | None = Query(None, ge=1, le=100, description="products to return"),
        categories: str | None = Query(None, description="comma-separated category filter"),
    ) -> dict[str, Any]:
        started = time.perf_counter()
        k = k or self.settings["top_k"]
        data = await self._read_upload(request)
        try:
            image = decode_image(data, self.settings["max_pixels"], self.settings["max_side"])
        except ImageDecodeError as exc:
            status = _STATUS_OF_REASON.get(exc.reason, 400)
            raise HTTPException(status, f"{exc.reason}: {exc.detail}") from None
        wanted = [c for c in categories.split(",") if c] if categories else None
        targets = [
            s
            for s, cats in zip(self.searchers, self.searcher_categories, strict=True)
            if wanted is None or cats.intersection(wanted)
        ]
        vector = await self.embedder.remote(image)
        shortlist = self.settings["shortlist"]
        per_searcher = k * 4  # several images of one product may precede the next product
        hit_lists = await asyncio.gather(
            *(s.search.remote(vector, per_searcher, shortlist, wanted) for s in targets)
        )
        results = await self.reranker.rerank.remote(list(hit_lists), k)
        return {
            "index_version": self.settings["index_version"],
            "model_version": self.settings["model_version"],
            "took_ms": round((time.perf_counter() - started) * 1000, 3),
            "results": results,
        }
