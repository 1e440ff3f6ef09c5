"""Benchmark: the served search graph under load, against the same pipeline called in one process.

An index of ``--n`` synthetic catalogue vectors (6 category shards, as wide as the model's
embedding) is built and published on local storage with the untrained ``--arch`` network as the
query model (its cost is a trained one's). The service runs as `vsearch serve` runs it, on
127.0.0.1 only, with access logs, rate limiting and hot reload off. Then:

- in process: decode + embed (batch of one) + route + shard search + re-rank, per query;
- over HTTP: ``--clients`` concurrent clients (1, 8, 32) each posting query photos for
  ``--seconds`` (at most ``--max-requests`` each): QPS and p50 / p99 latency;
- ``/healthz`` latency while 5 clients upload at 2 kB/s and 2 clients send 20-megapixel PNGs.

Then the same graph again with the load settings at Serve's defaults (``--no-baseline`` skips
it), for ratios measured in the same run. Prints the tables and writes them to ``--out``
(``benchmarks/results/bench_serve.md``).

Usage: ``python benchmarks/bench_serve.py [--n 100000] [--clients 1 8 32] [--seconds 15]``.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pyarrow as pa
import requests
from PIL import Image
from report import write_table

from serve.app import running_service
from vsearch.config import Config, load_config
from vsearch.imaging import decode_image
from vsearch.index.builder import build_shards
from vsearch.index.searcher import ShardedIndex
from vsearch.index.tuning import tuning_spec
from vsearch.models.artifact import initial_artifact
from vsearch.models.embedder import Embedder
from vsearch.rank.pipeline import QueryPipeline, QueryPlan, QueryPolicy
from vsearch.runtime.cluster import ray_session
from vsearch.storage import IndexStore, ModelStore, Storage

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
CATEGORIES = [f"cat{i}" for i in range(6)]


def _photos(count: int) -> list[bytes]:
    rng = np.random.default_rng(1)
    out = []
    for _ in range(count):
        pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(pixels).resize((256, 256), Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _load(url: str, photos: list[bytes], clients: int, seconds: float, cap: int) -> dict:
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(i: int) -> None:
        session = requests.Session()
        for j in range(cap):
            if time.monotonic() > deadline:
                break
            began = time.perf_counter()
            resp = session.post(f"{url}/search", params={"k": 10},
                                data=photos[(i + j) % len(photos)], timeout=60)  # fmt: skip
            took = time.perf_counter() - began
            with lock:
                if resp.status_code == 200:
                    latencies.append(took)
                else:
                    failures[0] += 1

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - began
    return {
        "clients": clients,
        "requests": len(latencies),
        "failed": failures[0],
        "qps": len(latencies) / wall,
        "p50_ms": 1000 * _percentile(latencies, 50),
        "p99_ms": 1000 * _percentile(latencies, 99),
    }


def _slow_upload(url: str, stop: threading.Event) -> None:
    parsed = urlparse(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=120) as sock:
        body = b"x" * 2_000_000
        sock.sendall(b"POST /search HTTP/1.1\r\nHost: b\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))  # fmt: skip
        for start in range(0, len(body), 2048):
            if stop.is_set():
                return
            sock.sendall(body[start : start + 2048])
            time.sleep(1.0)


def _big_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (5000, 4000), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _healthz_under_stress(url: str, seconds: float) -> dict:
    stop = threading.Event()
    big = _big_png()
    threads = [threading.Thread(target=_slow_upload, args=(url, stop), daemon=True)
               for _ in range(5)]  # fmt: skip

    def big_decodes() -> None:
        session = requests.Session()
        while not stop.is_set():
            session.post(f"{url}/search", data=big, timeout=120)

    threads += [threading.Thread(target=big_decodes, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        began = time.perf_counter()
        requests.get(f"{url}/healthz", timeout=30).raise_for_status()
        latencies.append(time.perf_counter() - began)
        time.sleep(0.1)
    stop.set()
    for t in threads:  # close the uploads before the service stops (no broken-request logs)
        t.join(timeout=5)
    return {"checks": len(latencies), "p50_ms": 1000 * _percentile(latencies, 50),
            "max_ms": 1000 * max(latencies), "big_png_bytes": len(big)}  # fmt: skip


def publish_synthetic_index(cfg: Config, n: int) -> tuple[list, Embedder]:
    """Publish an index of ``n`` random catalogue vectors in 6 category shards on
    ``cfg.storage``, with the untrained ``cfg.model`` as its query model."""
    storage = Storage(cfg.storage)
    model = initial_artifact(cfg.model, CATEGORIES)
    model_version = ModelStore(storage).save(model)
    embedder = model.embedder()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, embedder.dim)).astype(np.float32)
    ids = np.arange(n).astype(str)
    meta = pa.table({
        "image_id": ids, "product_id": np.char.add("p", (np.arange(n) // 3).astype(str)),
        "category": np.asarray(CATEGORIES)[np.arange(n) % 6], "title": np.full(n, ""),
        "quality": np.ones(n, np.float32), "popularity": np.zeros(n, np.float32),
    })  # fmt: skip
    print(f"building {n} vectors ...", flush=True)
    built = build_shards(vectors, meta, 1, tuning_spec(cfg.index), cfg.index.ivf_above,
                         cfg.index.large_engine, cfg.index.rescore_dtype)  # fmt: skip
    store = IndexStore(storage)
    store.publish(store.write_version("i-bench", built, model_version, embedder.dim, {}))
    return built, embedder


def _serve_levels(
    cfg: Config, photos: list[bytes], args: argparse.Namespace, health: dict | None = None
) -> list[dict]:
    """Serve ``cfg`` on a private Ray, warm it up and load it at each of ``args.clients``;
    with ``health``, also measure ``/healthz`` under stress into it."""
    rows = []
    with ray_session(cfg.ray, cfg.serve), running_service(cfg, quiet=True) as url:
        for _ in range(20):  # warm up
            requests.post(f"{url}/search", data=photos[0], timeout=60).raise_for_status()
        for clients in args.clients:
            rows.append(_load(url, photos, clients, args.seconds, args.max_requests))
            print(f"throughput_optimized={cfg.serve.throughput_optimized}", rows[-1], flush=True)
        if health is not None:
            health.update(_healthz_under_stress(url, 10.0))
            print(health, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--arch", default="cnn_small")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--max-requests", type=int, default=2000, help="per client")
    parser.add_argument(
        "--vote-neighbours", type=int, default=None,
        help="category.vote_neighbours (default: the demo config's; 0: no vote search)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_serve.md")
    parser.add_argument(
        "--no-baseline", action="store_true",
        help="skip the second service with Serve's defaults (the load settings off)",
    )  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(REPO / "configs" / "demo.yaml", [
            f"storage={tmp}", f"model.arch={args.arch}", "serve.rate_limit_per_s=0",
            "serve.reload_interval_s=0", "ray.num_cpus=2",
        ] + ([] if args.vote_neighbours is None else
             [f"category.vote_neighbours={args.vote_neighbours}"]))  # fmt: skip
        built, embedder = publish_synthetic_index(cfg, args.n)
        photos = _photos(16)

        # The same pipeline in one process, one query at a time.
        index = ShardedIndex((b.category, b.index) for b in built)
        pipeline = QueryPipeline(QueryPolicy.of(cfg))

        def search(vector: np.ndarray, plan: QueryPlan) -> list:
            return [index.search(vector[None], plan.images, plan.shortlist, plan.categories)[0]]

        local = []
        for i in range(200):
            began = time.perf_counter()
            image = decode_image(photos[i % len(photos)], cfg.index.max_pixels, 256)
            pred = embedder.predict([image])
            one = {"embedding": pred.embeddings[0], "category_probs": pred.category_probs[0]}
            pipeline.run(one, CATEGORIES, 10, search)
            local.append(time.perf_counter() - began)
        local_p50 = 1000 * _percentile(local, 50)
        print(f"in process: p50 {local_p50:.1f} ms", flush=True)

        health: dict = {}
        rows = _serve_levels(cfg, photos, args, health)
        # The same graph with the load settings at Serve's defaults, in a Ray of its own.
        baseline = []
        if not args.no_baseline:
            plain = cfg.model_copy(deep=True)
            plain.serve.throughput_optimized = False
            plain.serve.stage_max_ongoing_requests = 5
            plain.serve.batch_wait_timeout_s = 0.005
            baseline = _serve_levels(plain, photos, args)
    lines = [
        "# Serving under load\n",
        f"{args.n} catalogue vectors in 6 category shards; query model {args.arch} (untrained, "
        f"{embedder.dim}-d); 2 CPUs; 127.0.0.1; {args.seconds:.0f} s per level; "
        f"serve.throughput_optimized {cfg.serve.throughput_optimized}, searchers "
        f"{cfg.serve.searchers}; category.vote_neighbours {cfg.category.vote_neighbours} (the "
        f"category vote's search over every shard, {cfg.category.vote_shortlist} candidates "
        "rescored per shard; 0: none).\n",
        f"In process (decode + embed + vote + route + search + re-rank, one query at a time): "
        f"p50 **{local_p50:.1f} ms**.\n",
        "| clients | requests | failed | QPS | p50 ms | p99 ms | p50 added by the graph ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['clients']} | {r['requests']} | {r['failed']} | {r['qps']:.1f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['p50_ms'] - local_p50:.1f} |"
        )
    if baseline:
        lines += [
            "\nThe same graph with Serve's defaults for the load settings (Ray actor calls "
            "between deployments, `stage_max_ongoing_requests` 5, a 5 ms batch wait; "
            "photo-only queries are still ranked in the ingress), in the same run:\n",
            "| clients | QPS | p50 ms | p99 ms | QPS with the settings / without | "
            "p50 without / with |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r, b in zip(rows, baseline, strict=True):
            lines.append(
                f"| {b['clients']} | {b['qps']:.1f} | {b['p50_ms']:.1f} | {b['p99_ms']:.1f} | "
                f"{r['qps'] / b['qps']:.2f}x | {b['p50_ms'] / r['p50_ms']:.2f}x |"
            )
    lines.append(
        f"\n`/healthz` while 5 clients upload at 2 kB/s and 2 send {health['big_png_bytes']} B "
        f"PNGs of 20 megapixels: {health['checks']} checks, p50 {health['p50_ms']:.1f} ms, "
        f"max {health['max_ms']:.1f} ms (target < 100 ms)."
    )
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
