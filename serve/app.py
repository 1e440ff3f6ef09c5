"""App builder: a typed argument in, the bound search graph out.

Named by ``import_path: serve.app:build_app`` in ``serve/config.yaml``; the demo and ``vsearch serve``
call it directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve import Application

from serve.deployments import QueryEmbedder, ResultReranker, SearchIngress, ShardSearcher
from serve.settings import EmbedderArgs, IngressArgs, RerankerArgs, SearcherArgs, StorageArgs
from vsearch.config import Config, load_config
from vsearch.guards import is_loopback, load_token
from vsearch.index.searcher import assign_shards
from vsearch.rank.pipeline import QueryPolicy
from vsearch.runtime.cluster import cluster_gpus, free_port
from vsearch.storage import IndexStore, ModelStore, Storage
from vsearch.storage.datasets import dataset_prefix


class AppArgs(BaseModel):
    """How to find the config: a YAML path with overrides, or an inline config tree."""

    model_config = ConfigDict(extra="forbid")

    config_path: str | None = None
    overrides: list[str] = []
    config: dict[str, Any] | None = None
    #: Index version to serve; the published ``CURRENT`` one when None.
    index_version: str | None = None


def auth_settings(cfg: Config) -> dict[str, Any]:
    """Whether the service requires a token, and where the token comes from; ``ValueError`` (or
    ``FileNotFoundError``) with what to do when it is required and cannot be read. Called
    before Ray starts by ``vsearch serve`` and again by :func:`build_app`."""
    required = (
        not is_loopback(cfg.serve.host)
        if cfg.serve.require_auth == "auto"
        else bool(cfg.serve.require_auth)
    )
    if required and load_token(cfg.serve.auth_token_env, cfg.serve.auth_token_file) is None:
        raise ValueError(
            f"serving on {cfg.serve.host} needs an API token: set ${cfg.serve.auth_token_env} "
            "or serve.auth_token_file (or serve.require_auth=false on a trusted network)"
        )
    return {
        "require_auth": required,
        "auth_token_env": cfg.serve.auth_token_env,
        "auth_token_file": cfg.serve.auth_token_file,
    }


def _config_file(path: str | None) -> str | None:
    """A relative config path as given when it exists from here, else from the project folder
    (a Serve replica's working directory is not the project's)."""
    if path is None or Path(path).is_absolute() or Path(path).exists():
        return path
    return str(Path(__file__).resolve().parents[1] / path)


def build_app(args: AppArgs | dict[str, Any]) -> Application:
    """Bind the search graph for the index version in ``args`` (default: the published one,
    followed as it changes: the ingress reloads a newly published version without a restart)."""
    args = AppArgs.model_validate(args) if isinstance(args, dict) else args
    cfg = (
        Config.model_validate(args.config)
        if args.config is not None
        else load_config(_config_file(args.config_path), args.overrides)
    )
    storage = Storage(cfg.storage, cfg.storage_options)
    manifest = IndexStore(storage).manifest(args.index_version)
    ModelStore(storage).load(manifest.model_version)  # a missing or damaged model fails here
    scale = _scaling(cfg)
    groups = assign_shards(manifest.shards, cfg.serve.searchers)
    where = StorageArgs(root=cfg.storage, options=cfg.storage_options)
    gpus = _searcher_gpus(cfg)
    on_gpu = {"ray_actor_options": {"num_cpus": 0.25, "num_gpus": gpus}} if gpus else {}
    ongoing = cfg.serve.stage_max_ongoing_requests
    searchers = [
        ShardSearcher.options(
            name=f"ShardSearcher{i}", max_ongoing_requests=ongoing, **on_gpu, **scale(4)
        ).bind(
            SearcherArgs(
                storage=where, index_version=manifest.version, shard_names=[e.name for e in g]
            )
        )
        for i, g in enumerate(groups)
    ]
    embedder = QueryEmbedder.options(**scale(8)).bind(
        EmbedderArgs(
            storage=where,
            model_version=manifest.model_version,
            max_batch_size=cfg.serve.max_batch_size,
            batch_wait_timeout_s=cfg.serve.batch_wait_timeout_s,
        )
    )
    settings = IngressArgs(
        storage=where,
        dataset_prefix=dataset_prefix(cfg),
        index_version=manifest.version,
        # Follow indexes/CURRENT (hot reload) unless a fixed version was asked for.
        follow_published=args.index_version is None,
        reload_interval_s=cfg.serve.reload_interval_s,
        reload_grace_s=cfg.serve.reload_grace_s,
        shortlist=cfg.index.shortlist,
        top_k=cfg.serve.top_k,
        max_upload_bytes=cfg.serve.max_upload_bytes,
        max_text_chars=cfg.serve.max_text_chars,
        max_pixels=cfg.index.max_pixels,
        policy=QueryPolicy.of(cfg),
        rate_limit_per_s=cfg.serve.rate_limit_per_s,
        rate_limit_burst=cfg.serve.rate_limit_burst,
        grpc_calls=cfg.serve.throughput_optimized,
        **auth_settings(cfg),
    )
    ingress = SearchIngress.options(
        max_ongoing_requests=cfg.serve.ingress_max_ongoing_requests, **scale(32)
    )
    reranker = ResultReranker.options(max_ongoing_requests=ongoing, **scale(16)).bind(
        RerankerArgs(
            storage=where,
            index_version=manifest.version,
            policy=QueryPolicy.of(cfg),
            text_model_path=cfg.index.text_model_path,
        )
    )
    return ingress.bind(embedder, searchers, reranker, settings)


def _searcher_gpus(cfg: Config) -> float:
    """GPUs each shard searcher replica asks for (``serve.searcher_gpus``), from the GPUs of
    the cluster the app is built on; 0 outside Ray or with ``ray.use_gpus`` off."""
    if not ray.is_initialized():
        return 0.0
    return cluster_gpus(cfg.serve.searcher_gpus, cfg.serve.searchers, cfg.ray.use_gpus)


def _scaling(cfg: Config) -> Callable[[float], dict[str, Any]]:
    """Deployment options: the health checks, and for ``serve.max_replicas`` > 1 an
    ``autoscaling_config`` aiming at ``target`` requests in flight per replica."""

    health = {
        "health_check_period_s": cfg.serve.health_check_period_s,
        "health_check_timeout_s": cfg.serve.health_check_timeout_s,
    }

    def options(target: float) -> dict[str, Any]:
        if cfg.serve.max_replicas <= 1:
            return dict(health)
        return {
            **health,
            "autoscaling_config": {
                "min_replicas": min(cfg.serve.min_replicas, cfg.serve.max_replicas),
                "max_replicas": cfg.serve.max_replicas,
                "target_ongoing_requests": target,
                "upscale_delay_s": cfg.serve.upscale_delay_s,
                "downscale_delay_s": cfg.serve.downscale_delay_s,
            },
        }

    return options


@contextmanager
def running_service(cfg: Config, quiet: bool = False) -> Iterator[str]:
    """Start Serve on ``cfg.serve.host`` (port ``cfg.serve.port``, or a free one), run the search
    app for the published index, yield its base URL, and shut Serve down afterwards.

    Needs a Ray session. ``quiet`` turns off per-request access logs (for reports on stdout).
    """
    port = cfg.serve.port or free_port(cfg.serve.host)
    # Serve's own controller and proxy: warnings only (their INFO lines need no action). The
    # app's replicas log requests too unless ``quiet``.
    warnings_only = {"log_level": "WARNING", "enable_access_log": False}
    logging_config = warnings_only if quiet else None
    if quiet:  # Serve's own start-up lines in this process ("Started Serve ...", "... ready")
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(http_options={"host": cfg.serve.host, "port": port}, logging_config=warnings_only)
    try:
        serve.run(
            build_app(AppArgs(config=cfg.model_dump())),
            name="vsearch",
            route_prefix="/",
            logging_config=logging_config,
        )
        yield f"http://{cfg.serve.host}:{port}"
    finally:
        serve.shutdown()
