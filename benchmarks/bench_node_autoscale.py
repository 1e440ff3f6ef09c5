"""Benchmark: worker nodes follow a job on Ray's simulated cluster launcher (node autoscaling).

Starts ``vsearch.runtime.simcluster.simulated_cluster``: a head with ``--head-cpus`` CPUs (0: all
work needs a worker node) and the worker node types of ``cluster.yaml`` with small simulated
resources (``cpu_worker`` {"CPU": 1} up to 2, ``gpu_worker`` {"CPU": 1, "GPU": 1} up to 1, none
at start), the autoscaler updating every second and removing nodes idle for
``--idle-timeout-minutes``. Then: ``--idle`` seconds idle; the mine job (``vsearch mine`` with
``ray.address`` set to the cluster, a driver of its own) over the synthetic click log of
``--categories`` x ``--products`` products (5 sessions each), with ``--actors`` mining actors of 1
CPU; and, after it, until no worker node is left plus ``--after`` seconds. Every ``--interval``
seconds it logs the alive worker nodes of each type and the autoscaler's last report (nodes
launching, resource bundles waiting). Prints the timeline as a table with a summary and writes it
to ``--out`` (``benchmarks/results/bench_node_autoscale.md``) and a plot next to it (``.png``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from report import write_table

from jobs.common import ensure_dataset
from vsearch.config import load_config
from vsearch.runtime.simcluster import (
    DEFAULT_NODE_TYPES,
    NodeCountSampler,
    Sample,
    autoscaler_status,
    connect,
    simulated_cluster,
)

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
TYPES = tuple(DEFAULT_NODE_TYPES)


def _phase(t: float, started: float, ended: float) -> str:
    return "idle" if t < started else "job" if t <= ended else "after"


def _plot(samples: list[Sample], started: float, ended: float, title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (nodes, demand) = plt.subplots(2, 1, figsize=(8, 5), sharex=True, height_ratios=[2, 1])
    ts = [s.t for s in samples]
    for name in TYPES:
        nodes.step(ts, [s.counts[name] for s in samples], where="post", label=name)
    nodes.step(ts, [s.workers for s in samples], where="post", color="black", linestyle=":",
               label="all workers")  # fmt: skip
    nodes.set(ylabel="alive worker nodes", title=title)
    nodes.set_yticks(range(0, max(s.workers for s in samples) + 2))
    demand.step(ts, [s.extra.get("demand", 0) for s in samples], where="post", color="tab:red",
                label="bundles waiting")  # fmt: skip
    demand.step(ts, [s.extra.get("launching", 0) for s in samples], where="post",
                color="tab:green", linestyle="--", label="nodes launching")  # fmt: skip
    demand.set(xlabel="seconds", ylabel="autoscaler")
    for ax in (nodes, demand):
        ax.axvspan(
            started, ended, color="tab:blue", alpha=0.08, label="job" if ax is nodes else None
        )
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"plot written to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--head-cpus", type=int, default=0)
    parser.add_argument("--idle-timeout-minutes", type=float, default=0.1)
    parser.add_argument("--categories", type=int, default=4)
    parser.add_argument("--products", type=int, default=10, help="products per category")
    parser.add_argument("--actors", type=int, default=2, help="mining actors (1 CPU each)")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds idle before the job")
    parser.add_argument("--after", type=float, default=4.0, help="seconds logged after scale-in")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_node_autoscale.md")
    args = parser.parse_args()
    overrides = [
        f"data.synthetic.categories={args.categories}",
        f"data.synthetic.products_per_category={args.products}",
        "data.synthetic.views_per_product=6",
        "data.synthetic.image_size=32",
        f"mine.actors={args.actors}",
        "mine.cpus_per_actor=1",
        "mine.partitions=4",
    ]
    config_file = REPO / "configs" / "tiny.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        storage = f"{tmp}/store"
        cfg = load_config(config_file, [f"storage={storage}", *overrides])
        ensure_dataset(cfg)
        sessions = args.categories * args.products * 5
        argv = [sys.executable, "-m", "jobs.cli", "mine", "--config", str(config_file)]
        for item in [f"storage={storage}", *overrides]:
            argv += ["--set", item]
        wall = time.monotonic()
        with (
            simulated_cluster(head_cpus=args.head_cpus,
                              idle_timeout_minutes=args.idle_timeout_minutes) as cluster,
            connect(cluster, log_to_driver=False),
            NodeCountSampler(cluster.node_types, args.interval, extra=autoscaler_status) as sampler,
        ):  # fmt: skip
            up_s = time.monotonic() - wall
            time.sleep(args.idle)
            started = sampler.mark("job started")
            log = Path(tmp) / "mine.log"
            with open(log, "w") as out:
                job = subprocess.run(
                    [*argv, "--set", f"ray.address={cluster.address}"],
                    cwd=REPO,
                    env={**os.environ, **cluster.driver_env()},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=600,
                    check=False,
                )
            ended = sampler.mark("job ended")
            if job.returncode != 0:
                raise SystemExit(f"the mine job failed:\n{log.read_text()[-4000:]}")
            back = sampler.wait_for(lambda s: s.workers == 0, timeout_s=300)
            time.sleep(args.after)
            leaving = time.monotonic()
        stop_s = time.monotonic() - leaving  # the driver disconnects, the cluster stops
        left = cluster.processes()
    samples = sampler.samples
    first = next((s for s in samples if s.t >= started and s.workers > 0), None)
    peak = sampler.peak()
    lines = [
        "# Node autoscaling on Ray's simulated cluster launcher\n",
        f"Fake-multinode provider on a 2-core machine: head with {args.head_cpus} CPUs, "
        "worker types `cpu_worker` {CPU: 1} (max 2) and `gpu_worker` {CPU: 1, GPU: 1} (max 1), "
        f"none at start; autoscaler update every 1 s, idle timeout "
        f"{args.idle_timeout_minutes * 60:.0f} s. Job: `vsearch mine` (Ray Data sort shuffle + "
        f"{args.actors} mining actors of 1 CPU) over {sessions} click sessions, submitted as a "
        f"driver of its own. Sampled every {args.interval:g} s from a second driver "
        "(`ray.nodes()`, and the autoscaler's last report for nodes launching and resource "
        "bundles waiting).\n",
        "| t s | phase | cpu_worker | gpu_worker | launching | bundles waiting |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for s in samples:
        lines.append(
            f"| {s.t:.0f} | {_phase(s.t, started, ended)} | "
            + " | ".join(str(s.counts[n]) for n in TYPES)
            + f" | {s.extra.get('launching', 0)} | {s.extra.get('demand', 0)} |"
        )
    summary = [
        f"cluster up in {up_s:.1f} s (head alone)",
        "first worker node alive "
        + (f"{first.t - started:.1f} s after the job started" if first else "never"),
        f"job {ended - started:.1f} s (exit code {job.returncode})",
        "peak " + ", ".join(f"{n} {peak[n]}" for n in TYPES),
        "back to 0 worker nodes "
        + (f"{back.t - ended:.1f} s after the job ended" if back else "not within 300 s"),
        f"cluster stopped in {stop_s:.1f} s, {len(left)} process(es) left",
    ]
    lines.append("\nSummary: " + "; ".join(summary) + ".")
    if peak["gpu_worker"]:
        lines.append(
            "\nThe `gpu_worker` came up for CPU bundles: the autoscaler prefers nodes without a "
            "GPU for CPU-only work, but once `cpu_worker` is at its max_workers the GPU type's "
            "CPU is the only room left."
        )
    write_table(lines, args.out)
    _plot(samples, started, ended, f"vsearch mine on a simulated cluster ({sessions} sessions)",
          args.out.with_suffix(".png"))  # fmt: skip


if __name__ == "__main__":
    main()
