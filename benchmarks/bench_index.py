"""Benchmark: the binary sharded index (Hamming shortlist + float rescore) against FAISS HNSW on
float vectors (the baseline) and exact inner-product search (the reference), in one process.

Prints a table and writes it to ``benchmarks/results/bench_index.md``. Speeds are reported as
ratios to HNSW measured in the same run, since shared machines are noisy; recall@10 is against
exact search. Usage: ``python benchmarks/bench_index.py [--n 100000] [--dim 128] [--categories 20]
[--ivf-above 50000] [--recall-target 0.95] [--out FILE]``. The vsearch rows are built as the
reindex job builds them (each shard's search tuned to the recall target on held-out probes, an
inverted file above ``--ivf-above`` rows); queries search every shard and the per-shard top-k are
merged, so the global recall is higher than the per-shard recall the tuning aims at.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import faiss
import numpy as np
import pyarrow as pa

from vsearch.config import IndexConfig
from vsearch.eval.metrics import ann_recall, exact_topk
from vsearch.index.builder import build_shards
from vsearch.index.searcher import ShardedIndex
from vsearch.index.tuning import TuningSpec

OUT = Path(__file__).resolve().parent / "results" / "bench_index.md"


def clustered(
    n: int, dim: int, centres: np.ndarray, spread: float, rng: np.random.Generator
) -> np.ndarray:
    """Vectors around ``centres`` (images of the same product sit close), L2-normalised.

    ``spread`` is the noise norm relative to a centre's norm: 1.0 is close to uniform on the sphere.
    """
    noise = rng.normal(size=(n, dim)).astype(np.float32) * spread
    x = centres[rng.integers(0, len(centres), n)] + noise
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        began = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - began)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--categories", type=int, default=20)
    parser.add_argument("--clusters", type=int, default=1000, help="products, roughly")
    parser.add_argument("--spread", type=float, default=0.85)
    parser.add_argument("--shortlist", type=int, nargs="+", default=[10, 50, 100, 200])
    defaults = IndexConfig()
    parser.add_argument(
        "--ivf-above", type=int, default=defaults.ivf_above,
        help="shards larger than this get an IndexBinaryIVF (index.ivf_above)",
    )  # fmt: skip
    parser.add_argument("--recall-target", type=float, default=defaults.recall_target)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(args.clusters, args.dim)).astype(np.float32)
    db = clustered(args.n, args.dim, centres, args.spread, rng)
    queries = clustered(args.queries, args.dim, centres, args.spread, np.random.default_rng(1))
    k = 10
    _, exact = exact_topk(queries, db, k)

    rows = []
    hnsw = faiss.IndexHNSWFlat(args.dim, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 80
    hnsw.hnsw.efSearch = 128
    build_s, _ = timed(lambda: hnsw.add(db))
    search_s, (_, ids) = timed(lambda: hnsw.search(queries, k), repeat=3)
    hnsw_mem = args.n * (args.dim * 4 + 32 * 2 * 8)  # vectors + level-0 links (approx.)
    rows.append(
        (
            "FAISS HNSW32 float, efSearch 128 (baseline)",
            build_s,
            search_s,
            ann_recall(ids, exact, k),
            hnsw_mem,
        )
    )

    flat = faiss.IndexFlatIP(args.dim)
    build_f, _ = timed(lambda: flat.add(db))
    search_f, (_, ids_f) = timed(lambda: flat.search(queries, k), repeat=3)
    rows.append(
        (
            "FAISS flat float (exact)",
            build_f,
            search_f,
            ann_recall(ids_f, exact, k),
            args.n * args.dim * 4,
        )
    )

    # One shard per category, as the reindex job builds them; queries search every shard.
    cats = rng.integers(0, args.categories, args.n)
    meta = pa.table(
        {
            "image_id": [str(i) for i in range(args.n)],
            "product_id": [str(i) for i in range(args.n)],
            "category": [f"c{c}" for c in cats],
            "title": [""] * args.n,
            "quality": pa.array(np.ones(args.n, np.float32)),
            "popularity": pa.array(np.zeros(args.n, np.float32)),
        }
    )
    # Build time includes tuning each shard's search on 200 probe queries.
    spec = TuningSpec(target=args.recall_target)
    build_b, built = timed(lambda: build_shards(db, meta, 1, spec, args.ivf_above))
    index = ShardedIndex.from_built(built)
    code_mem = args.n * args.dim // 8
    engines = sorted({b.index.engine for b in built})
    tuned = sorted({(b.index.nprobe, b.index.shortlist) for b in built}, key=str)
    for shortlist in [*args.shortlist, None]:
        search_b, hits = timed(lambda s=shortlist: index.search(queries, k, s), repeat=3)
        ids_b = np.asarray([[int(h.image_id) for h in row] for row in hits])
        what = (
            f"{'/'.join(engines)}, shortlist {shortlist}"
            if shortlist
            else f"{'/'.join(engines)}, tuned (nprobe, shortlist) {tuned} for recall "
            f"{args.recall_target} per shard"
        )
        rows.append(
            (
                f"vsearch binary shards, {what}",
                build_b,
                search_b,
                ann_recall(ids_b, exact, k),
                code_mem,
            )
        )

    base_build, base_search = rows[0][1], rows[0][2]
    header = (
        f"# Index benchmark\n\n{args.n} vectors x {args.dim} d ({args.clusters} clusters, "
        f"spread {args.spread}, L2-normalised), "
        f"{args.queries} queries, k={k}, {args.categories} category shards, 1 thread.\n"
        "Ratios are to FAISS HNSW in the same run (lower is faster). Memory: the part searched "
        "first (binary codes for vsearch; the float rescoring vectors, n x d x 4 bytes, are "
        "kept beside them).\n\n"
    )
    lines = [
        "| index | build s | build / HNSW | search ms/query | search / HNSW "
        "| recall@10 vs exact | memory MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, b, s, r, mem in rows:
        lines.append(
            f"| {name} | {b:.2f} | {b / base_build:.2f} | {1000 * s / args.queries:.3f} | "
            f"{s / base_search:.2f} | {r:.3f} | {mem / 2**20:.1f} |"
        )
    table = header + "\n".join(lines) + "\n"
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
