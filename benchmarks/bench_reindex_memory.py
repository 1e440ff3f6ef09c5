"""Benchmark: memory of the reindex's parallel shard build at two catalogue sizes.

The reindex job stages embedded rows as Parquet, one folder per shard, and builds every shard in
its own Ray task (``vsearch.runtime.reindex.build_staged``); the driver only receives manifest
entries. This script stages ``n`` synthetic 128-d vectors (clustered, 10 categories, written in
chunks of 50k so that staging itself holds little) on local storage, then runs that build on a
private Ray with ``--cpus`` CPUs, sampling the driver's resident memory every 20 ms.

For each ``--n`` (each in its own process) it reports the driver's peak RSS during the build,
the largest build task process's peak RSS (``ru_maxrss``, which includes the worker's own
baseline of imports), the size of the vectors themselves, and the build time; then the ratio of
the driver's peak at the largest ``n`` to that at the smallest (the target is <= 1.3: the driver
does not grow with the catalogue). Usage:
``python benchmarks/bench_reindex_memory.py [--n 200000 1000000] [--out FILE.md]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from report import write_table

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK = 50_000


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(n: int, cpus: int) -> dict:
    import numpy as np
    import pyarrow as pa

    from vsearch.config import load_config
    from vsearch.index.staging import stage_groups
    from vsearch.runtime.cluster import ray_session
    from vsearch.runtime.reindex import StagedCatalog, build_staged
    from vsearch.storage import Storage

    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            repo / "configs" / "demo.yaml", [f"storage={tmp}", f"ray.num_cpus={cpus}"]
        )
        storage = Storage(cfg.storage)
        staged = StagedCatalog(staging="indexes/bench/staging")
        rng = np.random.default_rng(0)
        centres = rng.normal(size=(1000, 128)).astype(np.float32)
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            x = centres[rng.integers(0, 1000, m)] + 0.85 * rng.normal(size=(m, 128)).astype(
                np.float32
            )
            ids = np.arange(start, start + m).astype(str)
            meta = pa.table({
                "image_id": ids, "product_id": ids,
                "category": np.char.add("c", (np.arange(start, start + m) % 10).astype(str)),
                "title": np.full(m, ""), "quality": np.ones(m, np.float32),
                "popularity": np.zeros(m, np.float32),
            })  # fmt: skip
            for name, (cat, bucket, table) in stage_groups(x, meta, 1).items():
                storage.write_table(f"{staged.staging}/{name}/{start:09d}.parquet", table)
                _, _, before = staged.shards.get(name, ("", 0, 0))
                staged.shards[name] = (cat, bucket, before + table.num_rows)
            staged.dim = 128
            del x, meta
        with ray_session(cfg.ray):
            baseline = _rss()
            peak = [baseline]
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], _rss())
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            began = time.perf_counter()
            entries, worker_peak = build_staged(cfg, staged, "bench")
            took = time.perf_counter() - began
            stop.set()
            sampler.join()
    return {
        "n": n,
        "shards": len(entries),
        "engines": sorted({e.engine for e in entries}),
        "vectors_mib": n * 128 * 4 / 2**20,
        "driver_before_mib": baseline / 2**20,
        "driver_peak_mib": peak[0] / 2**20,
        "largest_task_peak_mib": worker_peak / 2**20,
        "build_s": took,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_reindex_memory.md")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.cpus)))
        return
    rows = []
    for n in args.n:
        print(f"building {n} vectors ...", flush=True)
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(n), "--cpus", str(args.cpus)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    lines = [
        "# Reindex build memory\n",
        f"Staged synthetic 128-d vectors, 10 category shards, built in Ray tasks on {args.cpus} "
        "CPUs; driver RSS sampled every 20 ms during the build.\n",
        "| vectors | shards | engines | vectors MiB | driver before MiB | driver peak MiB "
        "| largest task peak MiB | build s |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['shards']} | {', '.join(r['engines'])} | {r['vectors_mib']:.0f} | "
            f"{r['driver_before_mib']:.0f} | {r['driver_peak_mib']:.0f} | "
            f"{r['largest_task_peak_mib']:.0f} | {r['build_s']:.1f} |"
        )
    ratio = rows[-1]["driver_peak_mib"] / rows[0]["driver_peak_mib"]
    lines.append(
        f"\nDriver peak at {rows[-1]['n']} / at {rows[0]['n']}: **{ratio:.2f}** (target <= 1.3)."
    )
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
