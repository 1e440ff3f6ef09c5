"""Benchmark: the service's replicas follow the load on Ray's simulated cluster, and worker nodes
follow the replicas (``serve.max_replicas`` + node autoscaling).

Publishes the synthetic index of ``bench_serve`` (``--n`` vectors, untrained ``cnn_small`` query
model) on a temporary storage, starts ``vsearch.runtime.simcluster.simulated_cluster`` with a head
of ``--head-cpus`` CPUs and one worker node type, ``cpu_worker`` {"CPU": ``--node-cpus``} up to
``--max-nodes`` (none at start; removed after ``--idle-timeout-minutes`` idle), connects a driver
and serves the search graph on it (one HTTP proxy, on the head, at 127.0.0.1 and a free port)
with every deployment allowed 1..``--max-replicas`` replicas (upscale after
``--upscale-delay`` s of load, downscale after ``--downscale-delay`` s idle). The deployments keep
their shipped CPUs (ingress 0.1, embedder 0.5, each searcher 0.25, re-ranker 0.1: 1.2 CPUs at one
replica each, 3.6 at three), so the first replicas need two worker nodes of 1 CPU and the extra
ones more; ``--replica-cpus NAME=CPUS`` changes one deployment's for this run only.

Phases: deploy (until the app is RUNNING), ``--idle`` s idle, ``--load`` s of ``--clients``
concurrent clients posting photos to /search, then idle until every deployment is back to one
replica and the worker nodes back to their number before the load (at most ``--settle`` s), plus
``--after`` s. Every ``--interval`` s it logs the running replicas of each deployment
(``serve.status()``), replicas starting (waiting for a node among them), the alive worker nodes
of each type, the autoscaler's last report and the requests answered. Prints the log as a table
with a summary, writes it to ``--out`` (``benchmarks/results/bench_serve_nodes.md``) and a plot
next to it (``.png``). Serve, the driver and the cluster are stopped at the end; the summary says
how many processes of the cluster were left (0).

Usage: ``python benchmarks/bench_serve_nodes.py [--clients 64] [--load 60]``.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import requests
from bench_serve import _photos, publish_synthetic_index
from ray import serve
from ray.serve import Application
from report import write_table

from serve.app import AppArgs, build_app
from vsearch.config import load_config
from vsearch.runtime.cluster import free_port
from vsearch.runtime.simcluster import (
    NodeCountSampler,
    Sample,
    autoscaler_status,
    connect,
    simulated_cluster,
)

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
APP = "vsearch"
HOST = "127.0.0.1"
#: Replica states of a replica asked for and not serving yet (waiting for a node, or starting).
STARTING = ("STARTING", "UPDATING", "RECOVERING")
#: Short column names for the table.
SHORT = {
    "SearchIngress": "ingress",
    "QueryEmbedder": "embedder",
    "ResultReranker": "reranker",
}


def _short(name: str) -> str:
    return SHORT.get(name, name.replace("ShardSearcher", "searcher"))


def _with_replica_cpus(app: Application, cpus: dict[str, float]) -> Application:
    """The bound graph ``app`` with the ``num_cpus`` of the deployments named in ``cpus``
    changed (for this benchmark only; the shipped defaults stay as they are)."""
    if not cpus:
        return app

    def rebind(value: Any) -> Any:
        if isinstance(value, Application):
            dep = value._bound_deployment
            args = [rebind(a) for a in dep.init_args]
            kwargs = {k: rebind(v) for k, v in dep.init_kwargs.items()}
            if dep.name in cpus:
                actor = {**(dep.ray_actor_options or {}), "num_cpus": cpus[dep.name]}
                dep = dep.options(ray_actor_options=actor)
            return dep.bind(*args, **kwargs)
        if isinstance(value, list | tuple):
            return type(value)(rebind(v) for v in value)
        return value

    return rebind(app)


def _cpus_of(app: Application) -> dict[str, float]:
    """Deployment name -> CPUs of one replica, over the bound graph ``app``."""
    found: dict[str, float] = {}

    def walk(value: Any) -> None:
        if isinstance(value, Application):
            dep = value._bound_deployment
            found[dep.name] = float((dep.ray_actor_options or {}).get("num_cpus", 1))
            for v in [*dep.init_args, *dep.init_kwargs.values()]:
                walk(v)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v)

    walk(app)
    return found


class _Probe:
    """What the sampler records besides the node counts: the autoscaler's report, the replicas of
    each deployment (once Serve runs) and the requests answered so far."""

    def __init__(self, deployments: tuple[str, ...]) -> None:
        self.deployments = deployments
        self.serving = False
        self.answered = 0
        self.failed = 0
        self.lock = threading.Lock()

    def count(self, ok: bool) -> None:
        with self.lock:
            if ok:
                self.answered += 1
            else:
                self.failed += 1

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(autoscaler_status())
        running = dict.fromkeys(self.deployments, 0)
        starting, app_status = 0, "-"
        if self.serving:
            try:
                app = serve.status().applications.get(APP)
            except Exception:  # the controller busy or gone: an empty reading, not a failure
                app = None
            if app is not None:
                app_status = str(getattr(app.status, "value", app.status))
                for name, dep in app.deployments.items():
                    states = {str(getattr(k, "value", k)): v for k, v in dep.replica_states.items()}
                    if name in running:
                        running[name] = states.get("RUNNING", 0)
                    starting += sum(states.get(s, 0) for s in STARTING)
        with self.lock:
            answered, failed = self.answered, self.failed
        return {**out, "running": running, "starting": starting, "app": app_status,
                "answered": answered, "failed": failed}  # fmt: skip


def _replicas(s: Sample) -> int:
    return sum(s.extra.get("running", {}).values())


def _phase(t: float, marks: dict[str, float]) -> str:
    phase = "deploy"
    for name in ("idle", "load", "after"):
        if name in marks and t >= marks[name]:
            phase = name
    return phase


def _plot(samples: list[Sample], deployments: tuple[str, ...], types: tuple[str, ...],
          marks: dict[str, float], title: str, out: Path) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (reps, nodes, qps) = plt.subplots(3, 1, figsize=(8, 7), sharex=True,
                                           height_ratios=[2, 1.5, 1])  # fmt: skip
    ts = [s.t for s in samples]
    for name in deployments:
        reps.step(ts, [s.extra["running"][name] for s in samples], where="post",
                  label=_short(name))  # fmt: skip
    reps.step(ts, [s.extra["starting"] for s in samples], where="post", color="grey",
              linestyle="--", label="starting / waiting for a node")  # fmt: skip
    reps.set(ylabel="running replicas", title=title)
    top = max(max(*s.extra["running"].values(), s.extra["starting"]) for s in samples)
    reps.set_yticks(range(0, top + 2))
    for name in types:
        nodes.step(ts, [s.counts[name] for s in samples], where="post", label=name)
    nodes.step(ts, [s.extra.get("launching", 0) for s in samples], where="post",
               color="tab:green", linestyle="--", label="nodes launching")  # fmt: skip
    nodes.set(ylabel="worker nodes")
    nodes.set_yticks(range(0, max(s.workers for s in samples) + 2))
    rates = [0.0] + [
        (b.extra["answered"] - a.extra["answered"]) / max(b.t - a.t, 1e-9)
        for a, b in itertools.pairwise(samples)
    ]
    qps.step(ts, rates, where="pre", color="black", label="answered / s")
    qps.set(xlabel="seconds", ylabel="requests / s")
    end = marks.get("after", ts[-1])
    for ax in (reps, nodes, qps):
        if "load" in marks:
            ax.axvspan(marks["load"], end, color="tab:blue", alpha=0.08,
                       label="load" if ax is reps else None)  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"plot written to {out}")


def _answers(url: str, photo: bytes) -> bool:
    try:
        return requests.post(f"{url}/search", data=photo, timeout=60).status_code == 200
    except requests.RequestException:
        return False


def _first(samples: list[Sample], since: float, predicate) -> Sample | None:
    return next((s for s in samples if s.t >= since and predicate(s)), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="catalogue vectors of the index")
    parser.add_argument("--head-cpus", type=int, default=0)
    parser.add_argument("--node-cpus", type=int, default=1, help="CPUs of a cpu_worker node")
    parser.add_argument("--max-nodes", type=int, default=4, help="max_workers of cpu_worker")
    parser.add_argument("--idle-timeout-minutes", type=float, default=0.1)
    parser.add_argument("--max-replicas", type=int, default=3)
    parser.add_argument("--upscale-delay", type=float, default=2.0)
    parser.add_argument("--downscale-delay", type=float, default=10.0)
    parser.add_argument("--replica-cpus", action="append", default=[], metavar="NAME=CPUS",
                        help="num_cpus of one deployment's replicas, this run only")  # fmt: skip
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--idle", type=float, default=8.0, help="seconds idle before the load")
    parser.add_argument("--load", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--settle", type=float, default=120.0,
                        help="most seconds to wait for replicas and nodes to fall back")  # fmt: skip
    parser.add_argument("--after", type=float, default=4.0, help="seconds logged once back")
    parser.add_argument("--deploy-timeout", type=float, default=180.0)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_serve_nodes.md")
    args = parser.parse_args()
    replica_cpus = {k: float(v) for k, v in (item.split("=", 1) for item in args.replica_cpus)}
    node_types = {"cpu_worker": {"resources": {"CPU": args.node_cpus}, "min_workers": 0,
                                 "max_workers": args.max_nodes}}  # fmt: skip
    types = tuple(node_types)
    quiet = {"log_level": "WARNING", "enable_access_log": False}
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    wall = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(REPO / "configs" / "demo.yaml", [
            f"storage={tmp}/store", "model.arch=cnn_small", "serve.rate_limit_per_s=0",
            "serve.reload_interval_s=0", f"serve.host={HOST}", "serve.min_replicas=1",
            f"serve.max_replicas={args.max_replicas}",
            f"serve.upscale_delay_s={args.upscale_delay}",
            f"serve.downscale_delay_s={args.downscale_delay}",
        ])  # fmt: skip
        publish_synthetic_index(cfg, args.n)
        photos = _photos(16)
        deployments = ("SearchIngress", "QueryEmbedder",
                       *(f"ShardSearcher{i}" for i in range(cfg.serve.searchers)),
                       "ResultReranker")  # fmt: skip
        unknown = set(replica_cpus) - set(deployments)
        if unknown:
            raise SystemExit(f"--replica-cpus: no deployment named {sorted(unknown)}")
        probe = _Probe(deployments)
        stop = threading.Event()
        port = free_port(HOST)
        url = f"http://{HOST}:{port}"
        with (
            simulated_cluster(node_types, head_cpus=args.head_cpus,
                              idle_timeout_minutes=args.idle_timeout_minutes) as cluster,
            connect(cluster, log_to_driver=False),
            NodeCountSampler(node_types, args.interval, extra=probe) as sampler,
        ):  # fmt: skip
            up_s = time.monotonic() - wall
            # One proxy, on the head: every simulated node has the same IP, and a proxy per
            # node would tie worker nodes to the HTTP port.
            serve.start(proxy_location="HeadOnly", http_options={"host": HOST, "port": port},
                        logging_config=quiet)  # fmt: skip
            probe.serving = True
            threads: list[threading.Thread] = []
            try:
                app = _with_replica_cpus(build_app(AppArgs(config=cfg.model_dump())), replica_cpus)
                cpus = _cpus_of(app)
                serve.run_many([serve.RunTarget(app, name=APP, route_prefix="/",
                                                logging_config=quiet)],
                               wait_for_ingress_deployment_creation=False,
                               wait_for_applications_running=False)  # fmt: skip
                ready = sampler.wait_for(lambda s: s.extra.get("app") == "RUNNING",
                                         args.deploy_timeout)  # fmt: skip
                if ready is None:
                    raise SystemExit(f"the app did not start in {args.deploy_timeout:.0f} s:\n"
                                     f"{serve.status()}\n{cluster.log_tail()}")  # fmt: skip
                # The proxy learns the app's routes a moment after it is RUNNING.
                deadline = time.monotonic() + 60
                while not _answers(url, photos[0]):
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{url}/search does not answer")
                    time.sleep(0.5)
                sampler.mark("idle")
                time.sleep(args.idle)

                def client(i: int) -> None:
                    session = requests.Session()
                    j = 0
                    while not stop.is_set():
                        try:
                            resp = session.post(f"{url}/search", data=photos[(i + j) % 16],
                                                timeout=60)  # fmt: skip
                            probe.count(resp.status_code == 200)
                        except requests.RequestException:
                            probe.count(False)
                        j += 1

                threads = [threading.Thread(target=client, args=(i,), daemon=True)
                           for i in range(args.clients)]  # fmt: skip
                load_t = sampler.mark("load")
                print(f"load: {args.clients} clients for {args.load:.0f} s", flush=True)
                for t in threads:
                    t.start()
                time.sleep(args.load)
                stop.set()
                for t in threads:
                    t.join(timeout=70)
                after_t = sampler.mark("after")
                base = [s for s in sampler.samples if s.t < load_t][-1]
                sampler.wait_for(
                    lambda s: (
                        s.extra["running"] == base.extra["running"] and s.workers <= base.workers
                    ),
                    args.settle,
                )
                time.sleep(args.after)
            finally:
                stop.set()
                for t in threads:
                    t.join(timeout=70)
                probe.serving = False
                sampler.mark("shutdown")
                serve.shutdown()
            leaving = time.monotonic()
        stop_s = time.monotonic() - leaving
        left = cluster.processes()
    total_s = time.monotonic() - wall
    marks = sampler.marks
    # The readings up to serve.shutdown (after it, every deployment reads 0 replicas).
    samples = [s for s in sampler.samples if s.t < marks["shutdown"]]
    for s in samples:
        print(f"{s.t:6.1f} {_phase(s.t, marks):6} {s.counts} {s.extra}", flush=True)

    load_t, after_t = marks["load"], marks["after"]
    first_node = _first(samples, load_t, lambda s: s.workers > base.workers)
    first_rep = _first(samples, load_t, lambda s: _replicas(s) > _replicas(base))
    reps_back = _first(samples, after_t,
                       lambda s: s.extra["running"] == base.extra["running"])  # fmt: skip
    nodes_back = _first(samples, after_t, lambda s: s.workers <= base.workers)
    peak_reps = {n: max(s.extra["running"][n] for s in samples) for n in deployments}
    peak_nodes = {n: max(s.counts[n] for s in samples) for n in types}
    during = [s for s in samples if load_t <= s.t <= after_t]
    answered = probe.answered

    def since(s: Sample | None, t0: float) -> str:
        return f"{s.t - t0:.0f} s" if s else "never"

    lines = [
        "# Replica autoscaling adds worker nodes on Ray's simulated cluster\n",
        f"Fake-multinode provider on a 2-core machine: head with {args.head_cpus} CPUs (the "
        f"HTTP proxy and the Serve controller, 0 CPUs each), worker type `cpu_worker` "
        f"{{CPU: {args.node_cpus}}} (max {args.max_nodes}), none at start; autoscaler update "
        f"every 1 s, idle timeout {args.idle_timeout_minutes * 60:.0f} s. The search graph "
        f"(index of {args.n} synthetic vectors, untrained cnn_small query model) with "
        f"`serve.max_replicas` {args.max_replicas} (upscale after {args.upscale_delay:g} s, "
        f"downscale after {args.downscale_delay:g} s; Serve's default 30 s look-back window); "
        "CPUs per replica: " + ", ".join(f"{_short(n)} {cpus[n]:g}" for n in deployments)
        + f" ({sum(cpus.values()):g} CPUs at one replica each, "
        f"{args.max_replicas * sum(cpus.values()):g} at {args.max_replicas}). Phases: deploy, "
        f"{args.idle:g} s idle, {args.load:g} s of {args.clients} clients posting photos to "
        "/search, then idle. Sampled every "
        f"{args.interval:g} s from the driver: running replicas (`serve.status()`), replicas "
        "starting (among them those waiting for a node), alive worker nodes (`ray.nodes()`), "
        "the autoscaler's last report, requests answered.\n",
        "| t s | phase | " + " | ".join(_short(n) for n in deployments)
        + " | starting | " + " | ".join(types) + " | launching | bundles waiting | answered |",
        "|---:|---|" + "---:|" * (len(deployments) + len(types) + 4),
    ]  # fmt: skip
    for s in samples:
        lines.append(
            f"| {s.t:.1f} | {_phase(s.t, marks)} | "
            + " | ".join(str(s.extra["running"][n]) for n in deployments)
            + f" | {s.extra['starting']} | "
            + " | ".join(str(s.counts[n]) for n in types)
            + f" | {s.extra.get('launching', 0)} | {s.extra.get('demand', 0)}"
            + f" | {s.extra['answered']} |"
        )
    summary = [
        f"cluster up in {up_s:.0f} s, app running {ready.t:.0f} s after start on "
        f"{ready.workers} worker node(s)",
        f"before the load {_replicas(base)} replicas on {base.workers} worker node(s)",
        f"first extra replica {since(first_rep, load_t)} and first extra node "
        f"{since(first_node, load_t)} after the load started",
        "peak replicas " + ", ".join(f"{_short(n)} {peak_reps[n]}" for n in deployments)
        + f" ({max(_replicas(s) for s in samples)} in all), peak worker nodes "
        + ", ".join(f"{n} {peak_nodes[n]}" for n in types),
        f"{answered} requests answered, {probe.failed} failed "
        f"({answered / max(after_t - load_t, 1e-9):.0f}/s over the load)",
        f"back to {_replicas(base)} replicas {since(reps_back, after_t)} and to "
        f"{base.workers} worker node(s) {since(nodes_back, after_t)} after the load stopped",
        f"cluster stopped in {stop_s:.0f} s, {len(left)} process(es) left; "
        f"whole run {total_s:.0f} s",
    ]  # fmt: skip
    lines.append("\nSummary: " + "; ".join(summary) + ".")
    if during and max(s.extra["starting"] for s in during):
        lines.append(
            "\n`starting` counts replicas Serve asked for and not running yet: under load, the "
            "ones that fit on no alive node wait (the autoscaler's `bundles waiting`) until a "
            "worker node comes up."
        )
    write_table(lines, args.out)
    _plot(samples, deployments, types, marks,
          f"vsearch service on a simulated cluster ({args.clients} clients)",
          args.out.with_suffix(".png"))  # fmt: skip
    if left:
        raise SystemExit(f"processes of the cluster left: {left}")


if __name__ == "__main__":
    main()
