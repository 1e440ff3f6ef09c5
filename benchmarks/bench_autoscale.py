"""Benchmark: the service's replicas follow the load on local Ray (``serve.max_replicas``).

Publishes the synthetic index of ``bench_serve`` (``--n`` vectors), serves it with every deployment
allowed 1..``--max-replicas`` replicas (upscale after 2 s of load, downscale after 10 s idle) on a
local Ray with ``--cpus`` logical CPUs, then: ``--idle`` seconds idle, ``--load`` seconds of
``--clients`` concurrent clients, and ``--after`` seconds idle again. Every 2 s it logs the running
replicas of each deployment (``serve.status()``) and the requests answered. Prints the log as a
table and writes it to ``--out`` (``benchmarks/results/bench_autoscale.md``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import requests
from bench_serve import _photos, publish_synthetic_index
from ray import serve
from report import write_table

from serve.app import running_service
from vsearch.config import load_config
from vsearch.runtime.cluster import ray_session

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
WATCHED = ("SearchIngress", "QueryEmbedder", "ShardSearcher0", "ShardSearcher1")


def _replicas() -> dict[str, int]:
    app = serve.status().applications["vsearch"]
    return {name: app.deployments[name].replica_states.get("RUNNING", 0) for name in WATCHED}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--max-replicas", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=6, help="logical CPUs of the local Ray")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--idle", type=float, default=6.0)
    parser.add_argument("--load", type=float, default=40.0)
    parser.add_argument("--after", type=float, default=40.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_autoscale.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(REPO / "configs" / "demo.yaml", [
            f"storage={tmp}", "model.arch=cnn_small", "serve.rate_limit_per_s=0",
            "serve.reload_interval_s=0", f"ray.num_cpus={args.cpus}",
            f"serve.max_replicas={args.max_replicas}", "serve.upscale_delay_s=2",
            "serve.downscale_delay_s=10",
        ])  # fmt: skip
        publish_synthetic_index(cfg, args.n)
        photos = _photos(16)
        log: list[tuple[float, str, dict[str, int], int]] = []
        answered = [0]
        stop = threading.Event()
        with ray_session(cfg.ray, cfg.serve), running_service(cfg, quiet=True) as url:

            def client(i: int) -> None:
                session = requests.Session()
                while not stop.is_set():
                    resp = session.post(f"{url}/search", data=photos[i % len(photos)], timeout=120)
                    if resp.status_code == 200:
                        answered[0] += 1

            began = time.monotonic()

            def sample(phase: str, seconds: float) -> None:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    log.append((time.monotonic() - began, phase, _replicas(), answered[0]))
                    print(log[-1], flush=True)
                    time.sleep(2.0)

            sample("idle", args.idle)
            threads = [threading.Thread(target=client, args=(i,), daemon=True)
                       for i in range(args.clients)]  # fmt: skip
            for t in threads:
                t.start()
            sample(f"load ({args.clients} clients)", args.load)
            stop.set()
            for t in threads:
                t.join(timeout=120)
            sample("idle", args.after)
    peak = {name: max(r[name] for _, _, r, _ in log) for name in WATCHED}
    last = log[-1][2]
    lines = [
        "# Replica autoscaling on local Ray\n",
        f"serve.max_replicas {args.max_replicas} (upscale after 2 s, downscale after 10 s), "
        f"{args.cpus} logical CPUs on a 2-core machine, index of {args.n} vectors, "
        f"{args.clients} clients for {args.load:.0f} s.\n",
        "| t s | phase | " + " | ".join(WATCHED) + " | answered |",
        "|---:|---|" + "---:|" * (len(WATCHED) + 1),
    ]
    for t, phase, reps, done in log:
        lines.append(f"| {t:.0f} | {phase} | " + " | ".join(str(reps[n]) for n in WATCHED)
                     + f" | {done} |")  # fmt: skip
    lines.append(
        "\nPeak replicas: " + ", ".join(f"{n} {peak[n]}" for n in WATCHED)
        + "; at the end: " + ", ".join(f"{n} {last[n]}" for n in WATCHED) + "."
    )  # fmt: skip
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
