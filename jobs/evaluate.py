"""Job: offline quality of the published index and its model on held-out query photos.

Two protocols, through the same network code as the service:
- photo -> catalogue: the eval split's photos searched in the published index (binary shortlist +
  float rescore) and by exact float search, Recall@1/5/10 and mAP@10 at product level;
- photo -> train photos: the eval split's photos against the train split's photos (exact search).
Category accuracy (coarse: model head, kNN vote of catalogue hits, fused; fine: proxies, search),
box IoU where the photos have subject boxes, and baselines: pooled maps of a frozen backbone, or
the untrained network. Writes ``reports/evaluate-<time>.json``, ``.md`` and a Recall@K ``.png``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from jobs.common import dataset_prefix, load_dataset, print_summary, progress, storage_of
from vsearch.config import Config
from vsearch.data.dataset import CatalogDataset
from vsearch.eval.metrics import exact_topk
from vsearch.eval.plots import recall_figure
from vsearch.eval.quality import (
    box_iou_mean,
    category_report,
    photo_to_photo,
    quality_markdown,
)
from vsearch.eval.retrieval import evaluate_retrieval
from vsearch.imaging import QUERY_DECODE_SCALE
from vsearch.index.searcher import ShardedIndex
from vsearch.index.tuning import tuning_spec
from vsearch.models.artifact import initial_artifact
from vsearch.models.embedder import Embedder, Prediction
from vsearch.models.onnx_torch import pretrained_tail
from vsearch.rank.pipeline import QueryPipeline, QueryPolicy
from vsearch.runtime.cluster import ray_session
from vsearch.runtime.embedding import META_COLUMNS
from vsearch.storage import IndexStore, ModelStore, Storage
from vsearch.storage.artifacts import new_version
from vsearch.storage.images import read_images


def read_urls(
    storage: Storage, urls: list[str], max_pixels: int, max_side: int, desc: str
) -> tuple[list[np.ndarray], np.ndarray]:
    """The readable images of ``urls`` (shrunk to ``max_side``) and the ``(n,) bool`` mask of them."""
    with progress(len(urls), desc, "img") as bar:
        images, _ = read_images(storage, urls, max_pixels, max_side, bar.update)
    ok = np.asarray([img is not None for img in images], dtype=bool)
    return [img for img in images if img is not None], ok


def canonical_products(ds: CatalogDataset) -> dict[str, str]:
    """Duplicate listing -> the product it re-uploads."""
    if ds.duplicates is None:
        return {}
    return dict(
        zip(
            ds.duplicates["product_id"].to_pylist(),
            ds.duplicates["duplicate_of"].to_pylist(),
            strict=True,
        )
    )


def _pooled(maps: np.ndarray, finish: Callable[..., np.ndarray] | None, desc: str) -> np.ndarray:
    """The "frozen backbone" baseline: its maps (``finish`` completes maps cached at a cut with
    the pretrained rest of the backbone, under a progress bar ``desc``) averaged and
    normalised."""
    if finish is not None:
        with progress(len(maps), desc, "map") as bar:
            maps = finish(maps, bar.update)
    pooled = np.asarray(maps, dtype=np.float32).mean(axis=(2, 3))
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def _train_gallery(
    cfg: Config,
    ds: CatalogDataset,
    embedder: Embedder,
    backbone: bytes | None,
    finish: Callable[..., np.ndarray] | None,
    baseline: bool,
):
    """Predictions (and, for a frozen backbone and ``baseline``, pooled maps) of the train
    split's photos."""
    from jobs.train import cache_box_views, cache_maps

    train = ds.queries_of("train")
    uris = train["image_uri"].to_pylist()
    if backbone is not None:
        from vsearch.storage.feature_cache import FeatureCache, view_key

        cache_id, cached = cache_maps(cfg, uris, backbone, "feature maps (train photos)")
        cache = FeatureCache(storage_of(cfg), cache_id)
        views = embedder.views
        maps = cache.read([view_key(k, v) for k in cached.keys.values() for v in views])
        box_keys: dict[str, str] = {}
        if embedder.box_margin is not None:  # the box views of this model's boxes
            box_keys = cache_box_views(
                cfg, embedder, backbone, cached.keys, cache_id, "box views (train photos)", maps
            )
            maps.update(cache.read(box_keys.values()))

        def have(uri: str) -> bool:
            key = cached.keys.get(uri)
            boxed = embedder.box_margin is None or box_keys.get(uri) in maps
            return key is not None and boxed and all(view_key(key, v) in maps for v in views)

        ok = np.asarray([have(u) for u in uris], dtype=bool)
        good = [u for u, g in zip(uris, ok, strict=True) if g]
        stack = np.stack(
            [np.stack([maps[view_key(cached.keys[u], v)] for u in good]) for v in views]
        )
        boxed = np.stack([maps[box_keys[u]] for u in good]) if box_keys else None
        runs = len(good) * (len(views) + (boxed is not None))
        with progress(runs, "embedding train photos", "map") as bar:
            pred = embedder.predict_maps(stack, box_maps=boxed, progress=bar.update)
        pooled = _pooled(stack[0], finish, "baseline: train photos") if baseline else None
        return pred, pooled, train.filter(pa.array(ok))
    side = QUERY_DECODE_SCALE * embedder.input_size
    images, ok = read_urls(storage_of(cfg), uris, cfg.index.max_pixels, side, "train photos")
    return embedder.predict(images), None, train.filter(pa.array(ok))


def main(
    cfg: Config,
    baseline: bool = True,
    compare: dict[str, str] | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """Evaluate index ``version`` (default: the published one); return the report (also written
    under ``reports/``).

    ``compare`` maps a label to another model version to score photo -> catalogue beside the
    published one (its catalogue vectors are embedded here; e.g. the demo's from-scratch CNN).
    """
    storage = storage_of(cfg)
    store = IndexStore(storage)
    manifest = store.manifest(version)  # first: on empty storage, fail before writing anything
    if manifest.reference_count and cfg.category.reference_split == cfg.data.eval_split:
        raise ValueError(
            f"index {manifest.version} votes for categories with the labelled photos of split "
            f"{cfg.data.eval_split!r} (category.reference_split), the split being evaluated: "
            "each photo would find itself; evaluate another data.eval_split"
        )
    ds = load_dataset(cfg)
    queries = ds.queries_of(cfg.data.eval_split)
    shards = store.load_shards(manifest)
    # What the version serves: tombstoned rows of a delta version are left out; the reference
    # photos of the category vote are not catalogue images.
    catalog = {e.name for e in manifest.catalog_shards}
    live = [(s, s.live_rows()) for s in shards if s.name in catalog]
    catalog_vectors = np.concatenate([s.float_rows(r) for s, r in live])
    catalog_meta = pa.concat_tables(
        [s.meta.select(list(META_COLUMNS)).take(pa.array(r)) for s, r in live]
    )
    models = ModelStore(storage)
    _, artifact = models.load(manifest.model_version)
    backbone = models.backbone_bytes(artifact)
    embedder = artifact.embedder(backbone)
    frozen = backbone is not None
    cut = artifact.config.backbone_cut
    finish = pretrained_tail(backbone, cut) if frozen and cut else None
    urls = queries["image_uri"].to_pylist()
    side = QUERY_DECODE_SCALE * embedder.input_size
    q_images, ok = read_urls(storage, urls, cfg.index.max_pixels, side, "reading queries")
    queries = queries.filter(pa.array(ok))
    # The service's path: backbone maps, then the heads (one forward pass).
    views = len(embedder.views)
    with progress(len(q_images) * views, "embedding queries (backbone)", "crop") as bar:
        q_maps = embedder.feature_maps(q_images, progress=bar.update)
    box = embedder.box_margin is not None
    runs = len(q_images) * (views + 2 * box)
    desc = "embedding queries (heads, box view)" if box else "embedding queries (heads)"
    with progress(runs, desc, "map") as bar:
        pred: Prediction = embedder.predict_maps(q_maps, images=q_images, progress=bar.update)
    products = queries["product_id"].to_pylist()
    canonical = canonical_products(ds)
    args = {
        "shortlist": cfg.index.shortlist,
        "buckets_per_category": cfg.index.buckets_per_category,
        "tuning": tuning_spec(cfg.index),
        "ivf_above": cfg.index.ivf_above,
        "large_engine": cfg.index.large_engine,
        "rescore_dtype": cfg.index.rescore_dtype,
        "policy": QueryPolicy.of(cfg),
    }
    # The service's query pipeline over the published version's own shards: each photo routed
    # by its category head, searched, merged and ranked as the service does.
    served = ShardedIndex.of_entries(manifest.shards, shards)
    p2c = evaluate_retrieval(
        pred.embeddings, products, catalog_vectors, catalog_meta, canonical,
        category_probs=pred.category_probs, category_names=artifact.categories, index=served,
        **args,
    )  # fmt: skip
    pipeline = QueryPipeline(args["policy"])
    # Routed by the fused probabilities, as the service routes.
    fused = p2c.category_probs if p2c.category_probs is not None else pred.category_probs
    routes = [pipeline.plan(p, artifact.categories, 10).categories for p in fused]
    report: dict[str, Any] = {
        "index_version": manifest.version,
        "model_version": manifest.model_version,
        "backbone": artifact.config.arch
        + ((f" (frozen up to {cut})" if cut else " (frozen)") if frozen else "")
        + (" + box view" if artifact.config.box_view else ""),
        "dataset": dataset_prefix(cfg),
        "eval_split": cfg.data.eval_split,
        "queries": int(ok.sum()),
        "unreadable_queries": int((~ok).sum()),
        "photo_to_catalog": p2c.as_dict(),
    }
    routed = [r for r in routes if r is not None]
    if routed:
        truth_cats = queries["category"].to_pylist()
        report["routing"] = {
            "mass": cfg.category.route_mass,
            "max_categories": cfg.category.route_max,
            "mean_categories_searched": float(np.mean([len(r) for r in routed])),
            "true_category_searched": float(
                np.mean([r is None or t in r for r, t in zip(routes, truth_cats, strict=True)])
            ),
        }
    # Category: the pipeline's vote (the nearest labelled images over every shard of the
    # index: catalogue images or reference photos) and its fusion with the head, as in the
    # service.
    if artifact.categories:
        _, rows = exact_topk(pred.embeddings, catalog_vectors, 1)
        product_of_row = catalog_meta["product_id"].to_pylist()
        report["category"] = category_report(
            queries["category"].to_pylist(),
            artifact.categories,
            pred.category_probs,
            p2c.vote_probs,
            cfg.category.fusion_weight,
            fine_truth=[canonical.get(p, p) for p in products],
            fine_search=[canonical.get(product_of_row[r[0]], product_of_row[r[0]]) for r in rows],
            model_temperature=cfg.category.model_temperature,
        )
        report["category"]["vote_gallery"] = pipeline.vote_gallery(served.galleries)
        report["category"]["vote_gallery_images"] = (
            manifest.reference_count
            if report["category"]["vote_gallery"] == "reference"
            else manifest.total_count
        )
    boxes = queries["box"].to_pylist()
    if any(b is not None for b in boxes):
        report["box"] = {"iou": box_iou_mean(pred.boxes, boxes, [img.shape for img in q_images])}
    has_train = "train" in set(ds.queries["split"].to_pylist())
    curves = {"photo -> catalogue": p2c.recall_curve}
    if has_train and cfg.data.eval_split != "train":
        # The train photos' maps come from the feature cache (a Ray Data job fills any gaps).
        with ray_session(cfg.ray):
            g_pred, g_pooled, g_rows = _train_gallery(cfg, ds, embedder, backbone, finish, baseline)
        g_products = g_rows["product_id"].to_pylist()
        report["photo_to_train"] = photo_to_photo(
            pred.embeddings, products, g_pred.embeddings, g_products
        )
        curves["photo -> train photos"] = report["photo_to_train"]["recall_curve"]
        if g_pooled is not None and baseline:
            c_images, c_ok = read_urls(
                storage,
                ds.catalog["image_uri"].to_pylist(),
                cfg.index.max_pixels,
                side,
                "baseline: catalogue",
            )
            c_pooled = _pooled(
                embedder.feature_maps(c_images, views=1)[0], finish, "baseline: catalogue maps"
            )
            c_products = ds.catalog.filter(pa.array(c_ok))["product_id"].to_pylist()
            q_pooled = _pooled(q_maps[0], finish, "baseline: query maps")
            report["baseline_pooled_backbone"] = {
                "photo_to_catalog": photo_to_photo(
                    q_pooled, products, c_pooled, c_products, canonical
                ),
                "photo_to_train": photo_to_photo(q_pooled, products, g_pooled, g_products),
            }
    others: dict[str, Embedder] = {}
    if baseline and not frozen:
        others["untrained"] = initial_artifact(artifact.config, artifact.categories).embedder()
    for label, version in (compare or {}).items():
        _, other = models.load(version)
        others[label] = other.embedder(models.backbone_bytes(other))
        if baseline and "untrained" not in others and other.backbone_sha256 is None:
            # The starting point of a network trained from scratch.
            others["untrained"] = initial_artifact(other.config, other.categories).embedder()
    if others:
        c_images, c_ok = read_urls(
            storage, ds.catalog["image_uri"].to_pylist(), cfg.index.max_pixels, side, "catalogue"
        )
        meta = ds.catalog.filter(pa.array(c_ok)).select(list(META_COLUMNS))
        for label, other in others.items():
            # The same search as the main model, on vectors embedded here (no index published).
            result = evaluate_retrieval(
                other.embed(q_images), products, other.embed(c_images), meta, canonical, **args
            )
            key = "baseline_untrained" if label == "untrained" else f"compare_{label}"
            report[key] = {"photo_to_catalog": result.as_dict()}
    for key, label in (
        ("baseline_pooled_backbone", "pooled backbone"),
        ("baseline_untrained", "untrained"),
        ("compare_from_scratch", "from scratch"),
    ):
        if key in report:
            curves[f"{label}: photo -> catalogue"] = report[key]["photo_to_catalog"]["recall_curve"]
    name = f"reports/{new_version('evaluate-')}"
    storage.write_text(f"{name}.json", json.dumps(report, indent=2))
    storage.write_text(f"{name}.md", quality_markdown(report))
    storage.write_bytes(
        f"{name}.png", recall_figure(curves, f"vsearch evaluate: {manifest.model_version}")
    )
    report["report_url"] = storage.url(name)
    _print(report)
    return report


def _print(report: dict[str, Any]) -> None:
    rows: dict[str, object] = {
        "index / model": f"{report['index_version']} / {report['model_version']}",
        "backbone": report["backbone"],
        "eval split (queries)": f"{report['eval_split']} ({report['queries']})",
    }
    p2c = report["photo_to_catalog"]
    rows["photo -> catalogue R@1 / R@10 (index)"] = (
        f"{p2c['recall_at_1']:.3f} / {p2c['recall_at_10']:.3f}"
    )
    if "routing" in report:
        r = report["routing"]
        rows["routed: categories searched (mean) / true one among them"] = (
            f"{r['mean_categories_searched']:.2f} / {r['true_category_searched']:.3f}"
        )
    rows["photo -> catalogue R@1 (exact)"] = p2c["exact_recall_at_1"]
    rows["binary index recall@10 vs exact"] = p2c["ann_recall_at_10"]
    if "photo_to_train" in report:
        p2t = report["photo_to_train"]
        rows["photo -> train photos R@1 / R@10"] = (
            f"{p2t['recall_at_1']:.3f} / {p2t['recall_at_10']:.3f}"
        )
    if "category" in report:
        cat = report["category"]
        rows["category top-1 model / search / fused"] = (
            f"{cat['model_top1']:.3f} / {cat['search_top1']:.3f} / {cat['fused_top1']:.3f}"
        )
        if "vote_gallery" in cat:
            rows["category vote: gallery (images)"] = (
                f"{cat['vote_gallery']} ({cat['vote_gallery_images']})"
            )
        rows["category fusion: weight / head temperature (fitted here)"] = (
            f"{cat['fusion_weight']:.2f} / {cat['model_temperature']:g} "
            f"({cat.get('best_weight_here', float('nan')):.2f} / "
            f"{cat.get('fitted_temperature_here', float('nan')):g})"
        )
    if "box" in report:
        rows["subject box IoU"] = report["box"]["iou"]
    for key in ("baseline_pooled_backbone", "baseline_untrained"):
        if key in report:
            b = report[key]
            label = "pooled frozen backbone" if key.endswith("backbone") else "untrained network"
            rows[f"baseline ({label}) photo -> catalogue R@1"] = b["photo_to_catalog"][
                "recall_at_1"
            ]
            if "photo_to_train" in b:
                rows[f"baseline ({label}) photo -> train R@1"] = b["photo_to_train"]["recall_at_1"]
    rows["report"] = report["report_url"] + ".json / .md / .png"
    print_summary("evaluate", rows)
