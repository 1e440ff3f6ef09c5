"""Benchmark: reindex embedding throughput, the Ray Data pipeline against a bare loop, on one node.

Both do the same work on the same images: read, decode, embed (the model given by ``--arch``,
untrained weights: the cost is the same as a trained model's) and encode the rows into per-shard
staged Parquet, written to storage. The pipeline is ``vsearch.runtime.reindex.stage_catalog``
(an actor pool of ``CatalogStager``, as `vsearch reindex` runs it with the demo config); the
baseline is one process looping over batches of ``index.batch_size`` with torch using every core.
The vectors of both are compared row by row.

Images: ``--distinct`` random JPEGs (shapes on a background, 128 px) written once each and listed
under ``n`` catalogue rows (cycled), so decoding is real work but generating 50k images is not
needed. Usage: ``python benchmarks/bench_reindex.py [--n 4000 50000] [--arch cnn_small]
[--out FILE.md]``.
"""

from __future__ import annotations

import argparse
import io
import os
import posixpath
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pyarrow as pa
import torch
from PIL import Image, ImageDraw
from report import write_table

from vsearch.config import Config, load_config
from vsearch.index.staging import decode_staged, stage_groups
from vsearch.models.artifact import initial_artifact
from vsearch.runtime.cluster import ray_session
from vsearch.runtime.embedding import META_COLUMNS, ImageBatchEmbedder
from vsearch.runtime.reindex import stage_catalog
from vsearch.schema import CATALOG_SCHEMA
from vsearch.storage import ModelStore, Storage

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def _images(count: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        img = Image.new("RGB", (128, 128), tuple(int(c) for c in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(4):
            x0, y0 = (int(v) for v in rng.integers(0, 100, 2))
            box = (x0, y0, x0 + int(rng.integers(10, 60)), y0 + int(rng.integers(10, 60)))
            draw.ellipse(box, fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _catalogue(storage: Storage, prefix: str, n: int, distinct: int) -> pa.Table:
    for i, data in enumerate(_images(distinct)):
        storage.write_bytes(posixpath.join(prefix, "images", f"{i}.jpg"), data)
    ids = [f"img-{i:06d}" for i in range(n)]
    table = pa.table(
        {
            "product_id": [f"p-{i // 4}" for i in range(n)],
            "image_id": ids,
            "image_uri": [f"images/{i % distinct}.jpg" for i in range(n)],
            "category": [f"c{i % 6}" for i in range(n)],
            "title": [""] * n,
            "attributes": ["{}"] * n,
            "quality": pa.array(np.ones(n, np.float32)),
            "popularity": pa.array(np.zeros(n, np.float32)),
        },
        schema=CATALOG_SCHEMA,
    )
    storage.write_table(posixpath.join(prefix, "catalog.parquet"), table)
    return table


def _bare_loop(cfg: Config, model: str, prefix: str, catalogue: pa.Table, staging: str) -> float:
    """Images per second of one process doing decode + embed + encode + write."""
    began = time.perf_counter()
    embedder = ImageBatchEmbedder(cfg.storage, {}, model, prefix, cfg.index.max_pixels)
    torch.set_num_threads(os.cpu_count() or 1)
    storage = Storage(cfg.storage)
    step = cfg.index.batch_size
    for start in range(0, catalogue.num_rows, step):
        rows = catalogue.slice(start, step)
        vectors, errors = embedder.embed_uris(rows.column("image_uri").to_pylist())
        assert not any(errors)
        meta = rows.select(list(META_COLUMNS))
        for name, (_, _, table) in stage_groups(vectors, meta, 1).items():
            storage.write_table(posixpath.join(staging, name, f"{start:09d}.parquet"), table)
    return catalogue.num_rows / (time.perf_counter() - began)


def _read_staged(storage: Storage, staging: str) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for shard in storage.list(staging):
        for part in storage.list(posixpath.join(staging, shard)):
            vectors, meta = decode_staged(storage.read_table(posixpath.join(staging, shard, part)))
            out.update(zip(meta["image_id"].to_pylist(), vectors, strict=True))
    return out


def run(n: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            REPO / "configs" / "demo.yaml",
            [f"storage={tmp}", f"model.arch={args.arch}", f"ray.num_cpus={args.cpus}"],
        )
        storage = Storage(cfg.storage)
        catalogue = _catalogue(storage, "datasets/bench", n, args.distinct)
        model = ModelStore(storage).save(initial_artifact(cfg.model, ["c"]))
        bare = _bare_loop(cfg, model, "datasets/bench", catalogue, "staging-bare")
        began = time.perf_counter()
        with ray_session(cfg.ray):
            started = time.perf_counter()
            staged = stage_catalog(cfg, model, "datasets/bench", "staging-ray")
            ended = time.perf_counter()
        assert staged.rows == n and not staged.errors
        a, b = _read_staged(storage, "staging-bare"), _read_staged(storage, "staging-ray")
        diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
        return {
            "n": n,
            "bare": bare,
            "ray": n / (ended - started),
            "ray_with_start": n / (ended - began),
            "max_abs_diff": diff,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[4000, 50000])
    parser.add_argument("--arch", default="cnn_small")
    parser.add_argument("--distinct", type=int, default=500)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_reindex.md")
    args = parser.parse_args()
    rows = []
    for n in args.n:
        print(f"{n} images ...", flush=True)
        rows.append(run(n, args))
        print(rows[-1], flush=True)
    lines = [
        "# Reindex throughput\n",
        f"Model {args.arch} (demo config, untrained weights), {args.cpus} CPUs, "
        f"{args.distinct} distinct 128 px JPEGs listed under n rows; both paths decode, embed, "
        "encode and write per-shard staged Parquet. Ray Data: an actor pool of "
        f"CatalogStager as `vsearch reindex` runs it; bare loop: one process, torch on "
        f"{os.cpu_count()} threads.\n",
        "| images | bare loop img/s | Ray Data img/s | ratio | Ray Data incl. Ray start-up img/s "
        "| ratio | max abs diff of vectors |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['bare']:.0f} | {r['ray']:.0f} | {r['ray'] / r['bare']:.2f} | "
            f"{r['ray_with_start']:.0f} | {r['ray_with_start'] / r['bare']:.2f} | "
            f"{r['max_abs_diff']:.1e} |"
        )
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
