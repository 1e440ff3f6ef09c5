"""Benchmark: the dedup job's batch kNN self-join (``vsearch.dedup.neighbours``) against a
brute-force FAISS flat self-join on the same vectors: candidate pairs/s, peak memory, recall.

Vectors are synthetic, L2-normalised float32 (``--dim``, default 384: the text channel's MiniLM
width): rows scattered around product centres, themselves around topic centres (products of
about 10 rows, fewer than k + 1, so a row's top k spill into its topic, where an approximate index
can miss), and ``--dup-frac`` of them replaced by a copy of another row plus a little noise (the
near-duplicates the job looks for). Recall depends on this data; see ``generate``. They are generated
once, in chunks, into a ``.npy`` file in a temporary folder, and every measurement runs in a fresh
spawned process that loads that file, so each system's peak memory is its own.

Systems, per ``n``:

* ``vsearch``: ``vector_neighbours`` over all rows, one category and one source, so one
  ``ShardIndex`` (FAISS flat up to ``--exact-below`` vectors, IVF-Flat above, ``--nprobe`` lists
  probed). The whole self-join is run: build the index, search every row, merge.
* ``faiss flat (brute force)``: ``IndexFlatIP`` over all rows, searched for ``k + 1`` with the
  query itself removed. A full self-join at 1M x 1M is hours on one thread, so it searches a
  random sample of ``--brute-queries`` rows against the full base; its pairs/s is a rate, and the
  time of its full self-join is extrapolated from it (build + search time x n / sample). The same
  sample's exact top-k is the ground truth of the vsearch join's recall@k.

Peak memory is the process's high-water RSS (``VmHWM`` of ``/proc/self/status``; a spawned child's
``ru_maxrss`` would inherit its parent's peak). "Overhead" is the peak minus the RSS just after
the vectors were loaded: what the join costs over the vectors themselves. One thread throughout
(``OMP_NUM_THREADS=1``, ``faiss.omp_set_num_threads(1)``). Prints a Markdown table and writes it to
``benchmarks/results/bench_dedup.md``, with one JSON row per (n, system) beside it. Usage:

    OMP_NUM_THREADS=1 python benchmarks/bench_dedup.py                  # n = 100k and 1M
    OMP_NUM_THREADS=1 python benchmarks/bench_dedup.py --quick --out /tmp/bench_dedup.md
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import faiss
import numpy as np

import vsearch.dedup.neighbours as neighbours_module
from vsearch.config import DedupConfig
from vsearch.eval.metrics import ann_recall

OUT = Path(__file__).resolve().parent / "results" / "bench_dedup.md"
VSEARCH = "vsearch"
BRUTE = "faiss flat (brute force)"
CHUNK = 65_536
MIB = 2**20


# --- vectors -----------------------------------------------------------------------------------


def generate(
    path: str,
    n: int,
    dim: int,
    topic_size: int,
    product_size: int,
    product_spread: float,
    spread: float,
    dup_frac: float,
    dup_noise: float,
    seed: int,
) -> dict[str, Any]:
    """Write ``n x dim`` clustered, L2-normalised float32 vectors to the ``.npy`` file ``path``,
    in chunks; ``dup_frac`` of the rows become a noisy copy of another (non-copied) row.

    Two levels, like a catalogue: topic centres ``N(0, 1)`` (one per ``topic_size`` rows), product
    centres = a topic's + ``N(0, product_spread^2)`` (one per ``product_size`` rows), rows = a
    product's + ``N(0, spread^2)``, each coordinate. Deterministic in ``seed`` (each chunk has its
    own generator). Runs in a worker process, so the parent never holds the vectors. Returns the
    injected pairs (copy row, original row).
    """
    rng = np.random.default_rng([seed, 0])
    topics = rng.standard_normal((max(1, n // topic_size), dim), dtype=np.float32)
    products = np.empty((max(1, n // product_size), dim), np.float32)
    for i, start in enumerate(range(0, len(products), CHUNK)):
        crng = np.random.default_rng([seed, 1, i])
        part = products[start : start + CHUNK]
        part[:] = topics[crng.integers(0, len(topics), len(part))]
        part += product_spread * crng.standard_normal(part.shape, dtype=np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for i, start in enumerate(range(0, n, CHUNK)):
        stop = min(n, start + CHUNK)
        crng = np.random.default_rng([seed, 2, i])
        x = products[crng.integers(0, len(products), stop - start)]
        x += spread * crng.standard_normal(x.shape, dtype=np.float32)
        out[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    del products
    n_dup = round(dup_frac * n)
    perm = rng.permutation(n)
    copies, originals = np.sort(perm[:n_dup]), perm[n_dup : 2 * n_dup]
    if n_dup and len(originals) < n_dup:  # dup_frac > 0.5: originals repeat
        originals = rng.choice(perm[n_dup:], n_dup)
    for i, start in enumerate(range(0, n_dup, CHUNK)):
        rows, src = copies[start : start + CHUNK], originals[start : start + CHUNK]
        crng = np.random.default_rng([seed, 3, i])
        x = np.array(out[src])
        x += (dup_noise / np.sqrt(dim)) * crng.standard_normal(x.shape, dtype=np.float32)
        out[rows] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()
    del out
    return {"copies": copies.astype(np.int64), "originals": originals.astype(np.int64)}


# --- measurement (one fresh process each) --------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mib() -> float:
    kib = _status_kib("VmRSS")
    return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def peak_rss_mib() -> float:
    kib = _status_kib("VmHWM")
    return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def _pairs_found(
    query: np.ndarray, neighbour: np.ndarray, copies: np.ndarray, originals: np.ndarray, n: int
) -> int:
    """How many injected (copy, original) pairs appear, either way round, among the candidates."""
    keys = np.unique(np.minimum(query, neighbour) * n + np.maximum(query, neighbour))
    want = np.minimum(copies, originals) * n + np.maximum(copies, originals)
    return int(np.isin(want, keys).sum())


def measure(task: dict[str, Any]) -> dict[str, Any]:
    """One (n, system) measurement, in a fresh process: load the vectors, join, time, measure."""
    faiss.omp_set_num_threads(1)
    k, sample = task["k"], task["sample"]
    copies, originals = task["copies"], task["originals"]
    vectors = np.load(task["path"])
    n = len(vectors)
    loaded = rss_mib()
    out: dict[str, Any] = {"vector_mib": vectors.nbytes / MIB, "loaded_rss_mib": loaded}

    if task["system"] == VSEARCH:
        builds: list[tuple[float, str]] = []

        class TimedShardIndex(neighbours_module.ShardIndex):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                began = time.perf_counter()
                super().__init__(*args, **kwargs)
                builds.append((time.perf_counter() - began, self.kind))

        neighbours_module.ShardIndex = TimedShardIndex  # vector_neighbours looks it up here
        began = time.perf_counter()
        found = neighbours_module.vector_neighbours(
            vectors,
            np.zeros(n, np.int8),
            np.zeros(n, np.int8),
            k,
            exact_below=task["exact_below"],
            nprobe=task["nprobe"],
        )
        total_s = time.perf_counter() - began
        out["peak_rss_mib"] = peak_rss_mib()
        build_s = sum(b for b, _ in builds)
        # Rows of the sampled queries, (len(sample), k), -1 where fewer than k candidates.
        at = np.searchsorted(sample, found.query)
        hit = sample[np.minimum(at, len(sample) - 1)] == found.query
        ids = np.full((len(sample), k), -1, np.int64)
        ids[at[hit], found.rank[hit]] = found.neighbour[hit]
        out.update(
            index=", ".join(kind for _, kind in builds),
            queries=n,
            pairs=len(found),
            build_s=build_s,
            join_s=total_s - build_s,
            full_s=total_s,
            extrapolated=False,
            sample_ids=ids,
            dups_found=_pairs_found(found.query, found.neighbour, copies, originals, n),
            dups=len(copies),
        )
        return out

    index = faiss.IndexFlatIP(vectors.shape[1])
    began = time.perf_counter()
    index.add(vectors)
    build_s = time.perf_counter() - began
    began = time.perf_counter()
    _, raw = index.search(vectors[sample], k + 1)
    not_self = raw != sample[:, None]
    keep = np.argsort(~not_self, axis=1, kind="stable")[:, :k]  # first k that are not the query
    ids = np.take_along_axis(raw, keep, axis=1)
    join_s = time.perf_counter() - began
    out["peak_rss_mib"] = peak_rss_mib()
    in_sample = np.isin(copies, sample) | np.isin(originals, sample)
    query = np.repeat(sample, k)
    out.update(
        index="IndexFlatIP",
        queries=len(sample),
        pairs=int((ids >= 0).sum()),
        build_s=build_s,
        join_s=join_s,
        full_s=build_s + join_s * n / len(sample),
        extrapolated=len(sample) < n,
        sample_ids=ids,
        # Pairs with at least one side among the sampled queries, found from that side.
        dups_found=_pairs_found(
            query, ids.reshape(-1), copies[in_sample], originals[in_sample], n
        ),  # a pair queried from one side only can be missed where the other side would find it
        dups=int(in_sample.sum()),
    )
    return out


def in_fresh_process(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in a new spawned process (its own memory high-water mark), then gone."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


# --- report ------------------------------------------------------------------------------------


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> list[str]:
    align = ["---" if h == "system" else "---:" for h in header]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def main() -> None:
    defaults = DedupConfig()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000], help="vectors")
    ap.add_argument("--quick", action="store_true", help="smoke run: n = 20,000")
    ap.add_argument("--dim", type=int, default=384, help="384: the text channel's MiniLM width")
    ap.add_argument("--k", type=int, default=defaults.k)
    ap.add_argument("--nprobe", type=int, default=defaults.nprobe)
    ap.add_argument("--exact-below", type=int, default=defaults.exact_below)
    ap.add_argument(
        "--brute-queries", type=int, default=20_000, help="brute-force query sample (all if >= n)"
    )
    ap.add_argument("--topic-size", type=int, default=5000, help="rows per topic, on average")
    ap.add_argument("--product-size", type=int, default=10, help="rows per product, on average")
    ap.add_argument(
        "--product-spread", type=float, default=0.6, help="product centre noise std, per dim"
    )
    ap.add_argument("--spread", type=float, default=1.0, help="row noise std around its product")
    ap.add_argument("--dup-frac", type=float, default=0.03, help="rows that are a noisy copy")
    ap.add_argument("--dup-noise", type=float, default=0.1, help="noise norm of a copy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", type=Path, default=None, help="folder for the vectors' .npy file")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    sizes = [20_000] if args.quick else args.n
    cfg_note = (
        f"k={args.k}, exact_below={args.exact_below}, nprobe={args.nprobe}; "
        f"data: topics of ~{args.topic_size} rows (N(0, 1) centres), products of "
        f"~{args.product_size} rows (topic + N(0, {args.product_spread}^2)), rows = product + "
        f"N(0, {args.spread}^2) a coordinate, {args.dup_frac:.0%} of rows a copy of another plus "
        f"noise of norm {args.dup_noise}, seed {args.seed}"
    )
    print(f"dedup self-join benchmark: n = {sizes}, dim {args.dim}; {cfg_note}", flush=True)

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-dedup-", dir=args.tmp) as tmp:
        for n in sizes:
            path = str(Path(tmp) / f"vectors_{n}x{args.dim}.npy")
            began = time.perf_counter()
            dups = in_fresh_process(
                generate,
                path,
                n,
                args.dim,
                args.topic_size,
                args.product_size,
                args.product_spread,
                args.spread,
                args.dup_frac,
                args.dup_noise,
                args.seed,
            )
            print(f"n={n}: vectors generated in {time.perf_counter() - began:.1f} s", flush=True)
            m = min(n, args.brute_queries)
            sample = np.sort(np.random.default_rng([args.seed, 4]).choice(n, m, replace=False))
            task = {
                "path": path,
                "k": args.k,
                "sample": sample,
                "nprobe": args.nprobe,
                "exact_below": args.exact_below,
                **dups,
            }
            runs = {}
            for system in (BRUTE, VSEARCH):
                print(f"n={n}: {system} ...", flush=True)
                runs[system] = in_fresh_process(measure, {**task, "system": system})
                r = runs[system]
                print(
                    f"  {r['index']}: build {r['build_s']:.1f} s, join {r['join_s']:.1f} s "
                    f"({r['queries']} queries), peak RSS {r['peak_rss_mib']:.0f} MiB",
                    flush=True,
                )
            exact = runs[BRUTE]["sample_ids"]
            brute_rate = n * args.k / runs[BRUTE]["full_s"]
            for system, r in runs.items():
                rate = r["pairs"] / (r["build_s"] + r["join_s"])
                if system == BRUTE:
                    rate = brute_rate  # of the full self-join (= the sample's, build amortised)
                results.append(
                    {
                        "n": n,
                        "dim": args.dim,
                        "system": system,
                        "index": r["index"],
                        "k": args.k,
                        "queries": r["queries"],
                        "pairs": r["pairs"],
                        "build_s": r["build_s"],
                        "join_s": r["join_s"],
                        "full_join_s": r["full_s"],
                        "full_join_extrapolated": r["extrapolated"],
                        "pairs_per_s": rate,
                        "ratio_to_brute": rate / brute_rate,
                        "recall_at_k": ann_recall(r["sample_ids"], exact, args.k),
                        "recall_queries": len(sample),
                        "dups_found": r["dups_found"],
                        "dups": r["dups"],
                        "vector_mib": r["vector_mib"],
                        "loaded_rss_mib": r["loaded_rss_mib"],
                        "peak_rss_mib": r["peak_rss_mib"],
                        "overhead_mib": r["peak_rss_mib"] - r["loaded_rss_mib"],
                    }
                )

    vector_mib = {r["n"]: r["vector_mib"] for r in results}
    rows = []
    for r in results:
        brute = r["system"] == BRUTE
        rows.append(
            (
                f"{r['n']:,}",
                str(r["dim"]),
                f"{r['system']}: {r['index']}" + (" (baseline)" if brute else ""),
                f"{r['queries']:,}",
                f"{r['build_s']:.1f}",
                f"{r['join_s']:.1f}",
                ("~" if r["full_join_extrapolated"] else "") + f"{r['full_join_s']:,.0f}",
                f"{r['pairs_per_s']:,.0f}",
                f"{r['ratio_to_brute']:.2f}",
                "(exact)" if brute else f"{r['recall_at_k']:.4f}",
                f"{r['dups_found'] / max(1, r['dups']):.4f}",
                f"{r['peak_rss_mib']:,.0f}",
                f"{r['overhead_mib']:,.0f}",
            )
        )
    header = (
        "n",
        "dim",
        "system",
        "queries",
        "build s",
        "join s",
        "full self-join s",
        "pairs / s",
        "ratio to brute force",
        f"recall@{args.k} vs exact",
        "injected dups found",
        "peak RSS MiB",
        "overhead MiB",
    )
    text = "\n".join(
        [
            "# Dedup self-join benchmark\n",
            f"The batch kNN self-join of `vsearch.dedup.neighbours` (`vector_neighbours`, every "
            f"row a query, one shard) against a brute-force FAISS `IndexFlatIP` self-join on the "
            f"same L2-normalised float32 vectors, {args.dim} d; {cfg_note}. One thread "
            f"(OMP_NUM_THREADS=1, faiss.omp_set_num_threads(1)) on a {os.cpu_count()}-core "
            "machine; each row measured in a fresh process. Run: `python benchmarks/bench_dedup.py"
            f"{''.join(' ' + a for a in sys.argv[1:])}`.\n",
            "Notes:\n",
            "- pairs = candidate (query, neighbour) pairs produced, k a query, self excluded; "
            "pairs / s = pairs over build + join seconds.",
            f"- Brute force searches a random sample of min(n, {args.brute_queries:,}) queries "
            "against the full base (k + 1, the query itself dropped); its pairs / s is that "
            "sample's rate with the (full-base) build amortised over a full self-join, and its "
            "full self-join seconds are extrapolated (`~`: build + join x n / sample), never run. "
            "Ratio: pairs / s over brute force's at the same n (above 1 is faster).",
            f"- recall@{args.k}: the vsearch join's candidates of the sampled queries against their "
            "exact top k (the brute-force results). Injected dups found: share of the (copy, "
            "original) pairs among the candidates (brute force: pairs with a sampled side, "
            "found from that side).",
            "- Peak RSS: the process's high-water resident memory (VmHWM). Overhead: peak minus "
            "the RSS just after the vectors were loaded (n x dim x 4 bytes = "
            + ", ".join(f"{mib:,.0f} MiB at n={n:,}" for n, mib in vector_mib.items())
            + ").\n",
            "\n".join(table(rows, header)) + "\n",
        ]
    )
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    json_out = args.out.with_suffix(".json")
    json_out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out} and {json_out}")


if __name__ == "__main__":
    main()
