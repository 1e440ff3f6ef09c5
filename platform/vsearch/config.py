"""The configuration tree: one root ``Config`` of pydantic models, loaded from YAML.

Every model forbids unknown keys so a typo in a YAML file is an error, not a silent default.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class SyntheticConfig(_Strict):
    """Size and seed of the procedurally drawn catalogue (the embedded default dataset)."""

    seed: int = 0
    categories: int = Field(6, ge=1, le=64)
    products_per_category: int = Field(10, ge=2)
    #: Real-shot views drawn per product; the last ``test_views_per_product`` are held out.
    views_per_product: int = Field(6, ge=2)
    test_views_per_product: int = Field(2, ge=1)
    #: Side of the square catalogue and view images, in pixels.
    image_size: int = Field(128, ge=32, le=1024)
    #: Products shown per simulated search session in the click log.
    shown_per_click: int = Field(8, ge=2)
    #: Probability that the simulated shopper clicks the true product (else a similar one).
    click_accuracy: float = Field(0.9, ge=0.0, le=1.0)
    #: Re-uploaded duplicate listings added to the catalogue, with ground truth.
    duplicates: int = Field(6, ge=0)

    @model_validator(mode="after")
    def _views_split(self) -> SyntheticConfig:
        if self.test_views_per_product >= self.views_per_product:
            raise ValueError("test_views_per_product must be smaller than views_per_product")
        return self


class MatchingTableConfig(_Strict):
    """One listing CSV of a two-table matching benchmark (Leipzig layout)."""

    #: File name under ``data.matching_root``.
    file: str
    #: Name of the shop / table; prefixes its ids ("abt:552") and fills the listing's ``source``.
    source: str
    id_column: str = "id"
    #: The first of these columns present is the title ("name" in Abt-Buy, "title" in others).
    title_columns: list[str] = Field(default_factory=lambda: ["name", "title"], min_length=1)
    #: Columns kept as attributes when present (others are ignored).
    attribute_columns: list[str] = Field(
        default_factory=lambda: ["description", "manufacturer", "brand", "price"]
    )
    #: "auto" tries utf-8, then cp1252, then latin-1 on the whole file; a named codec decodes
    #: strictly and rows with undecodable bytes are counted and skipped.
    encoding: str = "auto"


class MatchingConfig(_Strict):
    """File names of a two-table matching benchmark: two listing CSVs and the true-match CSV."""

    tables: list[MatchingTableConfig] = Field(min_length=2, max_length=2)
    #: The perfect-mapping CSV; its two columns hold ids of ``tables[0]`` and ``tables[1]``.
    mapping: str
    #: The mapping's id columns, in table order (None: its first two header names).
    mapping_columns: list[str] | None = Field(None, min_length=2, max_length=2)
    mapping_encoding: str = "auto"


class DataConfig(_Strict):
    """Where the catalogue comes from."""

    #: "matching" (a two-table benchmark of listings with true matches) is read by the dedup job only.
    source: Literal["synthetic", "grocery", "matching"] = "synthetic"
    synthetic: SyntheticConfig = SyntheticConfig()
    #: Root of a GroceryStoreDataset-layout folder (used when ``source == "grocery"``).
    grocery_root: str | None = None
    #: Root of a two-table matching benchmark and its file layout (``source == "matching"``).
    matching_root: str | None = None
    matching: MatchingConfig | None = None

    @field_validator("grocery_root", "matching_root")
    @classmethod
    def _absolute_root(cls, value: str | None) -> str | None:
        # Relative to where the config was loaded, like ``storage``: Ray workers run elsewhere.
        return os.path.abspath(os.path.expanduser(value)) if value else value

    @model_validator(mode="after")
    def _matching_layout(self) -> DataConfig:
        if self.source == "matching" and (self.matching_root is None or self.matching is None):
            raise ValueError("data.source=matching needs data.matching_root and data.matching")
        return self

    #: Split of the real-shot photos used as held-out queries ("test" for synthetic, "val" for grocery).
    eval_split: str = "test"


class ModelConfig(_Strict):
    """The search network: a backbone (by name) and the heads on its feature map."""

    #: Backbone name (``vsearch.models.registry``): "cnn_tiny" / "cnn_small" (plain torch, trained
    #: end to end) or "xception_onnx" (frozen ImageNet backbone; only the heads train).
    arch: str = "cnn_small"
    #: Where an ONNX backbone's file is: a path or any storage URL. Unused for torch backbones.
    backbone_url: str | None = None

    @field_validator("views")
    @classmethod
    def _views_in_range(cls, value: list[float]) -> list[float]:
        if any(not 0.1 <= v <= 1.0 for v in value):
            raise ValueError(f"views are crop fractions in [0.1, 1.0], got {value}")
        if len(set(value)) != len(value):
            raise ValueError(f"views must differ, got {value}")
        return value

    @field_validator("backbone_url")
    @classmethod
    def _absolute_backbone(cls, value: str | None) -> str | None:
        # Like ``storage``: a relative path is relative to where the config was loaded.
        if value is None or "://" in value:
            return value
        return "file://" + os.path.abspath(value)

    #: What to do when an ONNX backbone's file is missing: "error", or "fallback" to
    #: ``fallback_arch`` (trained from scratch) with a printed notice.
    if_backbone_missing: Literal["error", "fallback"] = "error"
    fallback_arch: str = "cnn_small"
    #: ONNX backbones only: the name of a graph tensor (a ``(batch, C, g, g)`` map) after which the
    #: backbone trains with the heads. The graph up to it stays frozen and runs once per image
    #: into the feature cache; the rest is executed by torch (``vsearch.models.onnx_torch``),
    #: starting from the pretrained weights. For the Xception export, "permute_223" leaves its
    #: last two separable convolutions trainable. None: the whole backbone is frozen.
    backbone_cut: str | None = None
    embed_dim: int = Field(128, ge=8)
    #: Side of the square network input, in pixels (ONNX backbones fix their own).
    input_size: int = Field(64, ge=16)
    #: Views of each image the backbone sees: centre crops keeping this fraction of each side
    #: (1.0: the whole image). The embedding is the normalised mean over views and the category
    #: probabilities their mean; each view costs one backbone pass. The first view is the primary
    #: one (its box is returned; click triplets and boxes train on it).
    views: list[float] = Field(default_factory=lambda: [1.0], min_length=1, max_length=8)
    #: Localisation branch: predicted box -> soft sigmoid mask -> masked pooling.
    localise: bool = True
    #: How the box is predicted: "spatial" (an attention map over the cells, its expected
    #: position the centre), "cells" (every cell predicts its distances to the four edges, the
    #: attention map weighs the cells' boxes: edges between cell centres) or "pooled" (from
    #: globally pooled features, as in model versions before "spatial"; it cannot tell where
    #: things are, and boxes came out worse).
    localiser: Literal["spatial", "pooled", "cells"] = "spatial"
    #: Detect, then embed (Alibaba): one more backbone pass on the square around the predicted
    #: box (``box_margin`` of its side added on each side), seen as one more view. Needs a frozen
    #: ONNX backbone: training predicts the training images' boxes with a first model, caches the
    #: maps of those crops and trains the final model on every view plus the box view.
    box_view: bool = False
    box_margin: float = Field(0.05, ge=0, le=1)
    #: With ``box_view``: look twice. The localiser also learns where the subject lies inside
    #: the box view (training supervises the box-view rows with the true box mapped into the
    #: crop), and the box reported is the one found in the box view, mapped back to the image.
    refine_box: bool = False
    #: Steepness of the soft box mask's sigmoids, per unit of image side.
    mask_steepness: float = Field(20.0, gt=0)
    #: Hidden width of the projection MLP (0: a linear projection).
    head_hidden: int = Field(0, ge=0)
    #: Dropout in the projection (training only).
    dropout: float = Field(0.0, ge=0, lt=1)
    seed: int = 0


class TrainConfig(_Strict):
    """Triplet training on Ray Train."""

    num_workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(0.5, gt=0)
    epochs: int = Field(12, ge=1)
    #: With ``model.box_view``: epochs of the first model, which only predicts the training
    #: images' boxes (None: ``epochs``).
    box_stage_epochs: int | None = Field(None, ge=1)
    #: Products per batch (P) and images per product (K) for batch-hard mining.
    products_per_batch: int = Field(16, ge=2)
    images_per_product: int = Field(4, ge=2)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    margin: float = Field(0.2, gt=0)
    #: Weight of the click-log triplet loss beside the label (batch-hard) loss; 0 disables it.
    click_weight: float = Field(0.5, ge=0)
    #: Epochs between checkpoints (the last epoch is always saved); a restarted or resumed run
    #: goes back to the last one. (On the demo, saving every 10 epochs instead of every one
    #: changed nothing measurable: about 2 s an epoch either way.)
    checkpoint_every: int = Field(1, ge=1)
    #: Stop after this many seconds of training even if epochs remain (0: no limit).
    time_budget_s: float = Field(0, ge=0)
    seed: int = 0
    #: Augmentation (``vsearch.imaging.RandomAugment``): "basic" crops, flips and jitters;
    #: "composite" also pastes white-background catalogue images onto random cluttered scenes
    #: (measured worse on the synthetic demo at equal images: benchmarks/results/train_quality.md).
    augment: Literal["basic", "composite"] = "basic"
    #: Share of white-background images pasted onto a scene per step ("composite" only).
    paste_prob: float = Field(0.6, ge=0, le=1)
    #: Label loss over each P x K batch: triplets (``margin``) mined "batch_hard", "semi_hard" or
    #: "distance_weighted", or "supcon", the supervised contrastive loss (every same-product pair
    #: a positive, at ``temperature``).
    label_loss: Literal["batch_hard", "semi_hard", "distance_weighted", "supcon"] = "supcon"
    temperature: float = Field(0.1, gt=0, le=1)
    #: Learning-rate schedule over ``epochs``: linear warm-up, then constant or cosine decay.
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    warmup_epochs: int = Field(2, ge=0)
    #: Final learning rate of the cosine schedule, as a fraction of ``lr``.
    min_lr_ratio: float = Field(0.02, ge=0, le=1)
    #: Weights of the other losses: category cross-entropy, normalised-softmax over one proxy
    #: per product (0: no proxies), and box regression where the data has subject boxes.
    category_weight: float = Field(0.5, ge=0)
    proxy_weight: float = Field(0.0, ge=0)
    box_weight: float = Field(1.0, ge=0)
    #: In each P x K batch, this many of a product's K items are its catalogue image (when it has
    #: one): bridges the shopper-photo -> catalogue gap when photos outnumber catalogue images.
    catalog_per_product: int = Field(0, ge=0)
    #: Times Ray Train restarts the workers after one fails (a crashed process, a lost node), each
    #: restart resuming from the run's last checkpoint; 0 fails the run at the first error, -1
    #: retries forever. An exception in the training code is retried too (it then fails 1 + n times).
    max_failures: int = Field(2, ge=-1)
    #: Test hook, off (None) by default: the last worker rank exits its process after training this
    #: epoch (0-based), once per run (a marker file under ``checkpoints/<run>/``), so tests can
    #: check that ``max_failures`` resumes from the last checkpoint.
    fail_at_epoch: int | None = Field(None, ge=0)
    #: GPUs: "auto" gives each worker one GPU (and nccl) when the cluster has a GPU per worker,
    #: else trains on CPU (gloo); true requires them, false never asks.
    use_gpu: Literal["auto"] | bool = "auto"
    #: Learning rate of a trainable backbone tail (``model.backbone_cut``) as a fraction of
    #: ``lr``: pretrained weights move slower than new heads.
    backbone_lr_scale: float = Field(0.1, ge=0)
    #: Ray Data read tasks that attach inputs to the streamed training rows: rows per task, CPUs
    #: per task, and tasks at a time per dataset (the photos, and the catalogue of each worker).
    read_batch_size: int = Field(64, ge=1)
    read_cpus: float = Field(0.25, gt=0)
    read_tasks: int = Field(2, ge=1)


class MiningConfig(_Strict):
    """Click-log triplet mining (the mine job): how noisy sessions are treated, how many negatives.

    A session (one ``query_id``) with several distinct clicked products is ambiguous: the shopper
    may have compared, or mis-clicked. "drop" leaves out sessions with more than ``max_clicks``
    clicks, "downweight" keeps them with every triplet weighted ``1 / clicks``, "keep" keeps them
    at weight 1.
    """

    multi_click: Literal["drop", "downweight", "keep"] = "drop"
    max_clicks: int = Field(1, ge=1)
    #: Random products of other categories added per click as "easy" negatives.
    easy_negatives: int = Field(2, ge=0)
    seed: int = 0
    #: How Ray Data groups the log by session: "sort" (pull-based sort shuffle: plain tasks, the
    #: cheaper start-up) or "hash" (an aggregator actor pool), into ``partitions`` partitions
    #: (None: Ray Data's default).
    shuffle: Literal["sort", "hash"] = "sort"
    partitions: int | None = Field(None, ge=1)
    #: Ray Data actors mining session groups (each holds the product -> category map).
    actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(0.5, gt=0)


class RankConfig(_Strict):
    """Re-ranking of a query's hits into products (``vsearch.rank.pipeline``): a product's score
    is its best image's similarity plus these weights times the image's quality and popularity
    (sales) signals, both in [0, 1] in the catalogue. 0 ranks by similarity alone."""

    quality_weight: float = Field(0.0, ge=-1, le=1)
    popularity_weight: float = Field(0.0, ge=-1, le=1)


class CategoryConfig(_Strict):
    """Category prediction: the category head's softmax fused with a kNN vote of search hits."""

    #: Weight of the model in the fusion (1: model only, 0: vote only); tune it on a split you
    #: do not report (``vsearch evaluate`` prints the accuracy of every weight).
    fusion_weight: float = Field(0.5, ge=0, le=1)
    #: Temperature of the head's probabilities before the fusion (``softmax(log(p) / T)``):
    #: T > 1 softens a head surer than it is right (the vote then decides more often), T < 1
    #: sharpens a less sure one, 1 leaves it. ``vsearch evaluate`` reports the temperature of
    #: least log-loss on its split: set it from a split you do not report.
    model_temperature: float = Field(1.0, gt=0)
    #: Nearest labelled images that vote (searched over every shard before the routed
    #: search; 0: no vote, the head alone), and the softmax temperature of their similarities.
    vote_neighbours: int = Field(10, ge=0)
    #: Which images vote: ``catalog`` (the catalogue's own images), or ``reference``: the
    #: labelled photos of the dataset's ``reference_split``, which the reindex job embeds into
    #: reference shards that only the vote searches (Alibaba's labelled reference set; shopper
    #: photos vote for shopper photos better than studio shots do). An index built without
    #: them votes with the catalogue.
    vote_gallery: Literal["catalog", "reference"] = "catalog"
    reference_split: str = Field("train", min_length=1)
    vote_temperature: float = Field(0.05, gt=0)
    #: Candidates each shard rescores for the vote's search (every shard is searched, so it
    #: does not take the shards' tuned shortlists, which aim at recall@10 >= 0.95).
    vote_shortlist: int = Field(64, ge=1)
    #: Routing (service and evaluation alike): a query is searched in the shards of its most
    #: probable categories (the fused prediction) until their probability reaches
    #: ``route_mass``, at most ``route_max`` of them; 0 searches every shard. A request's
    #: category filter wins.
    route_mass: float = Field(0.9, ge=0, le=1)
    route_max: int = Field(3, ge=1)


class IndexConfig(_Strict):
    """Binary sharded index built by the reindex job."""

    #: Hash buckets per category; each (category, bucket) pair is one shard.
    buckets_per_category: int = Field(1, ge=1)
    #: Candidates kept from the Hamming shortlist per shard before float rescoring. None: each
    #: shard's own, tuned at build time to reach ``recall_target`` (recorded in the manifest);
    #: a number overrides every shard's.
    shortlist: int | None = Field(None, ge=1)
    #: Recall@``recall_k`` against exact search that each shard's tuned shortlist reaches on
    #: ``probe_queries`` held-out probes: its own vectors searched against the other rows, each
    #: moved in a random direction by ``probe_noise`` times its nearest-neighbour distance.
    recall_target: float = Field(0.95, gt=0, le=1)
    recall_k: int = Field(10, ge=1)
    probe_queries: int = Field(200, ge=1)
    probe_noise: float = Field(0.0, ge=0)
    #: Shards of more rows than this get an inverted-file engine (lists probed tuned with the
    #: shortlist) instead of an exhaustive Hamming scan of sign codes ("BFlat").
    ivf_above: int | None = Field(50_000, ge=1)
    #: That engine: "pq" (4-bit product-quantiser codes of the vectors, "IVF<nlist>,PQ<d/2>x4fs",
    #: scanned with SIMD lookup tables), "rabitq" (RaBitQ codes, "IVF<nlist>,RaBitQfs": a random
    #: rotation and a distance estimator that tracks cosine) or "bivf" (sign codes, "BIVF<nlist>").
    large_engine: Literal["pq", "rabitq", "bivf"] = "pq"
    #: Rescoring vectors on disk (memory-mapped by searchers): float16 (2 d bytes) keeps scores
    #: within 5e-4 of float32 and, like float32, is rescored by FAISS in the engine's own call.
    #: int8 with a scale per row (d + 4 bytes) takes less disk but is rescored by numpy and only
    #: within about 3e-3 at 128 d, which reorders near-ties (recall@10 and QPS of both in
    #: benchmarks/results/bench_index.md and bench_index_int8.md).
    rescore_dtype: Literal["float16", "float32", "int8"] = "float16"
    #: Ray Data actors embedding the catalogue, and the CPUs each asks for (on a 2-core machine
    #: keep this <= 0.5, as the demo config does, or Ray Data can wait forever for CPUs).
    embed_actors: int = Field(2, ge=1)
    cpus_per_actor: float = Field(0.5, gt=0)
    #: GPUs each embedding actor asks Ray for (reindex, feature cache); 0: CPU only; "auto":
    #: the cluster's GPUs shared by the actors (at most one each) when it has any at the job's
    #: start, else 0. An actor given a GPU runs the model there (CUDA; ONNX backbones through
    #: onnxruntime-gpu's CUDA provider when installed), with ``batch_size`` images a call.
    gpus_per_actor: Literal["auto"] | float = "auto"
    #: CPUs each shard-build task of the reindex asks for (every shard is built in its own task
    #: from its own staged rows).
    build_cpus: float = Field(1.0, gt=0)
    #: Memory Ray reserves for each embedding actor (feature cache, reindex): a process running
    #: the ONNX Xception peaks at about 0.6 GiB (one image a call; 0.9 GiB in calls of 8), a
    #: reindex actor whose model trains the backbone's last blocks at up to 1.4 GiB.
    backbone_actor_memory_mb: int = Field(1536, ge=0)
    batch_size: int = Field(64, ge=1)
    #: Largest decoded image accepted, in pixels (decompression-bomb guard).
    max_pixels: int = Field(40_000_000, ge=1)
    #: Embed every product's title at reindex (all-MiniLM-L6-v2) for hybrid photo + text queries;
    #: ``text_model_path``: a sentence-transformers folder instead of the packaged model.
    text_channel: bool = True
    text_model_path: str | None = None


class ServeConfig(_Strict):
    """The online search service."""

    host: str = "127.0.0.1"
    #: HTTP port; 0 picks a free one.
    port: int = Field(0, ge=0, le=65535)
    #: Shard searcher deployments; shards are spread over them.
    searchers: int = Field(2, ge=1)
    #: Products returned when a request gives no ``k``.
    top_k: int = Field(10, ge=1, le=100)
    #: Largest upload accepted; enforced while the body streams (chunked uploads too).
    max_upload_bytes: int = Field(10_000_000, ge=1)
    #: Bearer-token auth on /search and /metrics: "auto" turns it on whenever ``host`` is not a
    #: loopback address. The token comes from the environment variable ``auth_token_env``, else
    #: the first line of ``auth_token_file``; never from this file.
    require_auth: Literal["auto"] | bool = "auto"
    auth_token_env: str = "VSEARCH_API_TOKEN"
    auth_token_file: str | None = None
    #: Per-client limit on /search: ``rate_limit_per_s`` requests a second on average, bursts of
    #: ``rate_limit_burst`` (429 with Retry-After past it; per ingress replica); 0: no limit.
    rate_limit_per_s: float = Field(50.0, ge=0)
    rate_limit_burst: int = Field(100, ge=1)
    #: Requests one ingress replica holds at once (uploads being read, decodes, searches);
    #: Serve's default of 5 let a few slow uploads stall /healthz.
    ingress_max_ongoing_requests: int = Field(64, ge=1)
    #: Replica autoscaling of every deployment of the graph: 1 keeps one replica each; N > 1
    #: lets Serve run ``min_replicas``..N replicas of each, following the requests in flight,
    #: adding them after ``upscale_delay_s`` of load and removing them after
    #: ``downscale_delay_s`` idle.
    max_replicas: int = Field(1, ge=1)
    min_replicas: int = Field(1, ge=1)
    upscale_delay_s: float = Field(5.0, ge=0)
    downscale_delay_s: float = Field(30.0, ge=0)
    #: How often Serve checks that each replica is alive, and how long a check may take: a
    #: replica that died is replaced (and no longer sent requests) after about one period.
    health_check_period_s: float = Field(10.0, gt=0)
    health_check_timeout_s: float = Field(30.0, gt=0)
    #: GPUs each shard searcher replica asks for; "auto": the cluster's GPUs shared by the
    #: searchers (at most one each) when it has any when the app is built, else 0. A searcher
    #: given a GPU searches its exhaustive sign-code shards there (FAISS's GpuIndexBinaryFlat,
    #: faiss-gpu through the `gpu` extra); inverted-file and RaBitQ shards stay on the CPU.
    searcher_gpus: Literal["auto"] | float = "auto"
    #: Hot reload: how often the ingress checks ``indexes/CURRENT`` (0: never) and how long an
    #: old version stays loaded after the switch, for requests still running on it.
    reload_interval_s: float = Field(5.0, ge=0)
    reload_grace_s: float = Field(30.0, ge=0)
    #: Hybrid queries: weight of the text's similarity to a product's title against the photo's
    #: score (``(1 - w) * photo + w * text``), and the longest text accepted.
    text_weight: float = Field(0.4, ge=0, le=1)
    max_text_chars: int = Field(300, ge=1)
    #: Requests the embedder batches together (``serve.batch``) and how long it waits to fill one.
    #: 0 takes what is queued when the model is free: a lone request is not held back, and under
    #: load requests queue during a forward pass, so batches still fill.
    max_batch_size: int = Field(8, ge=1, le=32)
    batch_wait_timeout_s: float = Field(0.0, ge=0)
    #: Requests a shard searcher or re-ranker replica takes at once. Above what Serve's router
    #: keeps in flight, requests wait in the replica's own queue in arrival order; Serve's
    #: default of 5 made the callers back off and retry instead, and throughput fell with more
    #: clients (32 clients: 25 req/s against 53 at 8).
    stage_max_ongoing_requests: int = Field(32, ge=1)
    #: The settings of Ray Serve's throughput-optimised mode (Ray >= 2.56): gRPC between the
    #: deployments instead of Ray actor calls, each replica's code and router on its main event
    #: loop. They are environment variables of the Ray processes
    #: (``vsearch.runtime.cluster.serve_env``), so they apply where vsearch starts Ray itself; a
    #: cluster started with ``ray start`` takes them from the nodes' environment (cluster.yaml
    #: sets them). The ingress asks for gRPC calls whatever the cluster's settings. HTTP still
    #: enters through the proxy on ``host``:``port`` only.
    throughput_optimized: bool = True


class NightlyConfig(_Strict):
    """``vsearch nightly``: reindex with the latest model, evaluate, publish behind a quality gate."""

    #: Report key compared between the new and the published version (dots walk the report).
    metric: str = "photo_to_catalog.recall_at_10"
    #: The new version is published unless its metric is below the published one's by more.
    tolerance: float = Field(0.01, ge=0)


class DemoConfig(_Strict):
    """What ``vsearch demo`` adds for its report."""

    #: With a pretrained backbone, also train ``model.fallback_arch`` from scratch for this many
    #: epochs (at ``scratch_lr``) and report it beside the pretrained one; 0 skips it.
    scratch_epochs: int = Field(0, ge=0)
    scratch_lr: float = Field(2e-3, gt=0)


class DedupConfig(_Strict):
    """The dedup job (Coupang): image, text and BM25 channels, candidate union, combiner, clusters."""

    #: Channels to run; "image" needs listing images, "text" the packaged MiniLM model.
    channels: list[Literal["image", "text", "lexical"]] = Field(
        default_factory=lambda: ["image", "text", "lexical"], min_length=1
    )
    #: What the listings are. "catalog": one per product (its first image, title, attributes),
    #: with the dataset's recorded re-uploads as the truth. "photos": photos of the
    #: ``data.eval_split`` split stand in for re-uploaded listings, up to ``photos_per_product``
    #: of each product, all of one product being duplicates (GroceryStore; image channel only,
    #: since photos have no titles).
    listings: Literal["catalog", "photos"] = "catalog"
    photos_per_product: int = Field(3, ge=2)
    #: Candidates each channel proposes per listing; also the k of the candidate recall@k.
    k: int = Field(10, ge=1, le=1000)
    #: Attribute keys appended to the title for the text and lexical channels (title only: []).
    text_attributes: list[str] = []
    #: Folder of a sentence-transformers model (None: the packaged all-MiniLM-L6-v2).
    text_model_path: str | None = None
    #: Compare only listings of different sources (two-shop benchmarks); else all pairs.
    cross_source_only: bool = False
    #: Search only within a listing's category shard (the catalogue's category path).
    within_category: bool = True
    #: Shards up to this many vectors are searched exactly (FAISS flat); larger ones by IVF.
    exact_below: int = Field(50_000, ge=1)
    #: Inverted lists probed per query in IVF shards.
    nprobe: int = Field(32, ge=1)
    #: "learned": logistic regression over every channel's evidence; "any": a pair is a duplicate
    #: when any channel's score passes its own fitted threshold.
    combiner: Literal["learned", "any"] = "learned"
    #: Decision thresholds reach this precision on labelled pairs (None: best F1 instead).
    target_precision: float | None = Field(None, gt=0, le=1)
    #: With labelled pairs, thresholds are cross-fitted over this many folds of the true clusters,
    #: so no pair is decided by a model fitted on it (10: each model sees 90% of the labels; 2
    #: measured F1 0.865 against 0.886 on Abt-Buy, its thresholds fitted on half the pairs).
    folds: int = Field(10, ge=2)
    #: A fitted combiner (JSON written by an earlier run) for catalogues without labels.
    combiner_url: str | None = None
    #: Largest cluster; a bigger connected component is split by dropping its weakest edges.
    max_cluster_size: int = Field(20, ge=2)
    #: Ray Data actors embedding listings (text or image), their CPUs and batch.
    actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(0.5, gt=0)
    batch_size: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _photos_have_no_titles(self) -> DedupConfig:
        if self.listings == "photos" and set(self.channels) != {"image"}:
            raise ValueError(
                "photo listings (dedup.listings: photos) have images but no titles; "
                "set dedup.channels to [image]"
            )
        return self


class RayConfig(_Strict):
    """How the driver joins Ray. ``address="local"`` starts a private local cluster."""

    address: str = "local"
    num_cpus: int = Field(2, ge=1)
    object_store_memory: int | None = None
    #: Keep the session folder (Ray's logs, under /tmp/ray) of a private local cluster after a
    #: job that succeeded; a failed job's is always kept.
    keep_session_logs: bool = False
    #: The one switch for GPUs: true lets every stage take the cluster's GPUs as its own
    #: setting says (``train.use_gpu``, ``index.gpus_per_actor``, ``serve.searcher_gpus``, all
    #: "auto" by default: GPUs when the cluster has them); false keeps every stage on the CPU.
    use_gpus: bool = True


class Config(_Strict):
    """Root configuration of every job, the service and the demo."""

    #: Root URL of all artefacts (datasets, models, indexes, checkpoints): file://, memory:// or s3://.
    storage: str = Field("var", validate_default=True)
    #: Extra options passed to the fsspec filesystem (e.g. ``{"client_kwargs": {"endpoint_url": ...}}``).
    storage_options: dict[str, Any] = {}
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    mine: MiningConfig = MiningConfig()
    category: CategoryConfig = CategoryConfig()
    rank: RankConfig = RankConfig()
    index: IndexConfig = IndexConfig()
    serve: ServeConfig = ServeConfig()
    demo: DemoConfig = DemoConfig()
    nightly: NightlyConfig = NightlyConfig()
    dedup: DedupConfig = DedupConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _photos_need_a_photo_dataset(self) -> Config:
        if self.data.source == "matching" and self.dedup.listings == "photos":
            raise ValueError("a matching benchmark has no photos; set dedup.listings to catalog")
        return self

    @field_validator("storage")
    @classmethod
    def _absolute_storage(cls, value: str) -> str:
        # A relative path means "relative to where the config was loaded": fix it now, since Ray
        # workers run in other working directories.
        if "://" in value:
            return value.rstrip("/") or value
        return "file://" + os.path.abspath(value)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"cannot set {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(node: Any, where: str) -> Any:
    """``${NAME}`` in the config's strings replaced by the environment variable NAME (storage
    URLs and the like, which a shipped config must not hold); an unset one is an error."""
    if isinstance(node, dict):
        return {k: _expand_env(v, f"{where}.{k}" if where else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, where) for v in node]
    if not isinstance(node, str):
        return node

    def lookup(match: re.Match[str]) -> str:
        value = os.environ.get(match.group(1))
        if not value:
            raise ValueError(f"{where} needs the environment variable {match.group(1)}: set it")
        return value

    return _ENV_REFERENCE.sub(lookup, node)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a ``Config`` from a YAML file (or defaults when ``path`` is None) and apply overrides.

    ``overrides`` are ``"section.key=value"`` strings; values are parsed as YAML scalars, so
    ``train.epochs=3`` gives an int and ``data.source=grocery`` a string. ``${NAME}`` in a
    string value is replaced by the environment variable NAME (it must be set).
    """
    tree: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        loaded = yaml.safe_load(text) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: the top level of a config must be a mapping")
        tree = loaded
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return Config.model_validate(_expand_env(tree, ""))
