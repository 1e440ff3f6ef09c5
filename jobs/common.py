"""What every job shares: the storage of a config, the dataset it reads, summaries, progress and
the run record each job leaves on storage."""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
from tqdm import tqdm

from vsearch.config import Config
from vsearch.data.dataset import CatalogDataset
from vsearch.index.text import TextChannel, product_titles
from vsearch.storage import Storage
from vsearch.storage.datasets import dataset_prefix, read_dataset, write_dataset
from vsearch.storage.runs import RunRecord, RunStore, json_safe, new_run_id, redacted, utc_now

#: The run being recorded (:func:`recorded_run`); print_summary adds its blocks to it.
_RUN: RunRecord | None = None


def storage_of(cfg: Config) -> Storage:
    return Storage(cfg.storage, cfg.storage_options)


@contextmanager
def progress(total: int, desc: str, unit: str = "it") -> Iterator[tqdm]:
    """A tqdm bar on stderr that also works when stderr is not a terminal (CI logs)."""
    bar = tqdm(
        total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, mininterval=1
    )
    try:
        yield bar
    finally:
        bar.close()


def _follow(bar: tqdm) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback that moves ``bar``."""

    def update(done: int, total: int) -> None:
        bar.total = total
        # ``update`` honours the bar's ``mininterval``; setting ``n`` and refreshing would print a
        # line per call where stderr is a log file.
        bar.update(done - bar.n)

    return update


def ensure_dataset(cfg: Config) -> str:
    """Make sure the configured dataset is on storage; return its prefix.

    Synthetic: generated (deterministically) unless the same spec is already there.
    Grocery: the GroceryStore folder's tables are written once, pointing at its images in place.
    """
    storage = storage_of(cfg)
    prefix = dataset_prefix(cfg)
    spec_name = f"{prefix}/spec.json"
    if cfg.data.source == "matching":
        raise ValueError(
            "data.source=matching (a two-table benchmark of listings) is read by `vsearch dedup` "
            "only; the other jobs need a catalogue with images (synthetic or grocery)"
        )
    if cfg.data.source == "synthetic":
        spec = {"source": "synthetic", **cfg.data.synthetic.model_dump()}
    else:
        if not cfg.data.grocery_root:
            raise ValueError("data.source=grocery needs data.grocery_root (the dataset folder)")
        spec = {"source": "grocery", "root": cfg.data.grocery_root}
    if storage.exists(spec_name) and json.loads(storage.read_text(spec_name)) == spec:
        return prefix
    if cfg.data.source == "synthetic":
        from vsearch.data.synthetic import generate_synthetic

        with progress(0, "drawing products", "product") as bar:
            generated = generate_synthetic(cfg.data.synthetic, _follow(bar))
        dataset, images = generated.dataset, generated.images
    else:
        from vsearch.data.grocery import load_grocery_store

        dataset, images = load_grocery_store(cfg.data.grocery_root), {}
    storage.delete(prefix)
    with progress(len(images), "writing images", "img") as bar:
        write_dataset(storage, prefix, dataset, images, _follow(bar))
    storage.write_text(spec_name, json.dumps(spec))
    return prefix


def resolve_backbone(cfg: Config) -> tuple[Config, bytes | None]:
    """The config to train with and its frozen backbone's bytes (None for torch backbones).

    When an ONNX backbone's file cannot be read: ``model.if_backbone_missing="fallback"`` switches
    to ``model.fallback_arch`` (trained from scratch) and says so; "error" stops with the reason.
    """
    from vsearch.models.registry import backend_of

    if backend_of(cfg.model.arch) != "onnx":
        return cfg, None
    url = cfg.model.backbone_url
    problem = "model.backbone_url is not set"
    if url:
        try:
            return cfg, storage_of(cfg).read_bytes(url)
        except OSError as exc:
            problem = f"cannot read {url}: {exc}"
    if cfg.model.if_backbone_missing == "error":
        raise FileNotFoundError(
            f"{cfg.model.arch} needs its ONNX file: {problem} "
            "(set model.backbone_url, or model.if_backbone_missing=fallback)"
        )
    print(
        f"notice: {cfg.model.arch} backbone unavailable ({problem}); falling back to the built-in "
        f"{cfg.model.fallback_arch} network trained from scratch",
        file=sys.stderr,
        flush=True,
    )
    # The box view needs cached maps of a frozen backbone: off for the network from scratch.
    fallback = cfg.model.model_copy(update={"arch": cfg.model.fallback_arch, "box_view": False})
    return cfg.model_copy(update={"model": fallback}), None


def load_dataset(cfg: Config) -> CatalogDataset:
    """The configured dataset, put on storage first if needed."""
    return read_dataset(storage_of(cfg), ensure_dataset(cfg))


def print_summary(title: str, rows: Mapping[str, Any]) -> None:
    """A two-column summary block at the end of a job (also kept in the run's record)."""
    if _RUN is not None:
        _RUN.summaries[title] = json_safe({k.strip(): v for k, v in rows.items()})
    width = max((len(k) for k in rows), default=0)
    print(f"\n== {title} ==")
    for key, value in rows.items():
        if isinstance(value, float):
            value = f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
        print(f"  {key.ljust(width)}  {value}")
    sys.stdout.flush()


def text_channel(
    cfg: Config, catalog: pa.Table, base: TextChannel | None = None
) -> TextChannel | None:
    """The catalogue's product titles embedded for hybrid queries (``index.text_channel``),
    re-using ``base``'s vectors of unchanged titles; None when the channel is off."""
    if not cfg.index.text_channel:
        return None
    from vsearch.models.text import TextEncoder  # sentence-transformers: only when used

    ids, titles = product_titles(catalog)
    encoder = TextEncoder(cfg.index.text_model_path, threads=None)
    with progress(len(ids), "embedding titles", "title") as bar:
        return TextChannel.build(
            ids, titles, encoder.encode, encoder.name, base=base, progress=bar.update
        )


@contextmanager
def recorded_run(cfg: Config, job: str, argv: list[str]) -> Iterator[RunRecord]:
    """Run a job under a run record written to ``runs/<id>.json`` of the config's storage when
    it ends: the command, the config, timings, the outcome and the summaries it printed.

    A failed run is recorded (with its error in one line) only where the storage already
    exists: a command that fails on empty storage leaves it empty. Writing the record never
    hides the job's own outcome; a record that cannot be written is reported on stderr.
    """
    global _RUN
    from vsearch.runtime.cluster import session_address

    storage = storage_of(cfg)
    existed = storage.exists("")
    record = RunRecord(
        id=new_run_id(job), job=job, argv=list(argv), started=utc_now(),
        config=json_safe(redacted(cfg.model_dump(mode="json"))), host=socket.gethostname(),
        ray_address=session_address(cfg.ray),
    )  # fmt: skip
    start = time.monotonic()
    _RUN = record
    try:
        yield record
        record.outcome = "succeeded"
    except KeyboardInterrupt:
        record.outcome, record.error = "interrupted", "interrupted (Ctrl-C)"
        raise
    except BaseException as exc:
        record.outcome = "failed"
        record.error = (f"{type(exc).__name__}: {exc}".splitlines() or ["failed"])[0][:500]
        raise
    finally:
        _RUN = None
        record.finished = utc_now()
        record.seconds = round(time.monotonic() - start, 1)
        if record.outcome == "succeeded" or existed:
            try:
                RunStore(storage).write(record)
            except Exception as exc:  # the job's own outcome matters more
                print(f"vsearch: could not write the run record: {exc}", file=sys.stderr)
