"""Typed constructor arguments of the search graph's deployments (pydantic models, validated when
the app is built and again when each replica starts)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageArgs(_Args):
    """Where the index, the models and the dataset are: a storage root URL and its options."""

    root: str
    options: dict[str, Any] = Field(default_factory=dict)


class EmbedderArgs(_Args):
    """The query model deployment: the model version to load first and its batching."""

    storage: StorageArgs
    model_version: str
    max_batch_size: int = Field(8, ge=1, le=32)
    batch_wait_timeout_s: float = Field(0.005, ge=0)


class SearcherArgs(_Args):
    """A shard searcher: the index version to load first and the shards of it to hold."""

    storage: StorageArgs
    index_version: str
    shard_names: list[str]


class RerankerArgs(_Args):
    """The re-ranker's weights of the quality signals (0: similarity only)."""

    quality_weight: float = 0.0
    popularity_weight: float = 0.0


class IngressArgs(_Args):
    """The HTTP front: limits, routing, hot reload and auth (the token itself is read by the
    replica from ``auth_token_env`` or ``auth_token_file``, never passed here)."""

    storage: StorageArgs
    dataset_prefix: str
    index_version: str
    follow_published: bool = True
    reload_interval_s: float = Field(5.0, ge=0)
    reload_grace_s: float = Field(30.0, ge=0)
    shortlist: int | None = Field(None, ge=1)
    top_k: int = Field(10, ge=1, le=100)
    max_upload_bytes: int = Field(10_000_000, ge=1)
    max_pixels: int = Field(40_000_000, ge=1)
    route_mass: float = Field(0.9, ge=0, le=1)
    route_max: int = Field(3, ge=1)
    rate_limit_per_s: float = Field(50.0, ge=0)
    rate_limit_burst: int = Field(100, ge=1)
    require_auth: bool = False
    auth_token_env: str = "VSEARCH_API_TOKEN"
    auth_token_file: str | None = None
