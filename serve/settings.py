"""Typed constructor arguments of the search graph's deployments (pydantic models, validated when
the app is built and again when each replica starts)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from vsearch.rank.pipeline import QueryPolicy


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageArgs(_Args):
    """Where the index, the models and the dataset are: a storage root URL and its options."""

    root: str
    options: dict[str, Any] = Field(default_factory=dict)


class EmbedderArgs(_Args):
    """The query model deployment: the model version to load first and its batching (values
    from ``vsearch.config.ServeConfig``, which holds their defaults and bounds)."""

    storage: StorageArgs
    model_version: str
    max_batch_size: int
    batch_wait_timeout_s: float


class SearcherArgs(_Args):
    """A shard searcher: the index version to load first and the shards of it to hold."""

    storage: StorageArgs
    index_version: str
    shard_names: list[str]


class RerankerArgs(_Args):
    """The re-ranker: the index version whose text channel to load first, the query policy
    (its ranking weights: quality, popularity, a hybrid query's text) and the text model folder
    (None: the packaged MiniLM)."""

    storage: StorageArgs
    index_version: str
    policy: QueryPolicy
    text_model_path: str | None = None


class IngressArgs(_Args):
    """The HTTP front: limits, routing, hot reload and auth (the token itself is read by the
    replica from ``auth_token_env`` or ``auth_token_file``, never passed here). Every value
    comes from the config (``serve.*``, ``index.*``, ``category.*``), which holds the defaults
    and bounds; ``serve.app.build_app`` fills them."""

    storage: StorageArgs
    dataset_prefix: str
    index_version: str
    follow_published: bool
    reload_interval_s: float
    reload_grace_s: float
    shortlist: int | None
    top_k: int
    max_upload_bytes: int
    max_text_chars: int
    max_pixels: int
    #: Routing and over-fetch (the same policy the re-ranker and offline evaluation use).
    policy: QueryPolicy
    rate_limit_per_s: float
    rate_limit_burst: int
    require_auth: bool
    auth_token_env: str
    auth_token_file: str | None
    #: Call the other deployments over Serve's gRPC channel (``serve.throughput_optimized``)
    #: rather than as Ray actor calls.
    grpc_calls: bool = False
