"""What every job shares: the storage of a config, the dataset it reads, summaries and progress."""

from __future__ import annotations

import json
import sys
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
    """A two-column summary block at the end of a job."""
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
