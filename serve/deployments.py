"""The deployments of the search graph. Each builds a ``vsearch`` object in ``__init__`` and
delegates to it; none holds search logic of its own.

ingress (FastAPI, validates) -> QueryEmbedder (serve.batch) -> ShardSearcher x N -> rank
(``QueryPipeline.rank``: in the ingress for a photo, in ResultReranker, which holds the text
model, for a hybrid query)
"""

# No `from __future__ import annotations` here: FastAPI must see real types (e.g. `Request`) on
# the ingress methods, or it takes `request` for a query parameter.

import asyncio
import base64
import binascii
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve.api_models import (
    SEARCH_REQUEST_BODY,
    Health,
    Product,
    SearchResponse,
    error_responses,
)
from serve.settings import EmbedderArgs, IngressArgs, RerankerArgs, SearcherArgs
from vsearch.guards import BodyTooLargeError, RateLimiter, bearer_ok, load_token, read_limited
from vsearch.imaging import QUERY_DECODE_SCALE, ImageDecodeError, decode_image, sniff_media_type
from vsearch.index.manifest import CATALOG, ShardEntry
from vsearch.index.searcher import Hit, ShardedIndex, assign_shards
from vsearch.index.text import TextChannel
from vsearch.rank.pipeline import QueryPipeline, QueryPlan
from vsearch.storage import IndexStore, ModelStore, Storage, read_dataset

#: The web page at ``/`` (plain HTML and JavaScript, no external resources).
_PAGE = (Path(__file__).parent / "static" / "index.html").read_text(encoding="utf-8")

#: HTTP status for each decode failure reason.
_STATUS_OF_REASON = {"format_not_allowed": 415, "too_large": 413}


# Enough requests in flight per replica to fill a batch of up to 32.
@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class QueryEmbedder:
    """Runs the query model of each index version served (the model the index was built with):
    one batched forward pass gives embedding, subject box and category probabilities."""

    def __init__(self, args: EmbedderArgs) -> None:
        torch.set_num_threads(1)
        self.store = ModelStore(Storage(args.storage.root, args.storage.options))
        self.embedders = {args.model_version: self.store.load_embedder(args.model_version)}
        self.batching = args.max_batch_size > 1
        self.embed_batch.set_max_batch_size(args.max_batch_size)
        self.embed_batch.set_batch_wait_timeout_s(args.batch_wait_timeout_s)

    def load(self, model_version: str) -> None:
        """Load ``model_version`` beside the ones held (a hot reload to a new index version)."""
        if model_version not in self.embedders:
            self.embedders[model_version] = self.store.load_embedder(model_version)

    def drop(self, keep: list[str]) -> None:
        """Forget every model version not in ``keep``."""
        for version in [v for v in self.embedders if v not in keep]:
            del self.embedders[version]

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def embed_batch(self, items: list[tuple[np.ndarray, str]]) -> list[dict[str, np.ndarray]]:
        return self.predict(items)

    def predict(self, items: list[tuple[np.ndarray, str]]) -> list[dict[str, np.ndarray]]:
        """One forward pass per model version among ``items`` (image, model version)."""
        out: list[dict[str, np.ndarray] | None] = [None] * len(items)
        for version in {v for _, v in items}:
            members = [i for i, (_, v) in enumerate(items) if v == version]
            pred = self.embedders[version].predict([items[i][0] for i in members])
            for j, i in enumerate(members):
                out[i] = {
                    "embedding": pred.embeddings[j],
                    "box": pred.boxes[j],
                    "category_probs": pred.category_probs[j],
                }
        return out  # type: ignore[return-value]

    async def __call__(self, image: np.ndarray, model_version: str) -> dict[str, np.ndarray]:
        if not self.batching:  # serve.max_batch_size 1: no batch queue at all
            return self.predict([(image, model_version)])[0]
        return await self.embed_batch((image, model_version))

    def ping(self) -> bool:
        return True


def _sees_gpu() -> bool:
    """Whether Ray gave this replica a GPU and FAISS was built with GPU support."""
    import ray

    # Outside a Ray worker (Serve's local testing mode) there is no GPU given, and asking
    # would start a Ray instance.
    if not ray.is_initialized():
        return False
    return bool(ray.get_gpu_ids()) and hasattr(faiss, "StandardGpuResources")


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class ShardSearcher:
    """Holds its group of shards of each index version served (the published one, and during a
    hot reload the next one too); every answer names the version that gave it."""

    def __init__(self, args: SearcherArgs) -> None:
        self.store = IndexStore(Storage(args.storage.root, args.storage.options))
        self.indexes: dict[str, ShardedIndex] = {}
        # A replica given a GPU (serve.searcher_gpus) searches the shards FAISS can run there.
        self.gpu = faiss.StandardGpuResources() if _sees_gpu() else None
        self.load(args.index_version, args.shard_names)

    def load(self, index_version: str, shard_names: list[str]) -> None:
        """Load (checksums verified) this searcher's shards of ``index_version``; a damaged file
        raises, naming it, and nothing of that version is kept."""
        if index_version in self.indexes:
            return
        manifest = self.store.manifest(index_version)
        shards = self.store.load_shards(manifest, shard_names)
        if self.gpu is not None:
            for shard in shards:
                shard.move_to_gpu(self.gpu)
        self.indexes[index_version] = ShardedIndex.of_entries(manifest.shards, shards)

    def drop(self, keep: list[str]) -> None:
        """Forget every index version not in ``keep``."""
        for version in [v for v in self.indexes if v not in keep]:
            del self.indexes[version]

    def search(
        self,
        index_version: str,
        vector: np.ndarray,
        k: int,
        shortlist: int | None,
        categories: list[str] | None,
        gallery: str = CATALOG,
    ) -> tuple[str, list[Hit]]:
        index = self.indexes.get(index_version)
        if index is None:
            raise LookupError(f"index version {index_version} is not loaded on this searcher")
        hits = index.search(vector.reshape(1, -1), k, shortlist, categories, gallery)
        return index_version, hits[0]

    def ping(self) -> bool:
        return True


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class ResultReranker:
    """Merges the searchers' hits and ranks products (similarity, quality, one per product). A
    hybrid query's text is embedded here (MiniLM) and re-scores the products against the
    product titles of the index version that answered (its text channel)."""

    def __init__(self, args: RerankerArgs) -> None:
        torch.set_num_threads(1)
        self.args = args
        self.pipeline = QueryPipeline(args.policy)
        self.store = IndexStore(Storage(args.storage.root, args.storage.options))
        self.channels: dict[str, TextChannel | None] = {}
        self.encoder: Any = None
        self.load(args.index_version)

    def load(self, index_version: str) -> None:
        """Load (checksum verified) the text channel of ``index_version``, if it has one."""
        if index_version in self.channels:
            return
        channel = self.store.load_text(self.store.manifest(index_version))
        if channel is not None and self.encoder is None:
            from vsearch.models.text import TextEncoder

            self.encoder = TextEncoder(self.args.text_model_path, threads=1)
        if channel is not None and channel.model != self.encoder.name:
            raise ValueError(
                f"index version {index_version}'s titles were embedded with {channel.model}, "
                f"but the service's text model is {self.encoder.name} (index.text_model_path)"
            )
        self.channels[index_version] = channel

    def drop(self, keep: list[str]) -> None:
        """Forget the text channel of every index version not in ``keep``."""
        for version in [v for v in self.channels if v not in keep]:
            del self.channels[version]

    def rerank(
        self,
        index_version: str,
        hit_lists: list[list[Hit]],
        plan: QueryPlan,
        text: str | None = None,
    ) -> list[dict[str, Any]]:
        """The pipeline's rank stage (``QueryPipeline.rank``) for one query's hit lists."""
        if index_version not in self.channels:
            raise LookupError(f"index version {index_version} is not loaded on this re-ranker")
        channel = self.channels[index_version]
        vector = self.encoder.encode([text])[0] if text and channel is not None else None
        ranked = self.pipeline.rank(plan, hit_lists, vector, channel)
        return [asdict(p) for p in ranked]

    def ping(self) -> bool:
        return True


api = FastAPI(
    title="vsearch",
    description="Visual search: upload a product photo, get the matching catalogue products.",
)


@dataclass(frozen=True)
class _Served:
    """One index version as the ingress serves it: its model, how its shards are spread over the
    searchers, and the categories each searcher holds per gallery (catalogue images, reference
    photos of the category vote). A request reads it once, so every call it makes names the
    same version."""

    index_version: str
    model_version: str
    groups: list[list[str]]
    searcher_categories: list[dict[str, set[str]]]
    model_categories: list[str]
    shards: int
    catalog_images: int
    reference_photos: int
    max_side: int
    #: Whether the version has a text channel (hybrid queries).
    text: bool
    #: The galleries its shards hold (catalogue, reference photos of the category vote).
    galleries: frozenset[str]

    @classmethod
    def of(cls, storage: Storage, version: str | None, searchers: int) -> "_Served":
        """The state of ``version`` (None: the published one), manifest and model verified."""
        manifest = IndexStore(storage).manifest(version)
        _, artifact = ModelStore(storage).load(manifest.model_version)
        groups = assign_shards(manifest.shards, searchers)
        return cls(
            index_version=manifest.version,
            model_version=manifest.model_version,
            groups=[[e.name for e in g] for g in groups],
            searcher_categories=[_categories_by_role(g) for g in groups],
            model_categories=list(artifact.categories),
            shards=len(manifest.shards),
            catalog_images=manifest.total_count,
            reference_photos=manifest.reference_count,
            max_side=QUERY_DECODE_SCALE * artifact.spec.input_size,
            text=manifest.text is not None,
            galleries=frozenset(e.role for e in manifest.shards),
        )

    @property
    def categories(self) -> list[str]:
        """The catalogue's categories."""
        return sorted(set().union(*(held.get(CATALOG, set()) for held in self.searcher_categories)))


def _categories_by_role(entries: list[ShardEntry]) -> dict[str, set[str]]:
    """Role (gallery) -> the categories of ``entries`` in it."""
    out: dict[str, set[str]] = {}
    for e in entries:
        out.setdefault(e.role, set()).add(e.category)
    return out


class _Catalogue:
    """The catalogue's image locations and products, for ``/images`` and ``/products``."""

    def __init__(self, storage: Storage, dataset_prefix: str) -> None:
        self.storage = storage
        self.uri_of: dict[str, str] = {}
        self.products: dict[str, dict[str, Any]] = {}
        try:
            table = read_dataset(storage, dataset_prefix).catalog
        except FileNotFoundError:
            return  # an index without its dataset: search works, the image routes answer 404
        for row in table.select(["product_id", "image_id", "image_uri", "category", "title"]
                                ).to_pylist():  # fmt: skip
            self.uri_of[row["image_id"]] = row["image_uri"]
            product = self.products.setdefault(
                row["product_id"],
                {"product_id": row["product_id"], "title": row["title"],
                 "category": row["category"], "images": []},
            )  # fmt: skip
            product["images"].append(row["image_id"])


class _Metrics:
    """The ingress replica's Prometheus metrics (each replica exposes its own at /metrics)."""

    STAGES = ("read", "decode", "embed", "search", "rerank", "total")

    def __init__(self, index_version: str, model_version: str) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "vsearch_requests", "HTTP requests by endpoint and status code",
            ["endpoint", "code"], registry=self.registry,
        )  # fmt: skip
        self.errors = Counter(
            "vsearch_errors", "Refused or failed searches by reason", ["reason"],
            registry=self.registry,
        )  # fmt: skip
        self.seconds = Histogram(
            "vsearch_stage_seconds", "Seconds per stage of a search", ["stage"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )  # fmt: skip
        self.served = Gauge(
            "vsearch_index_info", "The index and model versions this replica serves (value 1)",
            ["index_version", "model_version"], registry=self.registry,
        )  # fmt: skip
        self.served.labels(index_version, model_version).set(1)
        self.reloads = Counter(
            "vsearch_index_reloads", "Switches to a newly published index version",
            registry=self.registry,
        )  # fmt: skip

    def switch(self, old: "_Served", new: "_Served") -> None:
        """The replica now serves ``new`` instead of ``old``."""
        self.served.remove(old.index_version, old.model_version)
        self.served.labels(new.index_version, new.model_version).set(1)
        self.reloads.inc()

    def error(self, code: int, message: str) -> HTTPException:
        """Count a refused search under the reason that starts ``message`` (the text before
        its first colon) and return the exception that refuses it with ``message``."""
        self.requests.labels("/search", str(code)).inc()
        self.errors.labels(message.split(":", 1)[0]).inc()
        return HTTPException(code, message)


def _grpc(handle: DeploymentHandle) -> DeploymentHandle:
    """``handle`` calling its deployment over Serve's inter-deployment gRPC channel (every
    replica runs its server) instead of Ray actor calls."""
    return handle.options(_by_reference=False)


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class SearchIngress:
    """HTTP front: checks the token and the client's rate, reads the upload under its size limit
    as it streams, decodes it off the event loop (so /healthz stays quick), and fans out to the
    searchers that hold the wanted categories."""

    def __init__(
        self,
        embedder: DeploymentHandle,
        searchers: list[DeploymentHandle],
        reranker: DeploymentHandle,
        args: IngressArgs,
    ) -> None:
        if args.grpc_calls:
            # A handle keeps the transport of the process that made it (the driver, for the
            # bound graph): ask for Serve's gRPC channel here, whatever the driver's settings.
            embedder, reranker = _grpc(embedder), _grpc(reranker)
            searchers = [_grpc(s) for s in searchers]
        self.embedder = embedder
        self.searchers = searchers
        self.reranker = reranker
        self.args = args
        self.pipeline = QueryPipeline(args.policy)
        self.storage = Storage(args.storage.root, args.storage.options)
        self.served = _Served.of(self.storage, args.index_version, len(searchers))
        self.token: str | None = None
        if args.require_auth:
            self.token = load_token(args.auth_token_env, args.auth_token_file)
            if self.token is None:
                raise RuntimeError("auth is required but no API token is set")
        rate = args.rate_limit_per_s
        self.limiter = RateLimiter(rate, args.rate_limit_burst) if rate > 0 else None
        self.metrics = _Metrics(self.served.index_version, self.served.model_version)
        self.catalogue = _Catalogue(self.storage, args.dataset_prefix)
        #: Why the last published version was refused (None: serving the published one).
        self.reload_error: str | None = None
        self._refused: str | None = None
        self._watcher: asyncio.Task | None = None

    # -- hot reload --------------------------------------------------------------------------
    def _watch(self) -> None:
        """Start following ``indexes/CURRENT`` (once, from inside the event loop)."""
        interval = self.args.reload_interval_s
        if interval > 0 and self.args.follow_published and self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._follow(interval))

    async def _follow(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reload()
            except Exception as exc:  # keep following; the reason is kept for /readyz
                self.reload_error = f"reload check failed: {type(exc).__name__}: {exc}"

    async def reload(self) -> bool:
        """Switch to the published version if it changed: load its model and shards beside the
        current ones, then swap in one step (requests already running finish on the old
        version, which is dropped after ``reload_grace_s``). A version that fails its checks is
        refused with its reason (``/readyz``, ``/healthz``) and the current one keeps serving.
        Returns whether it switched."""
        published = await asyncio.to_thread(IndexStore(self.storage).current)
        if published in (self.served.index_version, self._refused):
            return False
        try:
            new = await asyncio.to_thread(_Served.of, self.storage, published, len(self.searchers))
            await self.embedder.load.remote(new.model_version)
            await self.reranker.load.remote(new.index_version)
            await asyncio.gather(
                *(s.load.remote(new.index_version, names)
                  for s, names in zip(self.searchers, new.groups, strict=True))
            )  # fmt: skip
            catalogue = await asyncio.to_thread(_Catalogue, self.storage, self.args.dataset_prefix)
        except Exception as exc:
            # A replica's error arrives wrapped in Ray's (with its traceback): keep the cause.
            cause = getattr(exc, "cause", None) or exc
            self._refused = published
            self.reload_error = f"index version {published} refused: {cause}"
            print(f"vsearch: {self.reload_error}; still serving {self.served.index_version}",
                  flush=True)  # fmt: skip
            await self._drop(keep=self.served)
            return False
        old, self.served, self.catalogue = self.served, new, catalogue
        self.reload_error = None
        self.metrics.switch(old, new)
        print(f"vsearch: now serving index {new.index_version} (was {old.index_version})",
              flush=True)  # fmt: skip
        asyncio.get_running_loop().call_later(
            self.args.reload_grace_s,
            lambda: asyncio.ensure_future(self._drop(keep=self.served)),
        )
        return True

    async def _drop(self, keep: _Served) -> None:
        await asyncio.gather(
            self.embedder.drop.remote([keep.model_version]),
            self.reranker.drop.remote([keep.index_version]),
            *(s.drop.remote([keep.index_version]) for s in self.searchers),
            return_exceptions=True,
        )

    def _check_token(self, request: Request, endpoint: str) -> None:
        if self.token is not None and not bearer_ok(request.headers.get("authorization"),
                                                    self.token):  # fmt: skip
            self.metrics.requests.labels(endpoint, "401").inc()
            self.metrics.errors.labels("unauthorized").inc()
            raise HTTPException(
                401, "missing or wrong API token: send 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip

    def _check_rate(self, request: Request) -> None:
        if self.limiter is None:
            return
        client = request.client.host if request.client is not None else "unknown"
        wait = self.limiter.check(client)
        if wait is not None:
            self.metrics.requests.labels("/search", "429").inc()
            self.metrics.errors.labels("rate_limited").inc()
            raise HTTPException(
                429, f"too many requests from {client}: retry in {wait:.1f} s",
                headers={"Retry-After": RateLimiter.retry_after(wait)},
            )  # fmt: skip

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        """The search page: upload or drop a photo, see the box, the category and the results."""
        return HTMLResponse(_PAGE)

    @api.get("/healthz", response_model=None, responses={200: {"model": Health}})
    async def healthz(self) -> dict[str, Any]:
        """Liveness: the ingress answers (it does not call the other deployments)."""
        self._watch()
        served = self.served
        return {
            "status": "ok",
            "index_version": served.index_version,
            "model_version": served.model_version,
            "shards": served.shards,
            "catalog_images": served.catalog_images,
            "reference_photos": served.reference_photos,
            "categories": served.categories,
            "reload_error": self.reload_error,
        }

    @api.get("/readyz", responses={503: {"description": "not ready: {ready: false, reason}"}})
    async def readyz(self) -> Response:
        """Readiness: the embedder, every searcher and the re-ranker answer within 2 s. A
        published version that was refused is reported (``reload_error``) while the one served
        keeps answering."""
        self._watch()
        calls = [self.embedder.ping.remote(), self.reranker.ping.remote()]
        calls += [s.ping.remote() for s in self.searchers]
        try:
            await asyncio.wait_for(asyncio.gather(*calls), timeout=2.0)
        except Exception as exc:  # a replica that is down or failing: not ready, say why
            reason = f"{type(exc).__name__}: {exc}".strip()[:300]
            return JSONResponse({"ready": False, "reason": reason}, status_code=503)
        return JSONResponse(
            {"ready": True, "index_version": self.served.index_version,
             "searchers": len(self.searchers), "reload_error": self.reload_error}
        )  # fmt: skip

    @api.get(
        "/metrics",
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
                   **error_responses(401)},
    )  # fmt: skip
    async def metrics(self, request: Request) -> Response:
        """Prometheus metrics of this ingress replica (behind the token when auth is on)."""
        self._check_token(request, "/metrics")
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def _read_upload(self, request: Request) -> tuple[bytes, str | None]:
        """The photo's bytes and the text sent with it (multipart field ``text``, or JSON key
        ``text``; None when there is none)."""
        limit = self.args.max_upload_bytes
        content_type = request.headers.get("content-type", "")
        # Multipart framing adds a few hundred bytes around the file; base64 a third.
        slack = 4096 + (limit // 3 if content_type.startswith("application/json") else 0)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit + slack:
            raise self.metrics.error(
                413, f"too large: upload of {declared} bytes exceeds the {limit}-byte limit"
            )
        try:
            body = await read_limited(request.stream(), limit + slack)
        except BodyTooLargeError as exc:
            raise self.metrics.error(413, f"too large: {exc}") from None
        text: str | None = None
        if content_type.startswith("multipart/form-data"):
            request._body = body  # Starlette parses the form from the body already read
            form = await request.form()
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise self.metrics.error(
                    400, "no image: multipart upload needs a file field named 'image'"
                )
            data = await upload.read()
            field = form.get("text")
            text = field if isinstance(field, str) else None
        elif content_type.startswith("application/json"):
            data, text = self._json_upload(body)
        else:
            data = body
        if not data:
            raise self.metrics.error(
                400, "no image: send it as the request body, as multipart field 'image' or as "
                "base64 in JSON key 'image'",
            )  # fmt: skip
        if len(data) > limit:
            raise self.metrics.error(
                413, f"too large: upload of {len(data)} bytes exceeds the {limit}-byte limit"
            )
        return data, text

    def _json_upload(self, body: bytes) -> tuple[bytes, str | None]:
        """``{"image": "<base64>", "text": "..."}`` -> the image bytes and the text."""
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise self.metrics.error(400, f"bad_json: {exc}") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("image"), str):
            raise self.metrics.error(
                400, "bad_json: expected an object with the photo as base64 in key 'image'"
            )
        text = payload.get("text")
        if text is not None and not isinstance(text, str):
            raise self.metrics.error(400, "bad_json: 'text' must be a string")
        try:
            data = base64.b64decode(payload["image"], validate=True)
        except (binascii.Error, ValueError):
            raise self.metrics.error(400, "bad_base64: 'image' is not valid base64") from None
        return data, text

    @api.post(
        "/search",
        response_model=None,
        responses={200: {"model": SearchResponse}, **error_responses(400, 401, 413, 415, 429)},
        openapi_extra={"requestBody": SEARCH_REQUEST_BODY},
    )
    async def search(
        self,
        request: Request,
        k: int | None = Query(None, ge=1, le=100, description="products to return"),
        categories: str | None = Query(None, description="comma-separated category filter"),
        text: str | None = Query(
            None, description="words to refine the photo's results (hybrid query)"
        ),
    ) -> dict[str, Any]:
        """Find the catalogue products in a photo: multipart field ``image`` (and ``text``), the
        raw image as the body, or JSON ``{"image": base64, "text": ...}``. Words make it a hybrid
        query: they re-score the photo's products against the product titles."""
        started = time.perf_counter()
        self._watch()
        served = self.served  # one version for the whole request, even if a reload swaps it
        self._check_token(request, "/search")
        self._check_rate(request)
        k = k or self.args.top_k
        timings: dict[str, float] = {}
        mark = started
        data, body_text = await self._read_upload(request)
        text = (text if text is not None else body_text or "").strip() or None
        if text is not None and len(text) > self.args.max_text_chars:
            raise self.metrics.error(
                400, f"text_too_long: {len(text)} characters, at most {self.args.max_text_chars}"
            )
        if text is not None and not served.text:
            raise self.metrics.error(
                400, f"no_text_channel: index version {served.index_version} has no product "
                "titles embedded (reindex with index.text_channel: true), so text cannot be used",
            )  # fmt: skip
        timings["read"], mark = time.perf_counter() - mark, time.perf_counter()
        try:
            # Off the event loop: a large decode must not hold up /healthz or other requests.
            image = await asyncio.to_thread(
                decode_image, data, self.args.max_pixels, served.max_side
            )
        except ImageDecodeError as exc:
            status = _STATUS_OF_REASON.get(exc.reason, 400)
            raise self.metrics.error(status, f"{exc.reason}: {exc.detail}") from None
        timings["decode"], mark = time.perf_counter() - mark, time.perf_counter()
        pred = await self.embedder.remote(image, served.model_version)
        timings["embed"], mark = time.perf_counter() - mark, time.perf_counter()
        probs = np.asarray(pred["category_probs"], dtype=np.float32)
        names = served.model_categories
        vector = pred["embedding"]
        if self.pipeline.votes(names) and probs.size:
            # Category fusion: the nearest labelled images of every shard (catalogue images, or
            # the version's reference photos) vote first.
            vote_plan = self.pipeline.vote_plan(served.galleries)
            vote_hits = await self._search(served, vector, vote_plan)
            probs, _ = self.pipeline.categorise(probs, names, vote_hits)
            timings["vote"], mark = time.perf_counter() - mark, time.perf_counter()
        asked = [c for c in categories.split(",") if c] if categories else None
        plan = self.pipeline.plan(probs, names, k, asked, hybrid=text is not None)
        wanted = plan.categories
        hit_lists = await self._search(served, vector, plan)
        timings["search"], mark = time.perf_counter() - mark, time.perf_counter()
        if text is None:
            # Photo only: the same rank stage here (0.2 ms) saves a call to the re-ranker
            # (about 2 ms); the re-ranker holds the text model for hybrid queries.
            results = [asdict(p) for p in self.pipeline.rank(plan, hit_lists)]
        else:
            results = await self.reranker.rerank.remote(
                served.index_version, list(hit_lists), plan, text
            )
        timings["rerank"] = time.perf_counter() - mark
        timings["total"] = time.perf_counter() - started
        for stage, seconds in timings.items():
            self.metrics.seconds.labels(stage).observe(seconds)
        self.metrics.requests.labels("/search", "200").inc()
        top = int(np.argmax(probs)) if probs.size else None
        return {
            "index_version": served.index_version,
            "model_version": served.model_version,
            "took_ms": round(timings["total"] * 1000, 3),
            "timings_ms": {stage: round(v * 1000, 3) for stage, v in timings.items()},
            "category": (
                {"name": names[top], "probability": round(float(probs[top]), 4)}
                if top is not None
                else None
            ),
            "searched_categories": wanted,
            "routed_by": plan.routed_by,
            "text": text,
            "box": [round(float(v), 4) for v in np.asarray(pred["box"]).tolist()],
            "results": results,
        }

    async def _search(self, served: _Served, vector: Any, plan: QueryPlan) -> list[list[Hit]]:
        """The hit lists of the searchers holding ``plan``'s categories (all: every one) in
        ``plan``'s gallery."""
        wanted = plan.categories
        targets = [
            s
            for s, held in zip(self.searchers, served.searcher_categories, strict=True)
            if (cats := held.get(plan.gallery)) and (wanted is None or cats.intersection(wanted))
        ]
        shortlist = plan.shortlist_or(self.args.shortlist)
        answers = await asyncio.gather(
            *(s.search.remote(served.index_version, vector, plan.images, shortlist, wanted,
                              plan.gallery)
              for s in targets)
        )  # fmt: skip
        versions = {version for version, _ in answers}
        if versions - {served.index_version}:  # never expected: a searcher answered another
            raise self.metrics.error(500, f"mixed_versions: {sorted(versions)}")
        return [hits for _, hits in answers]

    @api.get(
        "/products/{product_id}",
        response_model=None,
        responses={200: {"model": Product}, **error_responses(404)},
    )
    async def product(self, product_id: str) -> dict[str, Any]:
        """A catalogue product: title, category and its images (``/images/{image_id}``)."""
        rows = self.catalogue.products.get(product_id)
        if rows is None:
            raise HTTPException(404, f"no product {product_id!r} in the catalogue")
        return rows

    @api.get(
        "/images/{image_id}",
        responses={200: {"content": {"image/*": {}}}, **error_responses(404)},
    )
    async def image(self, image_id: str) -> Response:
        """The bytes of a catalogue image (for result pages); only catalogue ids are served."""
        uri = self.catalogue.uri_of.get(image_id)
        if uri is None:
            raise HTTPException(404, f"no image {image_id!r} in the catalogue")
        try:
            data = await asyncio.to_thread(self.catalogue.storage.read_bytes, uri)
        except FileNotFoundError:
            raise HTTPException(404, f"image {image_id!r} is missing from storage") from None
        return Response(data, media_type=sniff_media_type(data),
                        headers={"Cache-Control": "public, max-age=3600"})  # fmt: skip
