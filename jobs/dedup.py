"""Job: find duplicate listings (Coupang) — image, text and BM25 channels, union, combiner, clusters.

    vsearch dedup --config configs/abt-buy.yaml           # a two-table benchmark (text + lexical)
    vsearch dedup                                         # the synthetic catalogue, all channels
    vsearch dedup --products ids.txt                      # batch-query mode: only these listings

Writes ``dedup/<run>/pairs.parquet`` (``DEDUP_PAIR_SCHEMA``), ``clusters.parquet``
(``DEDUP_CLUSTER_SCHEMA``) and ``combiner.json`` under storage, and, with ground truth,
``reports/dedup-<time>.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.common import load_dataset, print_summary, progress, storage_of
from vsearch.config import Config
from vsearch.data.matching import load_matching_set
from vsearch.dedup.combiner import Combiner
from vsearch.dedup.pipeline import (
    DedupOutcome,
    catalog_listings,
    decide_duplicates,
    listing_texts,
    photo_listings,
)
from vsearch.eval.dedup import dedup_markdown
from vsearch.eval.plots import dedup_figure
from vsearch.runtime.cluster import ray_session
from vsearch.runtime.dedup import embed_listings, join_shards, lexical_shards
from vsearch.storage import ModelStore
from vsearch.storage.artifacts import new_version

__all__ = ["main", "read_requested"]


def read_requested(path: str) -> list[str]:
    """Listing ids from a text file (one per line, ``#`` comments) or a Parquet file (column
    ``listing_id`` or ``product_id``)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--products {path}: no such file")
    if file.suffix == ".parquet":
        table = pq.read_table(file)
        for column in ("listing_id", "product_id"):
            if column in table.column_names:
                return [str(v) for v in table[column].to_pylist() if v is not None]
        raise ValueError(f"{path}: needs a listing_id or product_id column")
    lines = (line.split("#", 1)[0].strip() for line in file.read_text().splitlines())
    return [line for line in lines if line]


def _listings(cfg: Config) -> tuple[pa.Table, pa.Table | None, dict[str, int], str, str | None]:
    """(listings, true matches or None, skipped rows, a description, the dataset prefix)."""
    if cfg.data.source == "matching":
        assert cfg.data.matching_root and cfg.data.matching
        data = load_matching_set(cfg.data.matching_root, cfg.data.matching)
        return data.listings, data.matches, data.skipped, f"matching {cfg.data.matching_root}", None
    from jobs.common import ensure_dataset

    prefix = ensure_dataset(cfg)
    dataset = load_dataset(cfg)
    if cfg.dedup.listings == "photos":
        split = cfg.data.eval_split
        listings, matches = photo_listings(dataset.queries, split, cfg.dedup.photos_per_product)
        return listings, matches, {}, f"{cfg.data.source} {split} photos", prefix
    listings, matches = catalog_listings(dataset.catalog, dataset.duplicates)
    return listings, matches, {}, cfg.data.source, prefix


def _channels(cfg: Config, listings: pa.Table) -> list[str]:
    channels = list(dict.fromkeys(cfg.dedup.channels))
    if "image" in channels and listings["image_uri"].null_count == listings.num_rows:
        raise ValueError(
            "the image channel needs listing images and this dataset has none; "
            "set dedup.channels to [text, lexical]"
        )
    return channels


def _image_model(cfg: Config, listings: pa.Table, base: str) -> tuple[str, str, str]:
    """(model store prefix, version, description) of the network that embeds listing images:
    the latest trained model, else the untrained ``cfg.model`` network (said in a notice)."""
    storage = storage_of(cfg)
    store = ModelStore(storage)
    try:
        version = store.latest()
        return store.prefix, version, version
    except FileNotFoundError:
        pass
    from jobs.common import resolve_backbone
    from vsearch.models.artifact import initial_artifact

    cfg_used, backbone = resolve_backbone(cfg)
    categories = sorted(set(listings["category"].to_pylist()))
    artifact = initial_artifact(cfg_used.model, categories, None, backbone)
    prefix = f"{base}/model"
    version = ModelStore(storage, prefix).save(artifact, "untrained", backbone)
    print(
        f"notice: no trained model under {storage.url('models')}; the image channel uses the "
        f"untrained {cfg_used.model.arch} network (run `vsearch train` first for better image "
        "candidates)",
        file=sys.stderr,
        flush=True,
    )
    return prefix, version, f"untrained {cfg_used.model.arch}"


def main(cfg: Config, products: str | None = None) -> dict[str, Any]:
    """Run the dedup job; return its report (also written under storage ``reports/``)."""
    started = time.perf_counter()
    listings, matches, skipped, source, prefix = _listings(cfg)
    channels = _channels(cfg, listings)
    ids = listings["listing_id"].to_pylist()
    asked_rows = None
    if products:
        wanted = set(read_requested(products))
        unknown = wanted - set(ids)
        if unknown:
            print(
                f"notice: {len(unknown)} requested ids are not listings (e.g. {sorted(unknown)[:3]})"
            )
        asked_rows = np.flatnonzero([i in wanted for i in ids])
        if len(asked_rows) == 0:
            raise ValueError(f"--products {products}: none of its ids is a listing")
    storage = storage_of(cfg)
    run = new_version("d")
    base = f"dedup/{run}"
    texts = listing_texts(listings, cfg.dedup.text_attributes)
    shards = (
        listings["category"].to_numpy(zero_copy_only=False).astype(str)
        if cfg.dedup.within_category
        else np.full(listings.num_rows, "all")
    )
    sources = listings["source"].to_numpy(zero_copy_only=False).astype(str)
    rows = pa.array(np.arange(listings.num_rows))
    common = {"row": rows, "shard": pa.array(shards), "source": pa.array(sources)}
    neighbours = {}
    timings: dict[str, float] = {}
    model_version = None
    with ray_session(cfg.ray), progress(len(channels), "dedup channels", "channel") as bar:
        for channel in channels:
            bar.set_postfix_str(channel)
            t0 = time.perf_counter()
            if channel == "lexical":
                neighbours[channel] = lexical_shards(
                    cfg, texts, shards, sources, f"{base}/candidates/lexical", asked_rows
                )
            else:
                extra: dict[str, Any] = {}
                if channel == "text":
                    work = pa.table({**common, "text": pa.array(texts, pa.string())})
                else:
                    model_prefix, version, model_version = _image_model(cfg, listings, base)
                    extra = {
                        "model_prefix": model_prefix,
                        "model_version": version,
                        "dataset_prefix": prefix or "",
                    }
                    work = pa.table({**common, "image_uri": listings["image_uri"]})
                emb = f"{base}/embeddings/{channel}"
                errors = embed_listings(cfg, work, channel, emb, **extra)
                for reason, count in errors.items():
                    skipped[f"{channel}: {reason}"] = count
                neighbours[channel] = join_shards(
                    cfg, emb, f"{base}/candidates/{channel}", sorted(set(shards)), asked_rows
                )
            timings[channel] = round(time.perf_counter() - t0, 2)
            bar.update(1)
    combiner = None
    if matches is None and cfg.dedup.combiner_url:
        combiner = Combiner.from_json(storage.read_text(cfg.dedup.combiner_url))
    asked_mask = None
    if asked_rows is not None:
        asked_mask = np.zeros(listings.num_rows, bool)
        asked_mask[asked_rows] = True
    t0 = time.perf_counter()
    outcome = decide_duplicates(listings, neighbours, cfg.dedup, matches, combiner, asked_mask)
    timings["combine_and_cluster"] = round(time.perf_counter() - t0, 2)
    storage.write_table(f"{base}/pairs.parquet", outcome.pairs)
    storage.write_table(f"{base}/clusters.parquet", outcome.clusters)
    storage.write_text(f"{base}/combiner.json", outcome.combiner.to_json())
    timings["total"] = round(time.perf_counter() - started, 2)
    report = _report(cfg, run, source, listings, channels, outcome, skipped, timings, model_version)
    report["output_url"] = storage.url(base)
    if outcome.evaluation is not None:
        name = f"reports/{new_version('dedup-')}"
        storage.write_text(f"{name}.json", json.dumps(report, indent=2))
        storage.write_text(f"{name}.md", dedup_markdown(report))
        storage.write_bytes(
            f"{name}.png", dedup_figure(outcome.evaluation, cfg.dedup.k, f"vsearch dedup: {source}")
        )
        report["report_url"] = storage.url(name)
    _print(report)
    return report


def _report(
    cfg: Config, run: str, source: str, listings: pa.Table, channels: list[str],
    outcome: DedupOutcome, skipped: dict[str, int], timings: dict[str, float],
    model_version: str | None,
) -> dict[str, Any]:  # fmt: skip
    sizes = [len(c) for c in outcome.clustering.clusters]
    return {
        "run": run,
        "source": source,
        "listings": listings.num_rows,
        "channels_run": channels,
        "k": cfg.dedup.k,
        "image_model": model_version,
        "candidate_pairs": outcome.stats["candidate_pairs"],
        "duplicate_pairs": outcome.stats["duplicate_pairs"],
        "clusters": len(sizes),
        "largest_cluster": max(sizes, default=0),
        "refused_merges": outcome.clustering.refused,
        "skipped": skipped,
        "timings": timings,
        "config": cfg.dedup.model_dump(),
        "combiner": {
            "features": outcome.combiner.feature_names,
            "threshold": outcome.combiner.threshold,
            "fitted_on": outcome.combiner.fitted_on,
        },
        **({"evaluation": outcome.evaluation} if outcome.evaluation else {}),
        **({k: v for k, v in outcome.evaluation.items() if k in ("union", "channels")}
           if outcome.evaluation else {}),
    }  # fmt: skip


def _print(report: dict[str, Any]) -> None:
    rows: dict[str, object] = {
        "run": report["run"],
        "listings": f"{report['listings']} ({report['source']})",
        "channels": ", ".join(report["channels_run"]),
        "candidate pairs / judged duplicates": f"{report['candidate_pairs']} / "
        f"{report['duplicate_pairs']}",
        "clusters (largest)": f"{report['clusters']} ({report['largest_cluster']})",
        "skipped": report["skipped"] or "nothing",
    }
    ev = report.get("evaluation")
    if ev:
        k = report["k"]
        for name, row in {**ev["channels"], "union": ev["union"]}.items():
            rows[f"{name}: cand. recall@{k} / P / R / F1"] = (
                f"{row['recall_at_k']:.3f} / {row['precision']:.3f} / {row['recall']:.3f} / "
                f"{row['f1']:.3f}"
            )
        comp = ev["complement"]["candidates"]
        for name in ("image", "text"):
            if name in comp and "missed_by_lexical" in comp[name]:
                rows[f"true pairs {name} found, lexical missed"] = comp[name]["missed_by_lexical"]
    rows["timings (s)"] = report["timings"]
    rows["output"] = report["output_url"]
    if "report_url" in report:
        rows["report"] = report["report_url"] + ".{json,md,png}"
    print_summary("dedup", rows)
    sys.stdout.flush()
