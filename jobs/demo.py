"""The demo: dataset -> train -> reindex -> evaluate -> serve -> query over HTTP -> report.

Runs on the embedded default (synthetic catalogue, local Ray, ``./var`` storage, CPU). Keeps
serving after the report until Ctrl-C, unless ``once``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from jobs import evaluate, generate, reindex, train
from jobs.common import load_dataset, progress, resolve_backbone, storage_of
from serve.app import running_service
from serve.client import SearchClient
from vsearch.config import Config
from vsearch.eval.metrics import latency_summary, mean_average_precision, recall_at_k
from vsearch.eval.plots import recall_and_latency_figure
from vsearch.eval.retrieval import PRODUCTS_ASKED, canonical_ranking, recall_curve
from vsearch.models.registry import backend_of
from vsearch.runtime.cluster import ray_session
from vsearch.storage.artifacts import new_version


def query_over_http(cfg: Config, client: SearchClient, warmup: int = 3) -> dict[str, Any]:
    """Send every held-out query photo through ``POST /search``; score what comes back."""
    storage = storage_of(cfg)
    ds = load_dataset(cfg)
    queries = ds.queries_of(cfg.data.eval_split)
    canonical = evaluate.canonical_products(ds)
    uris = queries["image_uri"].to_pylist()
    truth = [canonical.get(p, p) for p in queries["product_id"].to_pylist()]
    payloads = [storage.read_bytes(u) for u in uris]
    for data in payloads[:warmup]:
        client.search(data, k=10)
    ranked, latencies, failures = [], [], 0
    with progress(len(payloads), "querying over HTTP", "query") as bar:
        for data in payloads:
            began = time.perf_counter()
            # As many as the offline evaluation asks for: folding duplicate listings into their
            # product can shorten the list, so both fold before they cut at 10.
            resp = client.search(data, k=PRODUCTS_ASKED)
            latencies.append(time.perf_counter() - began)
            bar.update(1)
            if resp.status_code != 200:
                failures += 1
                ranked.append([])
                continue
            products = [r["product_id"] for r in resp.json()["results"]]
            ranked.append(canonical_ranking(products, canonical, 10))
    bad = client.search(b"this is not an image", k=10)
    return {
        "queries": len(payloads),
        "failed_requests": failures,
        "recall_at_1": recall_at_k(ranked, truth, 1),
        "recall_at_10": recall_at_k(ranked, truth, 10),
        "map_at_10": mean_average_precision(ranked, [{t} for t in truth], 10),
        "latency": latency_summary(latencies),
        "latencies_ms": [round(1000 * t, 3) for t in latencies],
        "recall_curve": recall_curve(ranked, truth),
        "non_image_upload": {"status": bad.status_code, "detail": bad.json().get("detail")},
    }


def scratch_config(cfg: Config) -> Config | None:
    """The from-scratch comparison run (``demo.scratch_epochs``), when the main model uses a
    pretrained backbone that is available; None otherwise."""
    if cfg.demo.scratch_epochs <= 0 or backend_of(cfg.model.arch) != "onnx":
        return None
    if resolve_backbone(cfg)[1] is None:
        return None  # the main run falls back to this network anyway
    model = cfg.model.model_copy(
        update={
            "arch": cfg.model.fallback_arch,
            "head_hidden": 0,
            "dropout": 0.0,
            "views": [1.0],
            "box_view": False,
        }
    )
    training = cfg.train.model_copy(
        update={
            "epochs": cfg.demo.scratch_epochs,
            "lr": cfg.demo.scratch_lr,
            "warmup_epochs": 2,
            "catalog_per_product": 0,
            "time_budget_s": 0,
        }
    )
    return cfg.model_copy(update={"model": model, "train": training})


def main(cfg: Config, once: bool = False) -> dict[str, Any]:
    started = time.perf_counter()
    with ray_session(cfg.ray, cfg.serve):
        generate.main(cfg)
        compare = {}
        scratch = scratch_config(cfg)
        if scratch is not None:
            print(f"\n-- from scratch: {scratch.model.arch}, {scratch.train.epochs} epochs --")
            compare["from_scratch"] = train.main(scratch)
        model_version = train.main(cfg)
        manifest = reindex.main(cfg, model_version)
        offline = evaluate.main(cfg, baseline=True, compare=compare)
        # The demo prints its own report: keep Serve's per-request access logs out of it.
        with running_service(cfg, quiet=True) as url:
            client = SearchClient(url)
            client.wait_ready()
            http = query_over_http(cfg, client)
            report = {
                "model_version": model_version,
                "index_version": manifest.version,
                "offline": offline,
                "http": http,
                "wall_time_s": round(time.perf_counter() - started, 1),
            }
            _print_report(report)
            name = f"reports/{new_version('demo-')}"
            storage = storage_of(cfg)
            storage.write_text(f"{name}.json", json.dumps(report, indent=2))
            curves = {f"{name} (offline)": c["recall_curve"] for name, c in _columns(offline)}
            curves["served over HTTP"] = http["recall_curve"]
            figure = recall_and_latency_figure(
                curves, http["latencies_ms"], f"vsearch demo: model {model_version}"
            )
            storage.write_bytes(f"{name}.png", figure)
            print(f"  report: {storage.url(name)}.json and .png")
            if not once:
                print(
                    f"\nServing at {url}  (POST /search with an image; GET /healthz). Ctrl-C stops."
                )
                print(f"  try: vsearch search --url {url} path/to/photo.jpg")
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    print("stopping")
            return report


def _columns(offline: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The report's columns, photo -> catalogue figures of each model that was evaluated."""
    cols = []
    for key, label in (
        ("baseline_untrained", "untrained"),
        ("compare_from_scratch", "from scratch"),
        ("baseline_pooled_backbone", "pooled backbone"),
    ):
        if key in offline:
            cols.append((label, offline[key]["photo_to_catalog"]))
    cols.append(("trained" if len(cols) < 2 else "pretrained+heads", offline["photo_to_catalog"]))
    return cols


def _print_report(report: dict[str, Any]) -> None:
    offline = report["offline"]
    trained = offline["photo_to_catalog"]
    cols = _columns(offline)
    http, lat = report["http"], report["http"]["latency"]
    print("\n== vsearch demo report ==")
    print(
        f"  model {report['model_version']} ({offline['backbone']}), index {report['index_version']}"
    )
    print(
        f"  {int(trained['queries'])} held-out real-shot queries against "
        f"{int(trained['catalog_images'])} catalogue images\n"
    )
    print(f"  {'offline (in-process)':34s}" + "".join(f"{name:>17s}" for name, _ in cols))
    for key, label in (
        ("recall_at_1", "Recall@1, binary index + rescore"),
        ("recall_at_10", "Recall@10, binary index + rescore"),
        ("map_at_10", "mAP@10, binary index + rescore"),
        ("exact_recall_at_1", "Recall@1, exact float search"),
        ("exact_recall_at_10", "Recall@10, exact float search"),
        ("ann_recall_at_10", "binary index recall@10 vs exact"),
    ):
        cells = "".join(f"{c[key]:17.3f}" if key in c else f"{'':17s}" for _, c in cols)
        print(f"  {label:34s}{cells}")
    if "category" in offline:
        cat = offline["category"]
        print(
            f"  {'category top-1 model / search / fused':34s} "
            f"{cat['model_top1']:.3f} / {cat['search_top1']:.3f} / {cat['fused_top1']:.3f}"
        )
    if "box" in offline:
        print(f"  {'subject box IoU (trained)':34s} {offline['box']['iou']:.3f}")
    print(
        f"\n  served over HTTP (trained model), {http['queries']} queries, "
        f"{http['failed_requests']} failed"
    )
    print(f"  {'Recall@1':38s} {http['recall_at_1']:10.3f}")
    print(f"  {'Recall@10':38s} {http['recall_at_10']:10.3f}")
    print(f"  {'mAP@10':38s} {http['map_at_10']:10.3f}")
    print(f"  {'latency p50 / p99 (ms)':38s} {lat['p50_ms']:10.1f} {lat['p99_ms']:10.1f}")
    bad = http["non_image_upload"]
    print(f"  {'non-image upload':38s} HTTP {bad['status']}: {bad['detail']}")
    print(f"\n  total wall time {report['wall_time_s']:.0f}s")
